//! `minigpt4 convert`: a model's originals (Hugging Face LLM folder, LAVIS `.pth` files) rewritten
//! as the two files that load fastest and that other tools read:
//!
//! * `llm.gguf`: the LLM in llama.cpp's layout (its tensor names, q/k rows permuted for its
//!   interleaved RoPE as `convert_hf_to_gguf.py` does, `llama.*` hyper-parameters, the tokenizer
//!   and this model's chat template in the metadata), quantized as asked. llama.cpp loads it.
//! * `vision.safetensors`: EVA ViT-g, `ln_vision`, the Q-Former with its query tokens and the
//!   projection, under the Hugging Face names the loaders use (f16 on disk by default).
//! * `model.toml`: names both, with the template and preprocessing of the original model file.
//!
//! Everything is streamed one tensor at a time ([`minigpt4_io::gguf_writer`],
//! [`minigpt4_io::safetensors_writer`]): a 7B model is never whole in memory.
//!
//! [`apply_delta`] makes Vicuna v0 from LLaMA and lmsys' published delta (FastChat's
//! `apply_delta`: weights added tensor by tensor, the rows a grown vocabulary adds taken from
//! the delta alone).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::llama::{LlamaConfig, Quantize};
use crate::model_file::{AdapterKind, LnVision, ModelSpec, VisionKind};
use crate::names::{self, permute_for_gguf};
use crate::pipeline::{default_quantize, hf_llm_files, is_pickle, open_checkpoint};
use crate::template::TemplateKind;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;
use minigpt4_io::gguf_writer::{write_gguf, TensorPlan};
use minigpt4_io::safetensors_writer::{tensor_bytes, write_safetensors, SafetensorsPlan};

/// Progress of a long step: (what, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// What [`convert`] wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    pub model_file: PathBuf,
    pub llm: PathBuf,
    pub vision: PathBuf,
    /// The LLM's storage in the GGUF.
    pub quantize: Quantize,
    /// Whether the projection went into `vision.safetensors` (false: it did not exist yet, and
    /// `model.toml` points at where it is expected).
    pub projection_included: bool,
}

