//! A LLaMA-family decoder (Vicuna, Llama-2, SmolLM2): RMSNorm, RoPE, SwiGLU, grouped-query
//! attention, tied or untied head, KV cache. Loads Hugging Face safetensors or GGUF (quantized
//! blocks stay quantized for inference).
//!
//! Two forward modes share one code path. Inference uses candle's fused kernels. Training
//! (`Mode::Differentiable`) swaps in ops that have a backward pass (`train_ops`, `FrozenMatmul`),
//! because candle's fused `rms_norm`, `softmax_last_dim`, `rope*` and quantized matmul silently
//! drop gradients; with it, gradients reach the input embeddings while the weights (plain
//! tensors, never `Var`s) get none.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::lora::{LoraAdapter, LoraPair, LoraTarget};
use crate::names;
use crate::{Error, Result};
use minigpt4_io::weights::VarBuilder;
use minigpt4_ops::decode_attention::decode_attention;
use minigpt4_ops::quant_matvec::QuantMatvec;
use minigpt4_ops::train_ops;

/// Mirrors the fields of a Hugging Face `LlamaConfig` (`config.json`) that inference needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Older configs write `rope_theta` at the top level; transformers ≥ 5 nests it in
    /// `rope_parameters`. `validate` folds the second into the first.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<EosIds>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

/// `eos_token_id` is an int or a list of ints in published configs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EosIds {
    One(u32),
    Many(Vec<u32>),
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// RoPE base frequency, wherever the config put it.
    pub fn rope_base(&self) -> f64 {
        let nested = self.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(|v| v.as_f64());
        self.rope_theta.or(nested).unwrap_or(10_000.0)
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Parameters of a LLaMA of this shape (embeddings, attention, MLP, the head when untied).
    pub fn parameters(&self) -> u64 {
        let (d, ff, v) = (self.hidden_size as u64, self.intermediate_size as u64, self.vocab_size as u64);
        let kv = (self.num_kv_heads() * self.head_dim()) as u64;
        let q = (self.num_attention_heads * self.head_dim()) as u64;
        let layer = d * q * 2 + d * kv * 2 + 3 * d * ff;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + head + layer * self.num_hidden_layers as u64
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            None => vec![],
            Some(EosIds::One(id)) => vec![*id],
            Some(EosIds::Many(ids)) => ids.clone(),
        }
    }

    fn validate(&self) -> Result<()> {
        let (h, kv) = (self.num_attention_heads, self.num_kv_heads());
        if h == 0 || kv == 0 || h % kv != 0 {
            return Err(Error::Config(format!("{h} attention heads cannot be grouped over {kv} key/value heads")));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::Config("RoPE needs an even head_dim".into()));
        }
        // Sizes from a file are checked before anything is allocated from them: far above every
        // published LLaMA-family model, far below what would overflow or exhaust memory.
        for (what, v, max) in [
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_attention_heads", h, 1 << 10),
            ("head_dim", self.head_dim(), 1 << 12),
            ("vocab_size", self.vocab_size, 1 << 22),
        ] {
            if v == 0 || v > max {
                return Err(Error::Config(format!("{what} = {v} is out of range (1 to {max})")));
            }
        }
        if self.hidden_act != "silu" {
            return Err(Error::Config(format!("hidden_act `{}` is not supported (silu)", self.hidden_act)));
        }
        if let Some(s) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            return Err(Error::Config(format!("rope_scaling {s} is not supported")));
        }
        let rope_type = self.rope_parameters.as_ref().and_then(|p| p.get("rope_type")).and_then(|v| v.as_str());
        match rope_type {
            None | Some("default") => Ok(()),
            Some(t) => Err(Error::Config(format!("rope_type `{t}` is not supported (default)"))),
        }
    }

    /// Reads the `llama.*` (or `{general.architecture}.*`) metadata of a GGUF file.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let md = |key: &str| ct.metadata.get(key);
        let arch = md("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or("llama".into());
        let get = |key: &str| {
            md(&format!("{arch}.{key}"))
                .ok_or_else(|| Error::Config(format!("GGUF metadata `{arch}.{key}` is missing")))
        };
        let int = |key: &str| -> Result<usize> {
            let v = get(key)?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|e| Error::Config(format!("GGUF `{arch}.{key}`: {e}")))
        };
        let float = |key: &str, default: f64| -> Result<f64> {
            match md(&format!("{arch}.{key}")) {
                None => Ok(default),
                Some(v) => v.to_f32().map(f64::from).map_err(|e| Error::Config(format!("GGUF `{arch}.{key}`: {e}"))),
            }
        };
        let embd = ct
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| Error::Config("GGUF has no token_embd.weight".into()))?;
        let heads = int("attention.head_count")?;
        let hidden = int("embedding_length")?;
        let id = |key: &str| md(key).and_then(|v| v.to_u32().ok());
        Ok(Self {
            vocab_size: *embd
                .shape
                .dims()
                .first()
                .ok_or_else(|| Error::Config("GGUF token_embd.weight has no dimensions".into()))?,
            hidden_size: hidden,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: Some(int("attention.head_count_kv").unwrap_or(heads)),
            head_dim: int("attention.key_length").ok(),
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5)?,
            rope_theta: Some(float("rope.freq_base", 10_000.0)?),
            rope_parameters: None,
            max_position_embeddings: int("context_length").unwrap_or(2048),
            tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_id: id("tokenizer.ggml.eos_token_id").map(EosIds::One),
            rope_scaling: None,
            hidden_act: "silu".into(),
        })
    }
}

/// Whether a forward pass must be differentiable with respect to its input embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Inference,
    Differentiable,
}

/// From this many input rows on (a prompt, not one decoded token), a quantized matrix is
/// dequantized for the call and multiplied in f32. candle's quantized CPU matmul computes one
/// block dot product per row and output, about 25 tokens/s on SmolLM2 whatever the batch; the f32
/// GEMM reuses each weight across rows (≈4× faster at 128 rows), and dequantizing one matrix
/// (≤ 1M weights) costs less than a few rows of the quantized product. Nothing is kept, so memory
/// stays at the quantized size. Models over 1 B parameters on a CPU with AVX-512 VNNI skip
/// this for our kernel's formats: see [`int8_prefill_default`].
const DENSE_PREFILL_ROWS: usize = 16;

