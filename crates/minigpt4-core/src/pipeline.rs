//! A loaded model ready to answer: the MiniGPT-4 network, its tokenizer, template and image
//! preprocessing, plus a bounded in-process cache of image embeddings keyed by the SHA-256 of the
//! image's bytes (so a chat encodes its image once).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use sha2::Digest;

use crate::adapter::Adapter;
use crate::dinov2::{Dinov2, Dinov2Config};
use crate::efficientnet_lite::{Classifier, EfficientNet, EfficientNetConfig};
use crate::error::{Error, Result};
use crate::eva_vit::EvaVit;
use crate::generate::{generate, Generation, GenerationConfig};
use crate::image::{self, ImageConfig, Limits};
use crate::llama::{Llama, LlamaConfig, Quantize};
use crate::lora::LoraAdapter;
use crate::minigpt4::{unit_layer_norm, Blip2Config, MiniGpt4, VisionEncoder, VisionTower, LAVIS_LN_VISION_EPS};
use crate::model_file::{AdapterKind, LlmSpec, LnVision, ModelSpec, VisionKind, WeightStorage};
use crate::names;
use crate::onnx;
use crate::projector::Projector;
use crate::qformer::QFormer;
use crate::template::{self, Conversation, StopSequences, TemplateKind};
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;

pub struct Pipeline {
    pub model: MiniGpt4,
    pub tokenizer: Tokenizer,
    pub template: TemplateKind,
    pub image: ImageConfig,
    pub limits: Limits,
    stops: StopSequences,
    image_cache: Mutex<ImageCache>,
    /// Test hook: every image cache key the same, to show that colliding keys stay apart.
    colliding_cache_keys: std::sync::atomic::AtomicBool,
}

/// Image embeddings recently computed, most recent last, for one model (each [`Pipeline`] has
/// its own). Found by the SHA-256 of the encoded bytes, and a hit also compares the bytes
/// themselves, so two different images never share an entry even if their keys were made to
/// collide (the old 64-bit FNV key could be, handing one client another's image). Bounded in
/// bytes (image bytes plus embedding), least recently used first out.
struct ImageCache {
    entries: VecDeque<CachedImage>,
    bytes: usize,
    capacity_bytes: usize,
}

struct CachedImage {
    key: [u8; 32],
    image: Vec<u8>,
    embeds: Tensor,
}

impl CachedImage {
    fn size(&self) -> usize {
        self.image.len() + self.embeds.elem_count() * self.embeds.dtype().size_in_bytes()
    }
}

impl ImageCache {
    /// 64 MiB: a few hundred images' worth for a 64-token Q-Former model (about 250 KB of
    /// embeddings plus the image), thousands for the `tiny` default's one token.
    const CAPACITY_BYTES: usize = 64 << 20;

    fn new() -> Self {
        Self { entries: VecDeque::new(), bytes: 0, capacity_bytes: Self::CAPACITY_BYTES }
    }

    /// The entry for `image` (found by `key`, its bytes compared), made the most recent.
    fn get(&mut self, key: &[u8; 32], image: &[u8]) -> Option<Tensor> {
        let i = self.entries.iter().position(|e| e.key == *key && e.image == image)?;
        let entry = self.entries.remove(i)?;
        let t = entry.embeds.clone();
        self.entries.push_back(entry);
        Some(t)
    }

    fn insert(&mut self, key: [u8; 32], image: &[u8], embeds: Tensor) {
        // Another request may have encoded the same image meanwhile.
        if self.get(&key, image).is_some() {
            return;
        }
        let entry = CachedImage { key, image: image.to_vec(), embeds };
        let size = entry.size();
        if size > self.capacity_bytes {
            return;
        }
        self.evict_to(self.capacity_bytes - size);
        self.bytes += size;
        self.entries.push_back(entry);
    }

