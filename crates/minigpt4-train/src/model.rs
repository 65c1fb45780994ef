//! The frozen model as training needs it: vision tower + adapter (dropped once the features are
//! cached), the LLM with dense weights (for `Mode::Differentiable`), tokenizer and template,
//! plus the projection's starting point.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use minigpt4_core::adapter::Adapter;
use minigpt4_core::dinov2::Dinov2Config;
use minigpt4_core::efficientnet_lite::Classifier;
use minigpt4_core::image::{ImageConfig, Limits};
use minigpt4_core::llama::{Llama, LlamaConfig};
use minigpt4_core::minigpt4::{Blip2Config, MiniGpt4, VisionTower};
use minigpt4_core::model_file::{AdapterKind, ModelSpec, VisionKind};
use minigpt4_core::onnx;
use minigpt4_core::pipeline::{efficientnet_config, Pipeline};
use minigpt4_core::template::TemplateKind;
use minigpt4_core::tokenizer::Tokenizer;

use crate::data::{derive_seed, SplitMix64};

/// `(d_a, d_llm)`: the projection's input and output widths, read from the model's configs
/// without loading any weights (a first stage-1 run has no projection file yet, and
/// `Pipeline::load` needs one).
pub fn projection_dims(spec: &ModelSpec) -> Result<(usize, usize)> {
    let blip2 = |p: Option<&std::path::PathBuf>| -> Result<Blip2Config> {
        Ok(match p {
            Some(p) => Blip2Config::from_file(p)?,
            None => Blip2Config::default(),
        })
    };
    let llm = &spec.llm.weights;
    let d_llm = if llm.extension().and_then(|e| e.to_str()) == Some("gguf") {
        let (_, ct) = minigpt4_core::llama::read_gguf(llm)?;
        LlamaConfig::from_gguf(&ct)?.hidden_size
    } else {
        let dir = if llm.is_dir() { llm.clone() } else { llm.parent().unwrap_or(Path::new(".")).to_path_buf() };
        LlamaConfig::from_file(&spec.llm.config.clone().unwrap_or_else(|| dir.join("config.json")))?.hidden_size
    };
    let vision = match spec.vision.kind {
        VisionKind::EvaVitG => blip2(spec.vision.config.as_ref())?.vision_config.hidden_size,
        VisionKind::Dinov2 => match &spec.vision.config {
            Some(p) => Dinov2Config::from_file(p)?.hidden_size,
            None => onnx::converted_config(&spec.vision.weights)?.hidden_size,
        },
        VisionKind::EfficientnetLite => efficientnet_config(spec.vision.config.as_ref(), None)?.num_classes,
    };
    let d_a = match spec.adapter.kind {
        AdapterKind::Merge => vision * spec.adapter.merge,
        AdapterKind::Classes => vision * spec.adapter.slots,
        AdapterKind::Qformer => blip2(spec.adapter.config.as_ref())?.qformer_config.hidden_size,
    };
    let classes = match &spec.classifier {
        Some(c) => c.slots * efficientnet_config(c.config.as_ref(), None)?.num_classes,
        None => 0,
    };
    Ok((d_a + classes, d_llm))
}

/// `(slots, classes)` of the model's class tokens, which come first in the projection's input:
/// those of a `[classifier]`, or of the `classes` adapter on a classifier encoder.
pub fn class_slots(spec: &ModelSpec) -> Result<Option<(usize, usize)>> {
    Ok(match (&spec.classifier, spec.adapter.kind) {
        (Some(c), _) => Some((c.slots, efficientnet_config(c.config.as_ref(), None)?.num_classes)),
        (None, AdapterKind::Classes) if spec.vision.kind == VisionKind::EfficientnetLite => {
            Some((spec.adapter.slots, efficientnet_config(spec.vision.config.as_ref(), None)?.num_classes))
        }
        _ => None,
    })
}

/// `nn.Linear`'s default initialisation (Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in) for
/// weight and bias), drawn from a fixed generator so a seed always gives the same start.
pub fn random_projection(in_dim: usize, out_dim: usize, seed: u64, device: &Device) -> Result<(Tensor, Tensor)> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let mut rng = SplitMix64::new(derive_seed(seed, &[3]));
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| ((rng.unit_f64() * 2.0 - 1.0) * bound) as f32).collect() };
    let w = Tensor::from_vec(draw(in_dim * out_dim), (out_dim, in_dim), device)?;
    let b = Tensor::from_vec(draw(out_dim), out_dim, device)?;
    Ok((w, b))
}

/// Writes [`random_projection`] for `seed` to `path` as a projection file (what `train` starts
/// from, `eval --random-projection` scores and `bench` falls back to).
pub fn write_random_projection(path: &Path, in_dim: usize, out_dim: usize, seed: u64, device: &Device) -> Result<()> {
    let (w, b) = random_projection(in_dim, out_dim, seed, device)?;
    let meta = [("init".to_string(), "random".to_string()), ("seed".to_string(), seed.to_string())].into();
    crate::checkpoint::save_projection(path, &w, &b, meta)
}

pub struct Frozen {
    /// Vision tower, adapter and classifier; `None` once the features are cached.
    pub vision: Option<(VisionTower, Adapter, Option<Classifier>)>,
    pub llm: Llama,
    pub tokenizer: Tokenizer,
    pub template: TemplateKind,
    pub image: ImageConfig,
    pub limits: Limits,
}

impl Frozen {
    /// The frozen part of MiniGPT-4: pixels `[B, 3, S, S]` → adapter tokens `[B, N, d_a]`.
    pub fn image_features(&self, pixels: &Tensor) -> minigpt4_core::Result<Tensor> {
        let (v, a, c) = self
            .vision
            .as_ref()
            .ok_or_else(|| minigpt4_core::Error::Config("the vision encoder was released".into()))?;
        minigpt4_core::minigpt4::image_features(v, a, c.as_ref(), pixels)
    }

    /// BOS for stage 1: the tokenizer's, else the LLM config's.
    pub fn bos(&self) -> Option<u32> {
        self.tokenizer.bos_id().or(self.llm.config().bos_token_id)
    }
}

/// Loads `spec` (whose `[projection] weights` must hold the starting projection) and returns the
/// frozen parts and the projection's weight `[d_llm, d_a]` and bias `[d_llm]`.
pub fn load(spec: &ModelSpec, device: &Device) -> Result<(Frozen, Tensor, Tensor)> {
    let p = Pipeline::load(spec, device)
        .with_context(|| format!("loading model `{}`", spec.name.as_deref().unwrap_or("?")))?;
    let Pipeline { model, tokenizer, template, image, limits, .. } = p;
    let MiniGpt4 { vision, adapter, classifier, projector, llm } = model;
    let llm = if llm.is_quantized() { llm.into_dense()? } else { llm };
    let weight = projector.weight().clone();
    let bias = match projector.bias() {
        Some(b) => b.clone(),
        None => Tensor::zeros(projector.out_dim(), weight.dtype(), device)?,
    };
    Ok((Frozen { vision: Some((vision, adapter, classifier)), llm, tokenizer, template, image, limits }, weight, bias))
}