/// Whether prompts are multiplied in 8-bit integers (`minigpt4_ops::quant_gemm`, AVX-512 VNNI),
/// the blocks read directly with the activations quantized per 32 values as llama.cpp does,
/// instead of in f32 with the matrix dequantized. 7B, 128-token prompt: q4_k 3.9 → 9.4 tokens/s,
/// q8_0 5.4 → 9.6. The f32 route is exact (as exact as the dequantized matrix), which the
/// parity tests of small models hold it to, and its dequantization costs little there; the
/// integer one adds the 8-bit activations' rounding (as decoding already does). So: on above
/// 1 B parameters, the size from which the CPU default quantizes at load too;
/// `MINIGPT4_PREFILL=int8|f32` overrides.
pub fn int8_prefill_default(cfg: &LlamaConfig) -> bool {
    match std::env::var("MINIGPT4_PREFILL").as_deref().map(str::trim) {
        Ok("int8") => true,
        Ok("f32") => false,
        _ => cfg.parameters() > 1_000_000_000,
    }
}

fn rows(x: &Tensor) -> usize {
    x.dims().split_last().map_or(0, |(_, r)| r.iter().product())
}

/// `x · wᵀ` with `w` dequantized for this call only (see [`DENSE_PREFILL_ROWS`]).
fn dequantized_matmul(x: &Tensor, q: &QTensor) -> Result<Tensor> {
    let w = q.dequantize(x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_matmul(&w.t()?)?)
}

/// Most f32 weight bytes dequantized at once for a prefill product. Below glibc's largest dynamic
/// mmap threshold (32 MB), so once the first chunk is freed, later chunks reuse the heap's pages
/// instead of mapping (and faulting in) a fresh buffer: a 7B layer's 180 MB temporaries cost
/// about 44k page faults each.
const PREFILL_CHUNK_BYTES: usize = 16 << 20;

/// `x · wᵀ` for many rows, `w` dequantized a chunk of output rows at a time. On TinyLlama-1.1B
/// (q8_0, 128-token prefill) this took 33–37 → 43–53 tokens/s; on a 7B, whose products are long
/// enough to hide the faults, it changed nothing (5.4 → 5.3–5.6).
fn chunked_dense_matmul(x: &Tensor, mv: &QuantMatvec) -> Result<Tensor> {
    chunked_dense_matmul_by(x, mv, PREFILL_CHUNK_BYTES)
}

fn chunked_dense_matmul_by(x: &Tensor, mv: &QuantMatvec, chunk_bytes: usize) -> Result<Tensor> {
    let (out_rows, cols) = mv.dims();
    let chunk = (chunk_bytes / 4 / cols).clamp(1, out_rows.max(1));
    let mut parts = Vec::with_capacity(out_rows.div_ceil(chunk));
    for first in (0..out_rows).step_by(chunk) {
        let n = chunk.min(out_rows - first);
        let w = Tensor::from_vec(mv.dequantize_rows(first..first + n), (n, cols), x.device())?;
        parts.push(x.broadcast_matmul(&w.t()?)?);
    }
    Ok(Tensor::cat(&parts, candle_core::D::Minus1)?)
}

/// A weight matrix [out, in], dense or in GGUF quantized blocks: Q4_1, Q8_0 and Q4_K on the CPU
/// go through our own kernels (`Native`), other block types and devices through candle's
/// `QMatMul`.
#[derive(Clone)]
enum Weight {
    Dense(candle_nn::Linear),
    Quantized(QMatMul),
    Native(Arc<QuantMatvec>),
    /// A quantized (or f16) matrix with a LoRA update added as a side product, `W·x + s·B·(A·x)`:
    /// merging would need the dense matrix, and requantizing the sum would lose the update's
    /// precision.
    Lora(Box<Weight>, Arc<LoraPair>),
}

impl Weight {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match self {
            Weight::Lora(base, pair) => Ok((base.forward(x, mode)? + pair.forward(x)?)?),
            Weight::Dense(l) if mode == Mode::Differentiable && x.device().is_cpu() => {
                Ok(train_ops::frozen_matmul(x, l.weight())?)
            }
            Weight::Dense(l) => Ok(l.forward(x)?),
            Weight::Quantized(_) | Weight::Native(_) if mode == Mode::Differentiable => Err(Error::Config(
                "quantized weights have no backward pass; load the model with `into_dense()` for training".into(),
            )),
            Weight::Quantized(QMatMul::QTensor(q)) if x.device().is_cpu() && rows(x) >= DENSE_PREFILL_ROWS => {
                dequantized_matmul(x, q)
            }
            Weight::Quantized(q) => Ok(q.forward(x)?),
            // Our kernel takes f32 rows only.
            Weight::Native(mv) if x.dtype() != DType::F32 => dequantized_matmul(x, mv.qtensor()),
            // Unless the integer gemm is on (large models, AVX-512 VNNI), prompts go through f32.
            Weight::Native(mv) if rows(x) >= DENSE_PREFILL_ROWS && !mv.int8_prefill() => chunked_dense_matmul(x, mv),
            Weight::Native(mv) => Ok(x.contiguous()?.apply_op1_no_bwd(&**mv)?),
        }
    }

    /// The GGUF blocks behind this weight, when it is quantized.
    fn qtensor(&self) -> Option<&Arc<QTensor>> {
        match self {
            Weight::Quantized(QMatMul::QTensor(q)) => Some(q),
            Weight::Native(mv) => Some(mv.qtensor()),
            Weight::Lora(base, _) => base.qtensor(),
            Weight::Dense(_) | Weight::Quantized(_) => None,
        }
    }

    /// A quantized matrix: our kernel where it has one for the block type and device, candle's
    /// otherwise.
    fn quantized(q: Arc<QTensor>) -> Result<Weight> {
        match QuantMatvec::new(q.clone()) {
            Some(mv) => Ok(Weight::Native(Arc::new(mv))),
            None => Ok(Weight::Quantized(QMatMul::from_arc(q)?)),
        }
    }

    /// Lets a quantized matrix multiply prompts in 8-bit integers (see [`int8_prefill_default`]).
    fn set_int8_prefill(&mut self, on: bool) {
        match self {
            // Set while the model is built, before any clone shares the kernel.
            Weight::Native(mv) => {
                if let Some(mv) = Arc::get_mut(mv) {
                    mv.set_int8_prefill(on);
                }
            }
            Weight::Lora(base, _) => base.set_int8_prefill(on),
            Weight::Dense(_) | Weight::Quantized(_) => {}
        }
    }

    fn to_dense(&self, dtype: DType) -> Result<Weight> {
        if let Weight::Lora(base, pair) = self {
            return base.to_dense(dtype)?.with_lora(pair.clone());
        }
        if let Some(q) = self.qtensor() {
            return Ok(Weight::Dense(candle_nn::Linear::new(q.dequantize(&q.device())?.to_dtype(dtype)?, None)));
        }
        Ok(match self {
            Weight::Quantized(QMatMul::Tensor(t)) | Weight::Quantized(QMatMul::TensorF16(t)) => {
                Weight::Dense(candle_nn::Linear::new(t.to_dtype(dtype)?, None))
            }
            _ => self.clone(),
        })
    }

    fn is_quantized(&self) -> bool {
        self.qtensor().is_some()
    }

    /// `[out, in]` of the matrix.
    fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Weight::Dense(l) => l.weight().dims2()?,
            Weight::Quantized(QMatMul::Tensor(t)) | Weight::Quantized(QMatMul::TensorF16(t)) => t.dims2()?,
            Weight::Quantized(QMatMul::QTensor(q)) => q.shape().dims2()?,
            Weight::Native(mv) => mv.qtensor().shape().dims2()?,
            Weight::Lora(base, _) => base.dims()?,
        })
    }

    /// This matrix with a LoRA update: merged into a dense matrix (exactly what PEFT's
    /// `merge_and_unload` computes), added as a side product to any other.
    fn with_lora(self, pair: Arc<LoraPair>) -> Result<Weight> {
        Ok(match self {
            Weight::Dense(l) => {
                let w = l.weight();
                let merged = (w.to_dtype(DType::F32)? + pair.delta()?.to_device(w.device())?)?.to_dtype(w.dtype())?;
                Weight::Dense(candle_nn::Linear::new(merged, None))
            }
            other => Weight::Lora(Box::new(other), pair),
        })
    }
}

