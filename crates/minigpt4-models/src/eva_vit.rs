//! EVA ViT-g/14 as used by BLIP-2 and MiniGPT-4 (Fang et al., arXiv 2211.07636; LAVIS `eva_vit.py`), with Hugging Face `Blip2Vision*`
//! tensor names. Configurable sizes so tiny test models run through the same code.
//!
//! The output is the last block's tokens *before* any final norm; `ln_vision` (HF's
//! `post_layernorm`) belongs to the caller, because its epsilon and whether its weights exist
//! depend on the checkpoint family, not on the encoder.

use candle_core::{DType, Module, Tensor};
use candle_nn::LayerNorm;
use serde::{Deserialize, Serialize};

use crate::vit_layers::{multi_head_attention, EmbeddingNames, StoredLinear, VitEmbeddings};
use crate::{Error, Result};
use minigpt4_io::weights::VarBuilder;

/// Mirrors Hugging Face's `Blip2VisionConfig` (defaults: EVA ViT-g/14 at 224 px, 39 blocks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvaVitConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub qkv_bias: bool,
    pub hidden_act: String,
}

impl Default for EvaVitConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1408,
            intermediate_size: 6144,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            image_size: 224,
            patch_size: 14,
            layer_norm_eps: 1e-6,
            qkv_bias: true,
            hidden_act: "gelu".into(),
        }
    }
}

impl EvaVitConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::Config(format!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(Error::Config(format!(
                "vision image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        if self.hidden_act != "gelu" {
            return Err(Error::Config(format!("vision hidden_act `{}` is not supported (gelu)", self.hidden_act)));
        }
        Ok(())
    }
}

struct Attention {
    qkv: StoredLinear,
    proj: StoredLinear,
    heads: usize,
}

impl Attention {
    fn load(cfg: &EvaVitConfig, w: &VarBuilder, storage: DType) -> Result<Self> {
        let d = cfg.hidden_size;
        let weight = w.get_with_hints_dtype((3 * d, d), "qkv.weight", Default::default(), storage)?;
        // Published checkpoints keep q and v biases apart (k has none); recent transformers save
        // them fused as one `qkv.bias` with zeros in the k slot. Both become the same bias.
        let bias = if !cfg.qkv_bias {
            None
        } else if w.contains_tensor("q_bias") {
            let q = w.get(&[d], "q_bias")?;
            let v = w.get(&[d], "v_bias")?;
            Some(Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?)
        } else {
            Some(w.get(&[3 * d], "qkv.bias")?)
        };
        Ok(Self {
            qkv: StoredLinear::new(weight, bias),
            proj: StoredLinear::load(&w.pp("projection"), d, d, storage)?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(2)?;
        let qkv = self.qkv.forward(x)?;
        let (q, k, v) = (qkv.narrow(2, 0, d)?, qkv.narrow(2, d, d)?, qkv.narrow(2, 2 * d, d)?);
        Ok(self.proj.forward(&multi_head_attention(&q, &k, &v, self.heads)?)?)
    }
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: StoredLinear,
    fc2: StoredLinear,
}

impl Block {
    fn load(cfg: &EvaVitConfig, w: &VarBuilder, storage: DType) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            norm1: candle_nn::layer_norm(d, eps, w.pp("layer_norm1"))?,
            attn: Attention::load(cfg, &w.pp("self_attn"), storage)?,
            norm2: candle_nn::layer_norm(d, eps, w.pp("layer_norm2"))?,
            fc1: StoredLinear::load(&w.pp("mlp.fc1"), d, cfg.intermediate_size, storage)?,
            fc2: StoredLinear::load(&w.pp("mlp.fc2"), cfg.intermediate_size, d, storage)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?)?)?;
        let h = self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        Ok((x + h)?)
    }
}

pub struct EvaVit {
    embeddings: VitEmbeddings,
    blocks: Vec<Block>,
    cfg: EvaVitConfig,
    image_size: usize,
}

impl EvaVit {
    /// Loads from `vision_model.*`-style names (pass `weights.pp("vision_model")`).
    /// `image_size` may differ from the checkpoint's: the position embeddings are then resized
    /// bicubically, as LAVIS and transformers do.
    /// `storage`: the dtype the block matrices are held in (f16 or the builder's f32; see
    /// [`StoredLinear`]); everything is computed in the builder's dtype.
    pub fn load(cfg: &EvaVitConfig, image_size: usize, w: &VarBuilder, storage: DType) -> Result<Self> {
        cfg.validate()?;
        if image_size == 0 || !image_size.is_multiple_of(cfg.patch_size) {
            return Err(Error::Config(format!(
                "image size {image_size} is not a multiple of patch size {}",
                cfg.patch_size
            )));
        }
        let (d, p) = (cfg.hidden_size, cfg.patch_size);
        let names = EmbeddingNames { patch: "patch_embedding", cls: "class_embedding", pos: "position_embedding" };
        let embeddings = VitEmbeddings::load(&w.pp("embeddings"), &names, d, p, cfg.image_size / p, image_size)?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(cfg, &w.pp("encoder.layers").pp(i), storage))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings, blocks, cfg: cfg.clone(), image_size })
    }

    pub fn config(&self) -> &EvaVitConfig {
        &self.cfg
    }

    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Number of output tokens (patches + CLS).
    pub fn num_tokens(&self) -> usize {
        self.embeddings.num_tokens()
    }

    /// `pixels` [B, 3, S, S] → tokens [B, 1 + (S/p)², hidden], no final norm.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = self.embeddings.forward(pixels, "the EVA vision encoder")?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(x)
    }
}