/// Converts the model `spec` names into `out/` (see the module docs). `quantize`: the LLM's
/// storage (`None`: what loading would choose, q8_0 above 1 B parameters); `vision_dtype`: f16
/// or f32 on disk for the vision side.
pub fn convert(
    spec: &ModelSpec,
    quantize: Option<Quantize>,
    vision_dtype: DType,
    out: &Path,
    progress: Progress,
) -> Result<Converted> {
    if let Some((what, path)) = spec.missing_files().into_iter().find(|(what, _)| *what != "projection") {
        return Err(Error::Config(format!("the model's {what} file {} does not exist", path.display())));
    }
    if spec.vision.kind != VisionKind::EvaVitG || spec.classifier.is_some() {
        return Err(Error::Config(format!(
            "convert writes MiniGPT-4's EVA ViT-g models; a {:?} vision encoder loads fast as it is",
            spec.vision.kind
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;

    let llm_path = out.join("llm.gguf");
    let quantize = if spec.llm.weights.extension().is_some_and(|e| e == "gguf") {
        // Already llama.cpp's format: copied as it is (its blocks are what loading would use).
        minigpt4_io::files::write_atomically(&llm_path, |f, tmp| {
            let mut src = std::fs::File::open(&spec.llm.weights).map_err(|e| Error::io(&spec.llm.weights, e))?;
            std::io::copy(&mut src, f).map_err(|e| Error::io(tmp, e))?;
            Ok(())
        })?;
        Quantize::None
    } else {
        let (config, tokenizer) = hf_llm_files(&spec.llm);
        let cfg = LlamaConfig::from_file(&config)?;
        let quantize = quantize.or(spec.llm.quantize).unwrap_or_else(|| default_quantize(&cfg, &Device::Cpu));
        let tok = Tokenizer::open(&tokenizer)?;
        let name = spec.name.clone().unwrap_or_else(|| "minigpt4".into());
        write_llm_gguf(&spec.llm.weights, &cfg, &tok, spec.template, quantize, &name, &llm_path, progress)?;
        quantize
    };

    let vision_path = out.join("vision.safetensors");
    let projection_included = write_vision(spec, vision_dtype, &vision_path, progress)?;

    let mut converted = spec.clone();
    converted.name = spec.name.as_ref().map(|n| format!("{n} (converted)"));
    let copy_config = |p: &Option<PathBuf>, name: &str| -> Result<Option<PathBuf>> {
        let Some(p) = p else { return Ok(None) };
        std::fs::copy(p, out.join(name)).map_err(|e| Error::io(p, e))?;
        Ok(Some(PathBuf::from(name)))
    };
    converted.vision.weights = "vision.safetensors".into();
    converted.vision.config = copy_config(&spec.vision.config, "vision_config.json")?;
    // The loaded ln_vision keeps the epsilon it had in the originals.
    if spec.ln_vision() == LnVision::Checkpoint && spec.vision.ln_vision_eps.is_none() {
        let from_pickle = spec.adapter.weights.as_deref().is_some_and(is_pickle) || is_pickle(&spec.vision.weights);
        if from_pickle {
            converted.vision.ln_vision_eps = Some(crate::minigpt4::LAVIS_LN_VISION_EPS);
        }
    }
    converted.vision.ln_vision = Some(spec.ln_vision());
    if spec.adapter.weights.is_some() {
        converted.adapter.weights = Some("vision.safetensors".into());
    }
    converted.adapter.config = copy_config(&spec.adapter.config, "adapter_config.json")?;
    if projection_included {
        converted.projection.weights = "vision.safetensors".into();
    }
    converted.llm.weights = "llm.gguf".into();
    converted.llm.config = None;
    converted.llm.tokenizer = None;
    converted.llm.quantize = None;
    let text = toml::to_string(&converted).map_err(|e| Error::Internal(format!("writing model.toml: {e}")))?;
    let header = "# Written by `minigpt4 convert`: the LLM as llama.cpp GGUF, the vision side as safetensors.\n";
    let model_file = out.join("model.toml");
    minigpt4_io::files::write_atomic(&model_file, format!("{header}{text}").as_bytes())?;
    Ok(Converted { model_file, llm: llm_path, vision: vision_path, quantize, projection_included })
}

/// llama.cpp's `general.file_type` (`enum llama_ftype`) for what the matrices hold.
fn file_type(q: Quantize) -> u32 {
    match q {
        Quantize::None => 0, // ALL_F32
        Quantize::F16 => 1,  // MOSTLY_F16
        Quantize::Q4_0 => 2, // MOSTLY_Q4_0
        Quantize::Q8_0 => 7, // MOSTLY_Q8_0
        Quantize::Q4K => 14, // MOSTLY_Q4_K_S: every matrix Q4_K
    }
}

/// One LLM tensor on its way to the GGUF.
struct LlmTensor {
    hf: String,
    /// Heads whose rows are permuted for llama.cpp's rotation (q: attention heads, k: kv heads).
    permute_heads: Option<usize>,
}

/// Writes the Hugging Face LLM at `weights` as one GGUF file llama.cpp loads.
#[allow(clippy::too_many_arguments)]
pub fn write_llm_gguf(
    weights: &Path,
    cfg: &LlamaConfig,
    tok: &Tokenizer,
    template: TemplateKind,
    quantize: Quantize,
    name: &str,
    dest: &Path,
    progress: Progress,
) -> Result<()> {
    let w = Weights::open(weights, &Device::Cpu, DType::F32)?;
    let (d, hd, ff) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
    let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_kv_heads());
    let mut tensors: Vec<(LlmTensor, Vec<usize>)> = Vec::new();
    let mut add = |hf: String, dims: Vec<usize>, permute_heads: Option<usize>| {
        tensors.push((LlmTensor { hf, permute_heads }, dims));
    };
    add("model.embed_tokens.weight".into(), vec![cfg.vocab_size, d], None);
    for i in 0..cfg.num_hidden_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        add(p("input_layernorm.weight"), vec![d], None);
        add(p("self_attn.q_proj.weight"), vec![heads * hd, d], Some(heads));
        add(p("self_attn.k_proj.weight"), vec![kv_heads * hd, d], Some(kv_heads));
        add(p("self_attn.v_proj.weight"), vec![kv_heads * hd, d], None);
        add(p("self_attn.o_proj.weight"), vec![d, heads * hd], None);
        add(p("post_attention_layernorm.weight"), vec![d], None);
        add(p("mlp.gate_proj.weight"), vec![ff, d], None);
        add(p("mlp.up_proj.weight"), vec![ff, d], None);
        add(p("mlp.down_proj.weight"), vec![d, ff], None);
    }
    add("model.norm.weight".into(), vec![d], None);
    // A tied head is not written: llama.cpp then uses token_embd, as our loader does.
    if w.contains("lm_head.weight") || !cfg.tie_word_embeddings {
        add("lm_head.weight".into(), vec![cfg.vocab_size, d], None);
    }

    let plan = tensors
        .iter()
        .map(|(t, dims)| {
            let gguf =
                names::hf_to_gguf(&t.hf).ok_or_else(|| Error::Internal(format!("no GGUF name for `{}`", t.hf)))?;
            Ok(TensorPlan { name: gguf, dims: dims.clone(), dtype: gguf_dtype(quantize, dims) })
        })
        .collect::<Result<Vec<_>>>()?;

    let md = llm_metadata(cfg, tok, template, quantize, name)?;
    let total = plan.len();
    write_gguf(dest, &md, &plan, |i| {
        let (t, dims) = &tensors[i];
        progress("writing the LLM", i, total);
        let mut x = w.get(&t.hf, dims)?;
        if let Some(h) = t.permute_heads {
            x = permute_for_gguf(&x, h)?;
        }
        let q = QTensor::quantize(&x, plan[i].dtype)?;
        Ok(q.data()?.into_owned())
    })?;
    progress("writing the LLM", total, total);
    Ok(())
}

/// Storage of one LLM tensor: vectors (norms) in f32, as llama.cpp keeps them; matrices in the
/// requested blocks, Q8_0 where a row is not a whole number of them (what `llama-quantize`
/// falls back to), f16 where not even that.
fn gguf_dtype(quantize: Quantize, dims: &[usize]) -> GgmlDType {
    let want = match quantize {
        Quantize::None => return GgmlDType::F32,
        Quantize::F16 => GgmlDType::F16,
        Quantize::Q8_0 => GgmlDType::Q8_0,
        Quantize::Q4_0 => GgmlDType::Q4_0,
        Quantize::Q4K => GgmlDType::Q4K,
    };
    match dims {
        [_, in_dim] => crate::llama::block_type_for(want, *in_dim).unwrap_or(GgmlDType::F16),
        _ => GgmlDType::F32,
    }
}

fn llm_metadata(
    cfg: &LlamaConfig,
    tok: &Tokenizer,
    template: TemplateKind,
    quantize: Quantize,
    name: &str,
) -> Result<Vec<(String, Value)>> {
    let u32v = |x: usize| Value::U32(x as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(file_type(quantize))),
        ("general.quantization_version".into(), Value::U32(2)),
        ("llama.vocab_size".into(), u32v(cfg.vocab_size)),
        ("llama.context_length".into(), u32v(cfg.max_position_embeddings)),
        ("llama.embedding_length".into(), u32v(cfg.hidden_size)),
        ("llama.block_count".into(), u32v(cfg.num_hidden_layers)),
        ("llama.feed_forward_length".into(), u32v(cfg.intermediate_size)),
        ("llama.attention.head_count".into(), u32v(cfg.num_attention_heads)),
        ("llama.attention.head_count_kv".into(), u32v(cfg.num_kv_heads())),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(cfg.rms_norm_eps as f32)),
        ("llama.rope.freq_base".into(), Value::F32(cfg.rope_base() as f32)),
        ("llama.rope.dimension_count".into(), u32v(cfg.head_dim())),
    ];
    if cfg.head_dim() * cfg.num_attention_heads != cfg.hidden_size {
        md.push(("llama.attention.key_length".into(), u32v(cfg.head_dim())));
        md.push(("llama.attention.value_length".into(), u32v(cfg.head_dim())));
    }
    md.extend(tok.gguf_metadata(cfg.vocab_size)?);
    md.push(("tokenizer.chat_template".into(), Value::String(template.jinja())));
    Ok(md)
}