/// Where the decoder's tensors come from; both sides answer in Hugging Face names.
enum Source<'a> {
    /// Hugging Face names; matrices quantized to `quantize` as they are read, when set.
    Hf { vb: &'a VarBuilder<'a>, quantize: Option<GgmlDType> },
    Gguf {
        ct: &'a gguf_file::Content,
        file: &'a mut std::fs::File,
        path: &'a Path,
        device: &'a Device,
        hf_to_gguf: std::collections::HashMap<String, String>,
        requantize: bool,
    },
}

impl Source<'_> {
    fn qtensor(&mut self, name: &str, shape: &[usize]) -> Result<QTensor> {
        let Source::Gguf { ct, file, path, device, hf_to_gguf, .. } = self else { unreachable!("GGUF only") };
        let file_name = path.display().to_string();
        let gname = hf_to_gguf
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), file: file_name.clone() })?;
        let q = ct
            .tensor(*file, gname, device)
            .map_err(|e| Error::BadCheckpoint { file: file_name.clone(), msg: format!("reading `{gname}`: {e}") })?;
        if q.shape().dims() != shape {
            return Err(Error::ShapeMismatch {
                name: gname.clone(),
                file: file_name,
                expected: shape.to_vec(),
                actual: q.shape().dims().to_vec(),
            });
        }
        if !minigpt4_ops::quant_matvec::all_finite_blocks(&q)? {
            return Err(Error::BadCheckpoint {
                file: file_name,
                msg: format!("`{gname}` holds NaN or infinite values"),
            });
        }
        Ok(q)
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Source::Hf { vb, .. } => vb.contains_tensor(name),
            Source::Gguf { hf_to_gguf, .. } => hf_to_gguf.contains_key(name),
        }
    }

    /// A plain tensor (norm weights, embeddings), dequantized if need be.
    fn dense(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        match self {
            Source::Hf { vb, .. } => Ok(vb.get(shape, name)?),
            Source::Gguf { device, .. } => {
                let device = (*device).clone();
                Ok(self.qtensor(name, shape)?.dequantize(&device)?.to_dtype(dtype)?)
            }
        }
    }

    /// `model.embed_tokens.weight`: kept quantized when a GGUF on CPU stores it in blocks (block
    /// types that `weight` requantizes for speed are requantized here too, since a tied head
    /// shares the table).
    fn embedding(&mut self, shape: &[usize], dtype: DType) -> Result<Embedding> {
        const NAME: &str = "model.embed_tokens.weight";
        let blocks = match self {
            Source::Gguf { device, .. } => device.is_cpu(),
            Source::Hf { vb, quantize } => quantize.is_some() && vb.device().is_cpu(),
        };
        if !blocks {
            return Ok(Embedding::Dense(self.dense(NAME, shape, dtype)?));
        }
        match self.weight(NAME, shape[0], shape[1], dtype)? {
            Weight::Quantized(QMatMul::QTensor(q)) => Ok(Embedding::Quantized(q)),
            Weight::Native(mv) => Ok(Embedding::Quantized(mv.qtensor().clone())),
            Weight::Dense(l) => Ok(Embedding::Dense(l.weight().clone())),
            Weight::Lora(..) => unreachable!("LoRA is applied after loading"),
            Weight::Quantized(QMatMul::Tensor(t)) | Weight::Quantized(QMatMul::TensorF16(t)) => {
                Ok(Embedding::Dense(t.to_dtype(dtype)?))
            }
        }
    }

    fn weight(&mut self, name: &str, out_dim: usize, in_dim: usize, dtype: DType) -> Result<Weight> {
        match self {
            Source::Hf { vb, quantize } => {
                let w = vb.get(&[out_dim, in_dim], name)?;
                match quantize.filter(|_| vb.device().is_cpu()).and_then(|q| block_type_for(q, in_dim)) {
                    // candle's QMatMul would widen F16 blocks back to f32: keep an f16 matrix.
                    Some(GgmlDType::F16) => Ok(Weight::Quantized(QMatMul::TensorF16(w.to_dtype(DType::F16)?))),
                    // Quantized as it is read: only this tensor is ever held in f32.
                    Some(q) => Weight::quantized(Arc::new(QTensor::quantize(&w.to_dtype(DType::F32)?, q)?)),
                    None => Ok(Weight::Dense(candle_nn::Linear::new(w, None))),
                }
            }
            Source::Gguf { device, requantize, .. } => {
                let (device, requantize) = ((*device).clone(), *requantize);
                let q = self.qtensor(name, &[out_dim, in_dim])?;
                match q.dtype() {
                    // Kept in f16 and multiplied as quantize-at-load's f16 is (an f16 7B would
                    // otherwise take 27 GB as f32).
                    GgmlDType::F16 if device.is_cpu() => {
                        Ok(Weight::Quantized(QMatMul::TensorF16(q.dequantize_f16(&device)?)))
                    }
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        let t = q.dequantize(&device)?.to_dtype(dtype)?;
                        Ok(Weight::Dense(candle_nn::Linear::new(t, None)))
                    }
                    // candle's CPU dot products for these block types are scalar (Q4_0, Q8_0 and
                    // the k-quants have SIMD ones) and ours covers Q4_1 and Q8_0 only. Q8_0 holds
                    // their values almost exactly (error ≤ 1/254 of a block's range).
                    GgmlDType::Q5_0 | GgmlDType::Q5_1 if requantize && device.is_cpu() => {
                        let requantized = QTensor::quantize(&q.dequantize(&device)?, GgmlDType::Q8_0)?;
                        Weight::quantized(Arc::new(requantized))
                    }
                    _ => Weight::quantized(Arc::new(q)),
                }
            }
        }
    }
}