    /// Drops the least recently used entries until at most `budget` bytes are held.
    fn evict_to(&mut self, budget: usize) {
        while self.bytes > budget {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.size(),
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// Opens a checkpoint and, for PyTorch pickles (LAVIS / MiniGPT-4 naming), views it through the
/// LAVIS → Hugging Face rename table.
pub fn open_checkpoint(path: &Path, device: &Device, dtype: DType) -> Result<Weights> {
    let w = Weights::open(path, device, dtype)?;
    Ok(if is_pickle(path) { w.renamed(names::lavis_to_hf) } else { w })
}

pub(crate) fn is_pickle(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("pth" | "pt" | "bin"))
}

/// A Hugging Face `Blip2Config` file, or BLIP-2's published sizes when the model file names none
/// (LAVIS checkpoints come without a config).
fn blip2_config(path: Option<&PathBuf>) -> Result<Blip2Config> {
    path.map_or_else(|| Ok(Blip2Config::default()), |p| Blip2Config::from_file(p))
}

/// Every part of a MiniGPT-4 but the projection, loaded from a model file: what inference
/// ([`Pipeline`]) and training (which brings its own projection, or starts from a random one)
/// share, so the network is assembled in one place.
pub struct FrozenParts {
    pub vision: VisionTower,
    pub adapter: Adapter,
    pub classifier: Option<Classifier>,
    pub llm: Llama,
    pub tokenizer: Tokenizer,
    pub template: TemplateKind,
    pub image: ImageConfig,
    /// The projection's input width: the adapter's tokens plus the class tokens.
    pub projection_in: usize,
}

/// The frozen image side: vision tower, adapter, classifier and their preprocessing — all that
/// filling a feature cache needs, without the LLM.
pub struct VisionParts {
    pub vision: VisionTower,
    pub adapter: Adapter,
    pub classifier: Option<Classifier>,
    pub image: ImageConfig,
    /// The projection's input width: the adapter's tokens plus the class tokens.
    pub projection_in: usize,
}

/// Refuses a model whose files named by `needed` are missing, with the fetch hint.
fn check_files(spec: &ModelSpec, needed: impl Fn(&str) -> bool) -> Result<()> {
    if let Some((what, path)) = spec.missing_files().into_iter().find(|(what, _)| needed(what)) {
        return Err(Error::Config(format!(
            "the model's {what} file {} does not exist{}",
            path.display(),
            fetch_hint(spec.name.as_deref())
        )));
    }
    Ok(())
}

impl VisionParts {
    /// Loads the vision tower, adapter and classifier `spec` names.
    pub fn load(spec: &ModelSpec, device: &Device) -> Result<Self> {
        check_files(spec, |what| !matches!(what, "projection" | "llm" | "llm config" | "tokenizer"))?;
        let dtype = DType::F32;
        // Opened once: it may hold ln_vision as well as the Q-Former (LAVIS keeps them together).
        let adapter_w = match &spec.adapter.weights {
            Some(p) => Some((p, open_checkpoint(p, device, dtype)?)),
            None => None,
        };
        // The dtype EVA's block matrices are held in; a Q-Former next to it holds its own alike
        // (published: 0.43 GB in f32, 0.21 GB in f16).
        let mut matrix_storage = dtype;
        let (vision, vision_dim) = match spec.vision.kind {
            VisionKind::EvaVitG => {
                let cfg = blip2_config(spec.vision.config.as_ref())?.vision_config;
                let size = spec.vision.image_size.unwrap_or(cfg.image_size);
                let vision_w = open_checkpoint(&spec.vision.weights, device, dtype)?;
                let storage = match spec.vision.storage {
                    Some(WeightStorage::F16) => DType::F16,
                    Some(WeightStorage::F32) => dtype,
                    None if eva_parameters(&cfg) > 100_000_000 => DType::F16,
                    None => dtype,
                };
                let encoder = EvaVit::load(&cfg, size, &vision_w.pp("vision_model"), storage)?;
                matrix_storage = storage;
                let ln_vision = match spec.ln_vision() {
                    LnVision::Unit => unit_layer_norm(cfg.hidden_size, LAVIS_LN_VISION_EPS, device, dtype)?,
                    LnVision::Checkpoint => {
                        const LN: &str = "vision_model.post_layernorm";
                        let (path, w) = match &adapter_w {
                            Some((p, w)) if w.contains(&format!("{LN}.weight")) => (p.as_path(), w),
                            _ => (spec.vision.weights.as_path(), &vision_w),
                        };
                        let eps = spec.vision.ln_vision_eps.unwrap_or(if is_pickle(path) {
                            LAVIS_LN_VISION_EPS
                        } else {
                            cfg.layer_norm_eps
                        });
                        candle_nn::layer_norm(cfg.hidden_size, eps, w.pp(LN))?
                    }
                };
                (VisionTower::new(VisionEncoder::Eva(encoder), Some(ln_vision)), cfg.hidden_size)
            }
            VisionKind::Dinov2 => {
                // Our own ONNX conversion records its config in the file; an HF Dinov2Model
                // checkpoint comes with a config.json.
                let cfg = match &spec.vision.config {
                    Some(p) => Dinov2Config::from_file(p)?,
                    None => onnx::converted_config(&spec.vision.weights)?,
                };
                let size = spec.vision.image_size.unwrap_or(224);
                let w = Weights::open(&spec.vision.weights, device, dtype)?;
                let encoder = VisionEncoder::Dinov2(Dinov2::load(&cfg, size, &w.pp(""))?);
                if spec.vision.ln_vision == Some(LnVision::Checkpoint) {
                    return Err(Error::Config(
                        "a dinov2 vision encoder has no ln_vision to load; use ln_vision = \"unit\"".into(),
                    ));
                }
                let ln = unit_layer_norm(cfg.hidden_size, LAVIS_LN_VISION_EPS, device, dtype)?;
                (VisionTower::new(encoder, Some(ln)), cfg.hidden_size)
            }
            VisionKind::EfficientnetLite => {
                let cfg = efficientnet_config(spec.vision.config.as_ref(), spec.vision.image_size)?;
                if spec.vision.ln_vision.is_some() {
                    return Err(Error::Config(
                        "an efficientnet_lite encoder gives logits and takes no ln_vision".into(),
                    ));
                }
                let w = Weights::open(&spec.vision.weights, device, dtype)?;
                let encoder = EfficientNet::load(&cfg, &w.pp(""))?;
                (VisionTower::new(VisionEncoder::EfficientNet(encoder), None), cfg.num_classes)
            }
        };
        let image_cfg = spec.image.unwrap_or(match spec.vision.kind {
            VisionKind::EvaVitG => ImageConfig::clip(vision.encoder().image_size() as u32),
            VisionKind::Dinov2 => ImageConfig::imagenet(vision.encoder().image_size() as u32),
            VisionKind::EfficientnetLite => ImageConfig::efficientnet_lite(vision.encoder().image_size() as u32),
        });

        let adapter = match spec.adapter.kind {
            AdapterKind::Merge => Adapter::Merge(spec.adapter.merge),
            AdapterKind::Classes => {
                Adapter::Classes { slots: spec.adapter.slots, temperature: spec.adapter.temperature }
            }
            AdapterKind::Qformer => {
                let (_, w) = adapter_w.as_ref().ok_or_else(|| {
                    Error::Config("a qformer adapter needs `weights` (e.g. blip2_pretrained_flant5xxl.pth)".into())
                })?;
                let cfg = blip2_config(spec.adapter.config.as_ref())?;
                Adapter::QFormer(Box::new(QFormer::load_stored(
                    &cfg.qformer_config,
                    cfg.num_query_tokens,
                    &w.pp(""),
                    matrix_storage,
                )?))
            }
        };

        let classifier = match &spec.classifier {
            Some(c) => {
                if c.kind != VisionKind::EfficientnetLite {
                    return Err(Error::Config(format!("a [classifier] must be efficientnet_lite, not {:?}", c.kind)));
                }
                let cfg = efficientnet_config(c.config.as_ref(), None)?;
                let net = EfficientNet::load(&cfg, &Weights::open(&c.weights, device, dtype)?.pp(""))?;
                Some(Classifier::new(net, c.slots, c.temperature, image_cfg.mean, image_cfg.std)?)
            }
            None => None,
        };

        let projection_in = adapter.out_dim(vision_dim) + classifier.as_ref().map_or(0, Classifier::width);
        Ok(Self { vision, adapter, classifier, image: image_cfg, projection_in })
    }
}

impl FrozenParts {
    /// Loads every part `spec` names except `[projection]`, which need not exist yet.
    pub fn load(spec: &ModelSpec, device: &Device) -> Result<Self> {
        check_files(spec, |what| what != "projection")?;
        let VisionParts { vision, adapter, classifier, image, projection_in } = VisionParts::load(spec, device)?;
        let (llm, tokenizer) = load_llm(spec, device, DType::F32)?;
        Ok(Self { vision, adapter, classifier, llm, tokenizer, template: spec.template, image, projection_in })
    }

    /// `(in, out)` widths of the projection these parts take.
    pub fn projection_dims(&self) -> (usize, usize) {
        (self.projection_in, self.llm.hidden_size())
    }
}

/// `llama_proj` from a projection file (what `minigpt4 train` writes, or a MiniGPT-4
/// checkpoint), checked against the widths it must have.
pub fn load_projection(path: &Path, (in_dim, out_dim): (usize, usize), device: &Device) -> Result<Projector> {
    if !path.exists() {
        return Err(projection_missing(path, None));
    }
    Projector::load(in_dim, out_dim, &open_checkpoint(path, device, DType::F32)?.pp("llama_proj"))
}

fn projection_missing(path: &Path, model: Option<&str>) -> Error {
    let hint = fetch_hint(model);
    if !hint.is_empty() {
        return Error::Config(format!("the model's projection file {} does not exist{hint}", path.display()));
    }
    Error::Config(format!(
        "the model's projection file {} does not exist (the projection is what `minigpt4 train` produces; \
         train one or point [projection] at a MiniGPT-4 checkpoint)",
        path.display()
    ))
}

/// For a published preset, where its missing files come from.
fn fetch_hint(model: Option<&str>) -> String {
    match model.filter(|n| crate::fetch_preset::preset_source(n).is_some()) {
        Some(n) => format!(" (`minigpt4 fetch {n}` downloads what can be downloaded and says where the rest goes)"),
        None => String::new(),
    }
}

impl Pipeline {
    /// The whole model `spec` names, its projection included.
    pub fn load(spec: &ModelSpec, device: &Device) -> Result<Self> {
        if !spec.projection.weights.exists() {
            // Said before the (slow) other parts are loaded.
            return Err(projection_missing(&spec.projection.weights, spec.name.as_deref()));
        }
        let parts = FrozenParts::load(spec, device)?;
        let projector = load_projection(&spec.projection.weights, parts.projection_dims(), device)?;
        Self::new(parts, projector)
    }

    /// A model from loaded parts and a projection (a random one for a baseline, a training
    /// checkpoint's).
    pub fn new(parts: FrozenParts, projector: Projector) -> Result<Self> {
        let FrozenParts { vision, adapter, classifier, llm, tokenizer, template, image, .. } = parts;
        let stops = StopSequences::for_template(template, &tokenizer)?;
        Ok(Self {
            model: MiniGpt4::with_classifier(vision, adapter, classifier, projector, llm)?,
            tokenizer,
            template,
            image,
            limits: Limits::default(),
            stops,
            image_cache: Mutex::new(ImageCache::new()),
            colliding_cache_keys: Default::default(),
        })
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// Soft-prompt tokens [1, N, d_llm] for an encoded image (PNG, JPEG, …), cached by content.
    pub fn image_embeds(&self, bytes: &[u8], what: &str) -> Result<Tensor> {
        // Hashed once, outside the lock (20 MB of image take tens of milliseconds).
        let key: [u8; 32] = if self.colliding_cache_keys.load(std::sync::atomic::Ordering::Relaxed) {
            [0; 32]
        } else {
            sha2::Sha256::digest(bytes).into()
        };
        let mut cache = self.image_cache.lock().map_err(|_| Error::Internal("image cache poisoned".into()))?;
        if let Some(t) = cache.get(&key, bytes) {
            return Ok(t);
        }
        drop(cache);
        let pixels = image::preprocess(bytes, what, &self.image, &self.limits, self.device())?.unsqueeze(0)?;
        let embeds = self.model.encode_image(&pixels)?;
        // Non-finite values would reach the LLM, whose quantized kernels can turn them into
        // finite garbage: an empty or random answer with no error.
        if !crate::weights::all_finite(&embeds)? {
            return Err(Error::Internal(format!(
                "the image tokens of {what} hold NaN or infinite values: the vision encoder or adapter weights are not finite"
            )));
        }
        if let Ok(mut cache) = self.image_cache.lock() {
            cache.insert(key, bytes, embeds.clone());
        }
        Ok(embeds)
    }

    /// Forgets every cached image embedding, so the next [`Pipeline::image_embeds`] encodes again
    /// (`minigpt4 bench` times the encoder on every repetition).
    pub fn clear_image_cache(&self) {
        if let Ok(mut cache) = self.image_cache.lock() {
            cache.clear();
        }
    }

    /// How many image embeddings the cache holds now, and their bytes (images plus embeddings).
    pub fn cached_images(&self) -> (usize, usize) {
        self.image_cache.lock().map_or((0, 0), |c| (c.entries.len(), c.bytes))
    }

    /// Sets the image cache's byte budget (0 turns it off), dropping the oldest entries to fit.
    pub fn set_image_cache_bytes(&self, capacity: usize) {
        if let Ok(mut cache) = self.image_cache.lock() {
            cache.capacity_bytes = capacity;
            cache.evict_to(capacity);
        }
    }

    /// Test hook: gives every image the same cache key, as a hash collision would, to show
    /// that a hit still needs the very same bytes. Never set outside tests.
    #[doc(hidden)]
    pub fn force_image_cache_key_collisions(&self, on: bool) {
        self.colliding_cache_keys.store(on, std::sync::atomic::Ordering::Relaxed);
        self.clear_image_cache();
    }

    /// Generation settings of the reference demo plus this template's stop rules.
    pub fn default_generation(&self) -> GenerationConfig {
        self.with_stops(GenerationConfig::default())
    }

    /// Adds the template's stop strings and token sequences and the tokenizer's EOS to `cfg`.
    pub fn with_stops(&self, mut cfg: GenerationConfig) -> GenerationConfig {
        for s in &self.stops.strings {
            if !cfg.stop_strings.contains(s) {
                cfg.stop_strings.push(s.clone());
            }
        }
        for s in &self.stops.token_seqs {
            if !cfg.stop_token_sequences.contains(s) {
                cfg.stop_token_sequences.push(s.clone());
            }
        }
        let eos = self.tokenizer.eos_id().into_iter().chain(self.model.llm.config().eos_ids());
        for id in eos {
            if !cfg.eos_token_ids.contains(&id) {
                cfg.eos_token_ids.push(id);
            }
        }
        cfg
    }

    /// The prompt's input embeddings: template text tokenized piecewise with images spliced in.
    pub fn prompt_embeds(&self, conv: &Conversation, images: &[Tensor]) -> Result<Tensor> {
        template::check_image_count(&conv.prompt(), images.len())?;
        let segments = conv.tokenize(&self.tokenizer)?;
        self.model.splice(&segments, images)
    }

    /// Answers the conversation's last user turn. `on_text` gets the streamed text.
    pub fn respond(
        &self,
        conv: &Conversation,
        images: &[Tensor],
        cfg: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        self.respond_to_embeds(&self.prompt_embeds(conv, images)?, cfg, on_text)
    }

    /// [`Pipeline::respond`] from prompt embeddings already built (and checked) by the caller.
    pub fn respond_to_embeds(
        &self,
        embeds: &Tensor,
        cfg: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let tok = &self.tokenizer;
        let mut out = generate(&self.model.llm, embeds, cfg, &|ids| tok.decode(ids, true), on_text)?;
        out.text = template::answer_from_output(self.template, &out.text);
        Ok(out)
    }
}

/// An EfficientNet-Lite's shape: its config file (JSON, [`EfficientNetConfig`]) or Lite0's,
/// with the model file's `image_size` on top.
pub fn efficientnet_config(config: Option<&PathBuf>, image_size: Option<usize>) -> Result<EfficientNetConfig> {
    let mut cfg: EfficientNetConfig = match config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?
        }
        None => EfficientNetConfig::default(),
    };
    if let Some(s) = image_size {
        cfg.image_size = s;
    }
    Ok(cfg)
}

/// MiniGPT-v2's LoRA α (DESIGN §6), for adapters that do not say theirs.
pub const MINIGPT_V2_LORA_ALPHA: f64 = 16.0;

fn load_llm(spec: &ModelSpec, device: &Device, dtype: DType) -> Result<(Llama, Tokenizer)> {
    let (mut llm, tok) = load_base_llm(spec, device, dtype)?;
    if let Some(path) = &spec.llm.lora {
        let adapter = LoraAdapter::open(path, spec.llm.lora_alpha.unwrap_or(MINIGPT_V2_LORA_ALPHA), device)?;
        llm.apply_lora(&adapter)?;
    }
    Ok((llm, tok))
}

fn load_base_llm(spec: &ModelSpec, device: &Device, dtype: DType) -> Result<(Llama, Tokenizer)> {
    let path = &spec.llm.weights;
    if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
        let (llm, ct) = Llama::load_gguf(path, device)?;
        let tok = match &spec.llm.tokenizer {
            Some(t) => Tokenizer::open(t)?,
            None => Tokenizer::from_gguf(&ct)?,
        };
        return Ok((llm, tok));
    }
    let (config, tokenizer) = hf_llm_files(&spec.llm);
    let cfg = LlamaConfig::from_file(&config)?;
    let tok = Tokenizer::open(&tokenizer)?;
    let quantize = spec.llm.quantize.unwrap_or_else(|| default_quantize(&cfg, device));
    let w = Weights::open(path, device, dtype)?;
    let llm = Llama::load_quantized(&cfg, &w.pp(""), quantize)?;
    Ok((llm, tok))
}