/// The vision side's files and which tensor is read from which.
struct VisionSources {
    files: Vec<Weights>,
    /// (name, index into `files`), sorted by name.
    tensors: Vec<(String, usize)>,
    with_projection: bool,
}

/// Tensors of the vision side, each with the source it is read from.
fn vision_tensors(spec: &ModelSpec) -> Result<VisionSources> {
    const LN: &str = "vision_model.post_layernorm.";
    let cpu = Device::Cpu;
    let mut sources = vec![open_checkpoint(&spec.vision.weights, &cpu, DType::F32)?];
    let mut picked: BTreeMap<String, usize> = BTreeMap::new();
    for n in sources[0].names() {
        if n.starts_with("vision_model.") && (!n.starts_with(LN) || spec.ln_vision() == LnVision::Checkpoint) {
            picked.insert(n, 0);
        }
    }
    if let (AdapterKind::Qformer, Some(p)) = (spec.adapter.kind, &spec.adapter.weights) {
        sources.push(open_checkpoint(p, &cpu, DType::F32)?);
        let i = sources.len() - 1;
        // The adapter's file wins for ln_vision, as when loading (LAVIS keeps it with the Q-Former).
        for n in sources[i].names() {
            if n.starts_with("qformer.") || n == "query_tokens" || n.starts_with(LN) {
                picked.insert(n, i);
            }
        }
    }
    let with_projection = spec.projection.weights.exists();
    if with_projection {
        sources.push(open_checkpoint(&spec.projection.weights, &cpu, DType::F32)?);
        let i = sources.len() - 1;
        for n in ["llama_proj.weight", "llama_proj.bias"] {
            if !sources[i].contains(n) {
                return Err(Error::MissingTensor {
                    name: n.into(),
                    file: spec.projection.weights.display().to_string(),
                });
            }
            picked.insert(n.into(), i);
        }
    }
    Ok(VisionSources { files: sources, tensors: picked.into_iter().collect(), with_projection })
}