#[derive(Clone)]
struct Attention {
    q: Weight,
    k: Weight,
    v: Weight,
    o: Weight,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

#[derive(Clone)]
struct Mlp {
    gate: Weight,
    up: Weight,
    down: Weight,
}

#[derive(Clone)]
struct Block {
    input_norm: Tensor,
    attn: Attention,
    post_attn_norm: Tensor,
    mlp: Mlp,
}

impl Block {
    /// The matrix a LoRA target names.
    fn matrix(&self, target: LoraTarget) -> &Weight {
        match target {
            LoraTarget::Q => &self.attn.q,
            LoraTarget::K => &self.attn.k,
            LoraTarget::V => &self.attn.v,
            LoraTarget::O => &self.attn.o,
            LoraTarget::Gate => &self.mlp.gate,
            LoraTarget::Up => &self.mlp.up,
            LoraTarget::Down => &self.mlp.down,
        }
    }

    fn matrix_mut(&mut self, target: LoraTarget) -> &mut Weight {
        match target {
            LoraTarget::Q => &mut self.attn.q,
            LoraTarget::K => &mut self.attn.k,
            LoraTarget::V => &mut self.attn.v,
            LoraTarget::O => &mut self.attn.o,
            LoraTarget::Gate => &mut self.mlp.gate,
            LoraTarget::Up => &mut self.mlp.up,
            LoraTarget::Down => &mut self.mlp.down,
        }
    }
}

/// Token embeddings: a dense table, or (GGUF on CPU) the quantized table itself, which a tied LM
/// head shares. Looking up dequantizes only the requested rows, which keeps a vocabulary × width
/// f32 copy out of memory (113 MB for SmolLM2, more than half its quantized weights).
#[derive(Clone)]
enum Embedding {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
}

impl Embedding {
    /// Rows `ids` (already checked against the vocabulary) as [T, D].
    fn rows(&self, ids: &[u32], device: &Device, dtype: DType) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t.index_select(&Tensor::new(ids, device)?, 0)?),
            Embedding::Quantized(q) => {
                let (_, d) = q.shape().dims2()?;
                let row_bytes = d / q.dtype().block_size() * q.dtype().type_size();
                let table = q.data()?;
                let mut bytes = Vec::with_capacity(ids.len() * row_bytes);
                for &i in ids {
                    let start = i as usize * row_bytes;
                    bytes.extend_from_slice(&table[start..start + row_bytes]);
                }
                let storage = QStorage::from_data(Cow::Owned(bytes), device, q.dtype())?;
                Ok(QTensor::new(storage, (ids.len(), d))?.dequantize(device)?.to_dtype(dtype)?)
            }
        }
    }
}

/// Per-layer keys and values of the positions seen so far. Cloning is cheap (the layers are
/// reference-counted, which is what beam search needs); a layer shared with a clone is copied
/// before it is appended to, so clones never see each other's positions.
#[derive(Clone, Debug)]
pub struct LlamaCache {
    kv: Vec<Option<Arc<LayerKv>>>,
    pos: usize,
}

impl LlamaCache {
    pub fn position(&self) -> usize {
        self.pos
    }
}

/// Positions a layer's key/value buffers grow by. Appending into spare room instead of
/// concatenating a new tensor per token saves copying the whole cache every token (on SmolLM2,
/// 4 % of decoding went to that `memmove`); growing in small steps keeps the spare room at most
/// 31 positions, 31 MB at 7B in f32.
const KV_GROWTH: usize = 32;

