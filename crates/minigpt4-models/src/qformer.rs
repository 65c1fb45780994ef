//! The query branch of BLIP-2's Q-Former (Li et al., arXiv 2301.12597; transformers `Blip2QFormerModel`): learned query tokens attend to
//! themselves and, every `cross_attention_frequency` layers, to the image tokens. Post-norm
//! BERT layers with Hugging Face `Blip2QFormer*` tensor names. The text branch is never run.

use candle_core::{DType, Module, Tensor};
use candle_nn::LayerNorm;
use serde::{Deserialize, Serialize};

use crate::vit_layers::{multi_head_attention, StoredLinear};
use crate::{Error, Result};
use minigpt4_io::weights::VarBuilder;

/// Mirrors Hugging Face's `Blip2QFormerConfig` (defaults: the BLIP-2 Q-Former of MiniGPT-4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QFormerConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub layer_norm_eps: f64,
    pub cross_attention_frequency: usize,
    pub encoder_hidden_size: usize,
    pub hidden_act: String,
}

impl Default for QFormerConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            layer_norm_eps: 1e-12,
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
            hidden_act: "gelu".into(),
        }
    }
}

struct MultiHeadAttention {
    query: StoredLinear,
    key: StoredLinear,
    value: StoredLinear,
    dense: StoredLinear,
    norm: LayerNorm,
    heads: usize,
}

impl MultiHeadAttention {
    /// `w` is `attention` or `crossattention`; `kv_dim` is the width of what is attended to.
    fn load(cfg: &QFormerConfig, kv_dim: usize, w: &VarBuilder, storage: DType) -> Result<Self> {
        let d = cfg.hidden_size;
        let a = w.pp("attention");
        Ok(Self {
            query: StoredLinear::load(&a.pp("query"), d, d, storage)?,
            key: StoredLinear::load(&a.pp("key"), kv_dim, d, storage)?,
            value: StoredLinear::load(&a.pp("value"), kv_dim, d, storage)?,
            dense: StoredLinear::load(&w.pp("output.dense"), d, d, storage)?,
            norm: candle_nn::layer_norm(d, cfg.layer_norm_eps, w.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let q = self.query.forward(x)?;
        let (k, v) = (self.key.forward(context)?, self.value.forward(context)?);
        let ctx = multi_head_attention(&q, &k, &v, self.heads)?;
        Ok(self.norm.forward(&(self.dense.forward(&ctx)? + x)?)?)
    }
}

struct Layer {
    self_attn: MultiHeadAttention,
    cross_attn: Option<MultiHeadAttention>,
    intermediate: StoredLinear,
    output: StoredLinear,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(cfg: &QFormerConfig, index: usize, w: &VarBuilder, storage: DType) -> Result<Self> {
        let d = cfg.hidden_size;
        let cross = index.is_multiple_of(cfg.cross_attention_frequency);
        Ok(Self {
            self_attn: MultiHeadAttention::load(cfg, d, &w.pp("attention"), storage)?,
            cross_attn: if cross {
                Some(MultiHeadAttention::load(cfg, cfg.encoder_hidden_size, &w.pp("crossattention"), storage)?)
            } else {
                None
            },
            intermediate: StoredLinear::load(&w.pp("intermediate_query.dense"), d, cfg.intermediate_size, storage)?,
            output: StoredLinear::load(&w.pp("output_query.dense"), cfg.intermediate_size, d, storage)?,
            output_norm: candle_nn::layer_norm(d, cfg.layer_norm_eps, w.pp("output_query.LayerNorm"))?,
        })
    }

    fn forward(&self, x: &Tensor, image: &Tensor) -> Result<Tensor> {
        let mut x = self.self_attn.forward(x, x)?;
        if let Some(cross) = &self.cross_attn {
            x = cross.forward(&x, image)?;
        }
        let h = self.output.forward(&self.intermediate.forward(&x)?.gelu_erf()?)?;
        Ok(self.output_norm.forward(&(h + x)?)?)
    }
}

pub struct QFormer {
    query_tokens: Tensor,
    layernorm: LayerNorm,
    layers: Vec<Layer>,
    cfg: QFormerConfig,
}

impl QFormer {
    /// `root` is the checkpoint's top level: the Q-Former lives under `qformer.` and its learned
    /// queries at `query_tokens`, as in `Blip2Model`.
    pub fn load(cfg: &QFormerConfig, num_query_tokens: usize, root: &VarBuilder) -> Result<Self> {
        Self::load_stored(cfg, num_query_tokens, root, root.dtype())
    }

    /// As [`QFormer::load`], with the layers' matrices held in `storage` (f16 halves the published
    /// Q-Former's 0.43 GB; see `StoredLinear`), everything computed in the builder's dtype.
    pub fn load_stored(
        cfg: &QFormerConfig,
        num_query_tokens: usize,
        root: &VarBuilder,
        storage: DType,
    ) -> Result<Self> {
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(Error::Config(format!(
                "Q-Former hidden_size {} is not divisible by num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        if cfg.cross_attention_frequency == 0 || cfg.hidden_act != "gelu" {
            return Err(Error::Config("Q-Former needs cross_attention_frequency ≥ 1 and hidden_act gelu".into()));
        }
        let w = root.pp("qformer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(cfg, i, &w.pp("encoder.layer").pp(i), storage))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            query_tokens: root.get(&[1, num_query_tokens, cfg.hidden_size], "query_tokens")?,
            layernorm: candle_nn::layer_norm(cfg.hidden_size, cfg.layer_norm_eps, w.pp("layernorm"))?,
            layers,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &QFormerConfig {
        &self.cfg
    }

    pub fn num_query_tokens(&self) -> usize {
        self.query_tokens.dim(1).unwrap_or(0)
    }

    /// `image` [B, N, encoder_hidden_size] (after `ln_vision`) → [B, num_queries, hidden].
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let (b, _, d) = image.dims3()?;
        if d != self.cfg.encoder_hidden_size {
            return Err(Error::Config(format!(
                "Q-Former expects image tokens of width {}, got {d}",
                self.cfg.encoder_hidden_size
            )));
        }
        let q = self.query_tokens.broadcast_as((b, self.num_query_tokens(), self.cfg.hidden_size))?;
        let mut x = self.layernorm.forward(&q.contiguous()?)?;
        for layer in &self.layers {
            x = layer.forward(&x, image)?;
        }
        Ok(x)
    }
}