/// Writes the vision side; returns whether the projection was included.
fn write_vision(spec: &ModelSpec, dtype: DType, dest: &Path, progress: Progress) -> Result<bool> {
    let VisionSources { files: sources, tensors, with_projection } = vision_tensors(spec)?;
    let plan = tensors
        .iter()
        .map(|(name, src)| Ok(SafetensorsPlan { name: name.clone(), dims: sources[*src].dims(name)?, dtype }))
        .collect::<Result<Vec<_>>>()?;
    let md =
        BTreeMap::from([("format".to_string(), "pt".to_string()), ("writer".to_string(), "minigpt4 convert".into())]);
    let total = plan.len();
    write_safetensors(dest, &md, &plan, |i| {
        let (name, src) = &tensors[i];
        progress("writing the vision encoder", i, total);
        tensor_bytes(&sources[*src].get_any(name)?, dtype)
    })?;
    progress("writing the vision encoder", total, total);
    Ok(with_projection)
}

/// Vicuna v0 = LLaMA + lmsys' delta (FastChat `apply_delta`): every tensor of the delta plus the
/// base's tensor of the same name; where the delta's vocabulary is larger (Vicuna adds a pad
/// token), the base is zero-padded, so the new rows are the delta's own. Written as sharded f16
/// safetensors with an index, plus the delta's config and tokenizer files.
pub fn apply_delta(base: &Path, delta: &Path, out: &Path, progress: Progress) -> Result<()> {
    let cpu = Device::Cpu;
    let base_w = Weights::open(base, &cpu, DType::F32)?;
    let delta_w = Weights::open(delta, &cpu, DType::F32)?;
    // Rotary tables some old checkpoints carry are recomputed at load, never read.
    let names: Vec<String> = delta_w.names().into_iter().filter(|n| !n.ends_with("rotary_emb.inv_freq")).collect();
    if names.is_empty() {
        return Err(Error::BadCheckpoint {
            file: delta.display().to_string(),
            msg: "the delta holds no tensors".into(),
        });
    }
    if let Some(n) = base_w.names().into_iter().find(|n| !n.ends_with("rotary_emb.inv_freq") && !delta_w.contains(n)) {
        return Err(Error::BadCheckpoint {
            file: delta.display().to_string(),
            msg: format!("the delta has no `{n}`, which the base has: not a delta of this model"),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;

    // Shards of at most ~4 GB, as Hugging Face splits its checkpoints.
    const SHARD_BYTES: u64 = 4 << 30;
    let mut shards: Vec<Vec<SafetensorsPlan>> = vec![Vec::new()];
    let mut size = 0u64;
    for n in &names {
        let dims = delta_w.dims(n)?;
        let bytes = dims.iter().product::<usize>() as u64 * 2;
        if size + bytes > SHARD_BYTES && !shards.last().is_some_and(Vec::is_empty) {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("one shard").push(SafetensorsPlan { name: n.clone(), dims, dtype: DType::F16 });
    }
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    let (total, mut done) = (names.len(), 0);
    for (k, plan) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", k + 1);
        for t in plan {
            weight_map.insert(t.name.clone(), serde_json::Value::String(file.clone()));
        }
        let md = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&out.join(&file), &md, plan, |i| {
            progress("applying the delta", done, total);
            done += 1;
            let t = &plan[i];
            let d = delta_w.get(&t.name, &t.dims)?;
            let merged = if base_w.contains(&t.name) {
                add_padded(&d, &base_w.get_any(&t.name)?).map_err(|e| match e {
                    Error::Config(msg) => Error::BadCheckpoint { file: base.display().to_string(), msg },
                    e => e,
                })?
            } else {
                d
            };
            tensor_bytes(&merged, DType::F16)
        })?;
    }
    progress("applying the delta", total, total);
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    minigpt4_io::files::write_atomic(
        &out.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).map_err(|e| Error::Internal(e.to_string()))?.as_bytes(),
    )?;
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "tokenizer.model",
    ] {
        let src = delta.join(f);
        if src.exists() {
            std::fs::copy(&src, out.join(f)).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(())
}

/// `delta + base`, `base` zero-padded to `delta`'s shape (a grown vocabulary); a base larger
/// than the delta in any dimension is an error.
fn add_padded(delta: &Tensor, base: &Tensor) -> Result<Tensor> {
    if delta.dims() == base.dims() {
        return Ok((delta + base)?);
    }
    let (dd, bd) = (delta.dims(), base.dims());
    if dd.len() != bd.len() || dd.iter().zip(bd).any(|(d, b)| b > d) {
        return Err(Error::Config(format!("base tensor of shape {bd:?} does not fit the delta's {dd:?}")));
    }
    let mut padded = base.clone();
    for (axis, (&d, &b)) in dd.iter().zip(bd).enumerate() {
        if d > b {
            let mut zeros_dims = padded.dims().to_vec();
            zeros_dims[axis] = d - b;
            let zeros = Tensor::zeros(zeros_dims, padded.dtype(), padded.device())?;
            padded = Tensor::cat(&[&padded, &zeros], axis)?;
        }
    }
    Ok((delta + padded)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_convert_hf_to_gguf() {
        // 2 heads of head_dim 4, 1 column: rows [h0: 0 1 2 3, h1: 4 5 6 7] become each head's
        // halves interleaved: [0 2 1 3, 4 6 5 7].
        let w = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap().reshape((8, 1)).unwrap();
        let p = permute_for_gguf(&w, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(p, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }

    #[test]
    fn delta_pads_a_grown_vocabulary() {
        let dev = Device::Cpu;
        let delta = Tensor::new(&[[1f32, 1.0], [2.0, 2.0], [5.0, 6.0]], &dev).unwrap();
        let base = Tensor::new(&[[10f32, 20.0], [30.0, 40.0]], &dev).unwrap();
        let m = add_padded(&delta, &base).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m, vec![vec![11.0, 21.0], vec![32.0, 42.0], vec![5.0, 6.0]]);
        assert!(add_padded(&base, &delta).is_err());
    }
}