/// One layer's keys and values, `len` positions filled: values [B, KV heads, capacity, head dim],
/// keys transposed, [B, KV heads, head dim, capacity], so that decoding's scores `q·kⱼ` run
/// over positions in vector lanes with each score still one sequential sum over the head's
/// dimensions (the order of the gemm it replaces, see `minigpt4_ops::decode_attention`).
#[derive(Debug)]
struct LayerKv {
    k_t: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerKv {
    /// Appends `k`, `v` [B, KV heads, T, head dim] after the filled positions.
    fn append(slot: &mut Option<Arc<LayerKv>>, k: &Tensor, v: &Tensor) -> Result<()> {
        let (b, kv, t, hd) = k.dims4()?;
        let (len, cap) = match slot.as_ref() {
            Some(c) => (c.len, c.v.dim(2)?),
            None => (0, 0),
        };
        // Copy on write: a beam-search sibling may still read these buffers.
        let shared = slot.as_mut().is_some_and(|c| Arc::get_mut(c).is_none());
        if len + t > cap || shared {
            let cap = (len + t).next_multiple_of(KV_GROWTH).max(cap);
            // A new buffer with the filled positions of `old` (along `dim`) copied in.
            let grown = |old: Option<&Tensor>, shape: (usize, usize, usize, usize), dim: usize| -> Result<Tensor> {
                let buf = Tensor::zeros(shape, k.dtype(), k.device())?;
                if let Some(old) = old.filter(|_| len > 0) {
                    buf.slice_set(&old.narrow(dim, 0, len)?.contiguous()?, dim, 0)?;
                }
                Ok(buf)
            };
            let k_t = grown(slot.as_deref().map(|c| &c.k_t), (b, kv, hd, cap), 3)?;
            let v = grown(slot.as_deref().map(|c| &c.v), (b, kv, cap, hd), 2)?;
            *slot = Some(Arc::new(LayerKv { k_t, v, len }));
        }
        let c = slot
            .as_mut()
            .and_then(Arc::get_mut)
            .ok_or_else(|| Error::Internal("key/value buffers still shared after copying".into()))?;
        c.k_t.slice_set(&k.transpose(2, 3)?.contiguous()?, 3, len)?;
        c.v.slice_set(&v.contiguous()?, 2, len)?;
        c.len += t;
        Ok(())
    }

    /// The filled positions as keys and values [B, KV heads, len, head dim], contiguous.
    fn filled(&self) -> Result<(Tensor, Tensor)> {
        let k = self.k_t.narrow(3, 0, self.len)?.transpose(2, 3)?.contiguous()?;
        Ok((k, self.v.narrow(2, 0, self.len)?.contiguous()?))
    }
}

#[derive(Clone)]
pub struct Llama {
    embed_tokens: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Weight,
    cos: Tensor,
    sin: Tensor,
    /// GGUF files store q/k rows permuted for llama.cpp's interleaved (pairwise) rotation;
    /// rotating pairs on those rows equals Hugging Face's half-split rotation on the original
    /// rows, so we keep the file's layout and pick the matching rotation.
    interleaved_rope: bool,
    cfg: LlamaConfig,
    dtype: DType,
    device: Device,
}

/// How a dense checkpoint's matrices are stored once loaded (`quantize` in a model file,
/// `--quantize` on the command line). The block layouts and rounding are ggml's (candle's port
/// of `quantize_row_*_reference`), so the weights are what llama.cpp's `quantize` would make.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quantize {
    /// As stored (f32 in memory).
    #[default]
    #[serde(rename = "none")]
    None,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q4_k")]
    Q4K,
}

impl Quantize {
    pub fn name(self) -> &'static str {
        match self {
            Quantize::None => "none",
            Quantize::F16 => "f16",
            Quantize::Q8_0 => "q8_0",
            Quantize::Q4_0 => "q4_0",
            Quantize::Q4K => "q4_k",
        }
    }

    fn ggml(self) -> Option<GgmlDType> {
        match self {
            Quantize::None => None,
            Quantize::F16 => Some(GgmlDType::F16),
            Quantize::Q8_0 => Some(GgmlDType::Q8_0),
            Quantize::Q4_0 => Some(GgmlDType::Q4_0),
            Quantize::Q4K => Some(GgmlDType::Q4K),
        }
    }
}

impl std::str::FromStr for Quantize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [Quantize::None, Quantize::F16, Quantize::Q8_0, Quantize::Q4_0, Quantize::Q4K]
            .into_iter()
            .find(|q| q.name() == s)
            .ok_or_else(|| Error::Config(format!("unknown quantization `{s}` (none, f16, q8_0, q4_0, q4_k)")))
    }
}

/// The block type a row of `in_dim` values can take: `want`, or Q8_0 when the row is not a whole
/// number of `want`'s blocks (a k-quant needs 256), or none (dense) when not even of Q8_0's 32 —
/// what llama.cpp's quantizer falls back to as well.
pub fn block_type_for(want: GgmlDType, in_dim: usize) -> Option<GgmlDType> {
    [want, GgmlDType::Q8_0].into_iter().find(|t| in_dim.is_multiple_of(t.block_size()))
}

impl Llama {
    /// Loads `LlamaForCausalLM` names (`model.embed_tokens.weight`, `model.layers.{i}.…`,
    /// `model.norm.weight`, `lm_head.weight`) from a checkpoint's root scope.
    pub fn load(cfg: &LlamaConfig, w: &VarBuilder) -> Result<Self> {
        Self::load_quantized(cfg, w, Quantize::None)
    }

    /// [`Llama::load`] with the matrices (and the embedding table) quantized tensor by tensor as
    /// they are read, so a 7B model in f16 never stands whole in f32 (28 GB): at Q8_0 it takes
    /// 7 GB. Norms stay dense. On the CPU only (elsewhere the weights stay dense).
    pub fn load_quantized(cfg: &LlamaConfig, w: &VarBuilder, quantize: Quantize) -> Result<Self> {
        let dtype = w.dtype();
        Self::build(cfg, &mut Source::Hf { vb: w, quantize: quantize.ggml() }, w.device(), dtype, false)
    }

    /// Loads a GGUF file: config and tensors; quantized matrices stay quantized (on CPU, block
    /// types without SIMD kernels are requantized to Q8_0 for speed; see `load_gguf_exact`).
    pub fn load_gguf(path: &Path, device: &Device) -> Result<(Self, gguf_file::Content)> {
        Self::load_gguf_with(path, device, true)
    }

    /// Loads a GGUF file keeping every block type as stored, so `into_dense()` gives exactly
    /// the file's dequantized weights (training, parity checks).
    pub fn load_gguf_exact(path: &Path, device: &Device) -> Result<(Self, gguf_file::Content)> {
        Self::load_gguf_with(path, device, false)
    }

    fn load_gguf_with(path: &Path, device: &Device, requantize: bool) -> Result<(Self, gguf_file::Content)> {
        let (mut file, ct) = read_gguf(path)?;
        let cfg = LlamaConfig::from_gguf(&ct)?;
        let hf_to_gguf = ct.tensor_infos.keys().filter_map(|g| names::gguf_to_hf(g).map(|h| (h, g.clone()))).collect();
        let mut src = Source::Gguf { ct: &ct, file: &mut file, path, device, hf_to_gguf, requantize };
        let model = Self::build(&cfg, &mut src, device, DType::F32, true)?;
        Ok((model, ct))
    }