/// `config.json` and the tokenizer of a Hugging Face LLM: as the model file says, else next to
/// the weights (`tokenizer.json`, or the SentencePiece `tokenizer.model` when that is all there
/// is; load it with [`Tokenizer::open`]).
pub(crate) fn hf_llm_files(llm: &LlmSpec) -> (PathBuf, PathBuf) {
    let path = &llm.weights;
    let dir = if path.is_dir() { path.clone() } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
    (
        llm.config.clone().unwrap_or_else(|| dir.join("config.json")),
        llm.tokenizer.clone().unwrap_or_else(|| Tokenizer::hf_dir_file(&dir)),
    )
}

/// Storage of a dense LLM when the model file does not say: q8_0 above 1 B parameters on the
/// CPU (the reference's 8-bit `low_resource` mode), as stored below.
pub(crate) fn default_quantize(cfg: &LlamaConfig, device: &Device) -> Quantize {
    if device.is_cpu() && cfg.parameters() > 1_000_000_000 {
        Quantize::Q8_0
    } else {
        Quantize::None
    }
}

/// Parameters of an EVA ViT's blocks (what `storage` is chosen by).
fn eva_parameters(cfg: &crate::eva_vit::EvaVitConfig) -> u64 {
    let (d, ff) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    cfg.num_hidden_layers as u64 * (4 * d * d + 2 * d * ff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The q8_0 default starts above 1 B parameters: Llama-2-7B / Vicuna-7B count 6.74 B,
    /// SmolLM2-135M 0.13 B.
    #[test]
    fn parameter_counts_of_published_shapes() {
        let cfg =
            |d: usize, ff: usize, layers: usize, heads: usize, kv: usize, vocab: usize, tied: bool| -> LlamaConfig {
                serde_json::from_value(serde_json::json!({
                "hidden_size": d, "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": heads,
                "num_key_value_heads": kv, "vocab_size": vocab, "tie_word_embeddings": tied, "hidden_act": "silu",
                "rms_norm_eps": 1e-5, "max_position_embeddings": 2048,
            }))
            .unwrap()
            };
        let llama7b = cfg(4096, 11008, 32, 32, 32, 32000, false).parameters();
        assert!((6_700_000_000..6_800_000_000).contains(&llama7b), "{llama7b}");
        let smollm = cfg(576, 1536, 30, 9, 3, 49152, true).parameters();
        assert!((130_000_000..140_000_000).contains(&smollm), "{smollm}");
    }
}