    fn build(
        cfg: &LlamaConfig,
        src: &mut Source,
        device: &Device,
        dtype: DType,
        interleaved_rope: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_kv_heads());
        let embed_tokens = src.embedding(&[cfg.vocab_size, d], dtype)?;
        // Not preallocated: the count comes from the file, and a block that is not there ends the
        // loop with an error before a lying `block_count` can ask for terabytes.
        let mut blocks = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            blocks.push(Block {
                input_norm: src.dense(&p("input_layernorm.weight"), &[d], dtype)?,
                attn: Attention {
                    q: src.weight(&p("self_attn.q_proj.weight"), heads * hd, d, dtype)?,
                    k: src.weight(&p("self_attn.k_proj.weight"), kv_heads * hd, d, dtype)?,
                    v: src.weight(&p("self_attn.v_proj.weight"), kv_heads * hd, d, dtype)?,
                    o: src.weight(&p("self_attn.o_proj.weight"), d, heads * hd, dtype)?,
                    heads,
                    kv_heads,
                    head_dim: hd,
                },
                post_attn_norm: src.dense(&p("post_attention_layernorm.weight"), &[d], dtype)?,
                mlp: Mlp {
                    gate: src.weight(&p("mlp.gate_proj.weight"), cfg.intermediate_size, d, dtype)?,
                    up: src.weight(&p("mlp.up_proj.weight"), cfg.intermediate_size, d, dtype)?,
                    down: src.weight(&p("mlp.down_proj.weight"), d, cfg.intermediate_size, dtype)?,
                },
            });
        }
        let norm = src.dense("model.norm.weight", &[d], dtype)?;
        let tied = cfg.tie_word_embeddings || matches!(src, Source::Gguf { .. });
        let lm_head = if src.contains("lm_head.weight") || !tied {
            // An untied head must be in the checkpoint: loading it names the file when it is not.
            src.weight("lm_head.weight", cfg.vocab_size, d, dtype)?
        } else {
            // Tied head: reuse the embedding table (still quantized when it came quantized).
            match &embed_tokens {
                Embedding::Quantized(q) => Weight::quantized(q.clone())?,
                Embedding::Dense(_) => src.weight("model.embed_tokens.weight", cfg.vocab_size, d, dtype)?,
            }
        };
        let (cos, sin) = rope_tables(cfg, device)?;
        let mut model = Self {
            embed_tokens,
            blocks,
            norm,
            lm_head,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            interleaved_rope,
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
        };
        model.set_int8_prefill(int8_prefill_default(cfg));
        Ok(model)
    }

    /// Whether prompts are multiplied in 8-bit integers where the CPU can (see
    /// [`int8_prefill_default`], which `load*` apply). Only before the model is cloned.
    pub fn set_int8_prefill(&mut self, on: bool) {
        for block in &mut self.blocks {
            for target in LoraTarget::ALL {
                block.matrix_mut(target).set_int8_prefill(on);
            }
        }
        self.lm_head.set_int8_prefill(on);
    }

    /// A copy whose quantized matrices are dequantized (needed for `Mode::Differentiable`).
    pub fn into_dense(self) -> Result<Self> {
        let dt = self.dtype;
        let dense = |w: &Weight| w.to_dense(dt);
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    input_norm: b.input_norm.clone(),
                    attn: Attention {
                        q: dense(&b.attn.q)?,
                        k: dense(&b.attn.k)?,
                        v: dense(&b.attn.v)?,
                        o: dense(&b.attn.o)?,
                        ..b.attn.clone()
                    },
                    post_attn_norm: b.post_attn_norm.clone(),
                    mlp: Mlp { gate: dense(&b.mlp.gate)?, up: dense(&b.mlp.up)?, down: dense(&b.mlp.down)? },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { lm_head: dense(&self.lm_head)?, blocks, ..self })
    }

    /// Adds `adapter`'s updates to the matrices it names: merged into dense matrices, a side
    /// product on quantized ones (see [`Weight::Lora`]). q/k updates are permuted into the
    /// GGUF row order when the decoder came from a GGUF.
    pub fn apply_lora(&mut self, adapter: &LoraAdapter) -> Result<()> {
        for (&(layer, target), pair) in &adapter.pairs {
            let pair = self.fitted_pair(&adapter.origin, layer, target, pair)?;
            let slot = self.blocks[layer].matrix_mut(target);
            *slot = slot.clone().with_lora(Arc::new(pair))?;
        }
        Ok(())
    }

    /// Adds `adapter` as a side product on every matrix it names, never merged, with its `A` and
    /// `B` as trainable `Var`s: MiniGPT-v2's stage 3 trains them with the projection while the
    /// decoder stays frozen. Returns the variables under PEFT's names
    /// (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`); updating a variable
    /// updates the decoder. Call on a dense decoder (after `into_dense`), which would otherwise
    /// merge the variables away.
    pub fn add_trainable_lora(&mut self, adapter: &LoraAdapter) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        for (&(layer, target), pair) in &adapter.pairs {
            let pair = self.fitted_pair(&adapter.origin, layer, target, pair)?;
            let (a, b) = (Var::from_tensor(&pair.a)?, Var::from_tensor(&pair.b)?);
            let name = |ab: &str| crate::lora::peft_name(layer, target, ab);
            let trainable = LoraPair { a: a.as_tensor().clone(), b: b.as_tensor().clone(), scale: pair.scale };
            vars.push((name("A"), a));
            vars.push((name("B"), b));
            let slot = self.blocks[layer].matrix_mut(target);
            *slot = Weight::Lora(Box::new(slot.clone()), Arc::new(trainable));
        }
        Ok(vars)
    }

    /// `pair` checked against the matrix it adapts, on this decoder's device and row order.
    fn fitted_pair(&self, origin: &str, layer: usize, target: LoraTarget, pair: &LoraPair) -> Result<LoraPair> {
        let what = format!("{origin}: layers.{layer}.{}", target.module());
        let Some(block) = self.blocks.get(layer) else {
            return Err(Error::Config(format!("{what}: the decoder has {} layers", self.cfg.num_hidden_layers)));
        };
        let (out_dim, in_dim) = block.matrix(target).dims()?;
        let (a, b) = (pair.a.dims(), pair.b.dims());
        if a[1] != in_dim || b[0] != out_dim {
            return Err(Error::Config(format!(
                "{what}: lora_A {a:?} / lora_B {b:?} do not fit a [{out_dim}, {in_dim}] matrix"
            )));
        }
        let mut fitted = LoraPair {
            a: pair.a.to_device(&self.device)?.to_dtype(self.dtype)?,
            b: pair.b.to_device(&self.device)?.to_dtype(self.dtype)?,
            scale: pair.scale,
        };
        if self.interleaved_rope {
            let (heads, kv_heads) = (self.cfg.num_attention_heads, self.cfg.num_kv_heads());
            match target {
                LoraTarget::Q => fitted.b = names::permute_for_gguf(&fitted.b, heads)?,
                LoraTarget::K => fitted.b = names::permute_for_gguf(&fitted.b, kv_heads)?,
                _ => {}
            }
        }
        Ok(fitted)
    }

    /// The adapter as it is now (trained variables included), in Hugging Face row order: what a
    /// PEFT folder holds.
    pub fn lora_adapter(&self) -> Result<LoraAdapter> {
        let mut out = LoraAdapter { origin: "the decoder".into(), ..Default::default() };
        let (heads, kv_heads) = (self.cfg.num_attention_heads, self.cfg.num_kv_heads());
        for (layer, block) in self.blocks.iter().enumerate() {
            for target in LoraTarget::ALL {
                if let Weight::Lora(_, pair) = block.matrix(target) {
                    let mut p = LoraPair { a: pair.a.copy()?, b: pair.b.copy()?, scale: pair.scale };
                    if self.interleaved_rope {
                        match target {
                            LoraTarget::Q => p.b = names::unpermute_from_gguf(&p.b, heads)?,
                            LoraTarget::K => p.b = names::unpermute_from_gguf(&p.b, kv_heads)?,
                            _ => {}
                        }
                    }
                    out.pairs.insert((layer, target), p);
                }
            }
        }
        Ok(out)
    }

    pub fn is_quantized(&self) -> bool {
        self.lm_head.is_quantized() || self.blocks.iter().any(|b| b.attn.q.is_quantized() || b.mlp.up.is_quantized())
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    pub fn new_cache(&self) -> LlamaCache {
        LlamaCache { kv: vec![None; self.blocks.len()], pos: 0 }
    }

    /// Token embeddings [1, T, D]. Ids outside the vocabulary are an error, not a panic.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::Internal(format!("token id {bad} is outside the vocabulary ({})", self.cfg.vocab_size)));
        }
        Ok(self.embed_tokens.rows(ids, &self.device, self.dtype)?.unsqueeze(0)?)
    }

    /// Runs `embeds` [1, T, D] after what `cache` holds; returns the last position's logits [V] (f32).
    pub fn forward_last(&self, embeds: &Tensor, cache: &mut LlamaCache) -> Result<Tensor> {
        let h = self.hidden(embeds, Some(cache), Mode::Inference)?;
        let t = h.dim(1)?;
        let logits = self.lm_head.forward(&h.narrow(1, t - 1, 1)?, Mode::Inference)?;
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?)
    }

    /// Logits for every position [B, T, V], with no cache (parity tests, training).
    pub fn forward_all(&self, embeds: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = self.hidden(embeds, None, mode)?;
        self.lm_head.forward(&h, mode)
    }

    /// Logits [P, V] at the flat positions `rows` (indices into B·T) only, with no cache. Training
    /// needs logits where there is a label; the LM head over a 49k vocabulary costs as much as
    /// several layers, so skipping the unlabelled positions (image tokens, prompt) saves that much.
    pub fn forward_at(&self, embeds: &Tensor, rows: &[u32], mode: Mode) -> Result<Tensor> {
        let h = self.hidden(embeds, None, mode)?;
        let (b, t, d) = h.dims3()?;
        let idx = Tensor::new(rows, h.device())?;
        let picked = h.reshape((b * t, d))?.index_select(&idx, 0)?;
        self.lm_head.forward(&picked, mode)
    }

    fn hidden(&self, embeds: &Tensor, mut cache: Option<&mut LlamaCache>, mode: Mode) -> Result<Tensor> {
        let (_, t, d) = embeds.dims3()?;
        if d != self.cfg.hidden_size {
            return Err(Error::Internal(format!(
                "input embeddings have width {d}, the LLM expects {}",
                self.cfg.hidden_size
            )));
        }
        let pos = cache.as_ref().map_or(0, |c| c.pos);
        if pos + t > self.cos.dim(0)? {
            return Err(Error::Generation(format!(
                "sequence of {} positions exceeds the model's context of {}",
                pos + t,
                self.cos.dim(0)?
            )));
        }
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        // Training's softmax (`train_ops::causal_softmax`) masks by itself.
        let mask = if t > 1 && mode == Mode::Inference {
            Some(train_ops::causal_mask(t, pos, &self.device, self.dtype)?)
        } else {
            None
        };
        let eps = self.cfg.rms_norm_eps as f32;
        let mut x = embeds.to_dtype(self.dtype)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| &mut c.kv[i]);
            let h = rms_norm(&x, &block.input_norm, eps, mode)?;
            let h = self.attention(&block.attn, &h, &cos, &sin, mask.as_ref(), layer_cache, mode)?;
            x = (x + h)?;
            let h = rms_norm(&x, &block.post_attn_norm, eps, mode)?;
            let mlp = &block.mlp;
            let (gate, up) = (mlp.gate.forward(&h, mode)?, mlp.up.forward(&h, mode)?);
            let act = match mode {
                Mode::Inference => (candle_nn::ops::silu(&gate)? * up)?,
                Mode::Differentiable => train_ops::swiglu(&gate, &up)?,
            };
            x = (x + mlp.down.forward(&act, mode)?)?;
        }
        if let Some(c) = cache {
            c.pos += t;
        }
        rms_norm(&x, &self.norm, eps, mode)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<Arc<LayerKv>>>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let hd = a.head_dim;
        let shape = |w: &Weight, heads: usize| -> Result<Tensor> {
            Ok(w.forward(x, mode)?.reshape((b, t, heads, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = self.rope(&shape(&a.q, a.heads)?, cos, sin, mode)?;
        let mut k = self.rope(&shape(&a.k, a.kv_heads)?, cos, sin, mode)?;
        let mut v = shape(&a.v, a.kv_heads)?;
        if let Some(slot) = cache {
            let had_positions = slot.is_some();
            LayerKv::append(slot, &k, &v)?;
            let c = slot.as_ref().expect("appended above");
            if t == 1 && mode == Mode::Inference && minigpt4_ops::cpu::fused_f32(&q) {
                // candle's `scores / √d` multiplies by the f64 reciprocal rounded to f32.
                let scale = (1.0 / (hd as f64).sqrt()) as f32;
                let out = decode_attention(&q, &c.k_t, &c.v, c.len, scale)?;
                return a.o.forward(&out, mode);
            }
            // A first prompt attends to its own keys, already at hand; later ones to them all.
            if had_positions {
                (k, v) = c.filled()?;
            }
        }
        let n_rep = a.heads / a.kv_heads;
        if t == 1 && n_rep > 1 && mode == Mode::Inference {
            // Decoding one token: the query heads that share a key/value head are stacked as rows
            // of one matmul against that head's cache, instead of copying the whole cache n_rep
            // times per layer per token (what `repeat_kv` does).
            let qg = q.reshape((b, a.kv_heads, n_rep, hd))?;
            let scores = (qg.matmul(&k.t()?)? / (hd as f64).sqrt())?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let out = probs.matmul(&v)?.reshape((b, 1, a.heads * hd))?;
            return a.o.forward(&out, mode);
        }
        let k = repeat_kv(k, n_rep)?;
        let v = repeat_kv(v, n_rep)?;
        let qk = q.matmul(&k.t()?)?;
        let probs = match mode {
            Mode::Inference => {
                let mut scores = (qk / (hd as f64).sqrt())?;
                if let Some(m) = mask {
                    scores = scores.broadcast_add(m)?;
                }
                candle_nn::ops::softmax_last_dim(&scores)?
            }
            Mode::Differentiable => train_ops::causal_softmax(&qk, (hd as f64).sqrt())?,
        };
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, a.heads * hd))?;
        a.o.forward(&out, mode)
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mode: Mode) -> Result<Tensor> {
        use candle_nn::rotary_emb as r;
        Ok(match (self.interleaved_rope, mode) {
            (false, Mode::Inference) => r::rope(x, cos, sin)?,
            (true, Mode::Inference) => r::rope_i(x, cos, sin)?,
            (interleaved, Mode::Differentiable) => train_ops::rope(x, cos, sin, interleaved)?,
        })
    }
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f32, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Inference => candle_nn::ops::rms_norm(x, w, eps)?,
        Mode::Differentiable => train_ops::rms_norm(x, w, eps)?,
    })
}

/// cos/sin [max_pos, head_dim/2] computed in f32 as transformers does.
/// Positions the RoPE tables cover at most, whatever context a config claims: 32k positions
/// cost 16 MB of tables at head_dim 128, and no prompt here comes near (a file claiming a
/// context of 2^31 asked for 32 GB of tables at load).
const MAX_ROPE_POSITIONS: usize = 32_768;

fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let inv_freq: Vec<f32> =
        (0..hd).step_by(2).map(|i| 1f32 / (cfg.rope_base() as f32).powf(i as f32 / hd as f32)).collect();
    let n = inv_freq.len();
    let inv_freq = Tensor::from_vec(inv_freq, (1, n), device)?;
    let n_pos = cfg.max_position_embeddings.min(MAX_ROPE_POSITIONS);
    let positions = Tensor::arange(0u32, n_pos as u32, device)?.to_dtype(DType::F32)?.reshape((n_pos, 1))?;
    let freqs = positions.matmul(&inv_freq)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

fn repeat_kv(x: Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, kv, t, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?.broadcast_as((b, kv, n, t, hd))?.reshape((b, kv * n, t, hd))?)
}

/// Opens a GGUF file and reads its header; a malformed header is an error naming the file, never
/// a panic (see [`minigpt4_io::error::guard_reader`]).
pub fn read_gguf(path: &Path) -> Result<(std::fs::File, gguf_file::Content)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let name = path.display().to_string();
    let ct = minigpt4_io::error::guard_reader(&name, || {
        gguf_file::Content::read(&mut file).map_err(|e| Error::BadCheckpoint { file: name.clone(), msg: e.to_string() })
    })?;
    // candle sizes a tensor's read buffer from its declared dims before reading: a tensor that
    // claims more bytes than the file has would be an allocation of any size. Checked here, once,
    // with overflow-checked arithmetic.
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    for (tname, info) in &ct.tensor_infos {
        let bad = |msg: String| Error::BadCheckpoint { file: name.clone(), msg: format!("tensor `{tname}`: {msg}") };
        let elems = info.shape.dims().iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let block = info.ggml_dtype.block_size() as u64;
        let bytes = elems
            .filter(|e| e % block == 0)
            .and_then(|e| (e / block).checked_mul(info.ggml_dtype.type_size() as u64))
            .ok_or_else(|| {
                bad(format!("shape {:?} is not a whole number of {:?} blocks", info.shape.dims(), info.ggml_dtype))
            })?;
        let end = ct.tensor_data_offset.checked_add(info.offset).and_then(|o| o.checked_add(bytes));
        if end.is_none_or(|end| end > file_len) {
            return Err(bad(format!(
                "its {bytes} bytes at offset {} reach past the end of the {file_len}-byte file",
                info.offset
            )));
        }
    }
    Ok((file, ct))
}

#[cfg(test)]
mod chunked_tests {
    use super::*;

    #[test]
    fn chunked_prefill_product_equals_the_whole_one() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (301, 64), &dev).unwrap();
        let mv = QuantMatvec::new(Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap())).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 20, 64), &dev).unwrap();
        let whole = Tensor::from_vec(mv.dequantize(), (301, 64), &dev).unwrap();
        let want = x.broadcast_matmul(&whole.t().unwrap()).unwrap();
        // 1 KiB chunks: 4 rows each, the last one short.
        let got = chunked_dense_matmul_by(&x, &mv, 1024).unwrap();
        let d = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        // The same products, summed in blocks of another size by the gemm.
        assert!(d <= 1e-6 * scale, "{d} of {scale}");
    }
}
