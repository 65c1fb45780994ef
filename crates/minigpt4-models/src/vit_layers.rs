//! Pieces the vision transformers (EVA ViT, DINOv2) and the Q-Former share.

use candle_core::Tensor;

use crate::Result;

/// A stride-p convolution over non-overlapping patches, run as a matmul (much faster on CPU
/// than candle's im2col convolution, and the same arithmetic).
pub struct PatchEmbed {
    /// [3·p·p, hidden]
    weight: Tensor,
    bias: Tensor,
    patch: usize,
}

impl PatchEmbed {
    /// From a `Conv2d(3 → hidden, kernel p, stride p)`'s weight [hidden, 3, p, p] and bias.
    pub fn from_conv(weight: &Tensor, bias: Tensor) -> Result<Self> {
        let (d, c, p, _) = weight.dims4()?;
        Ok(Self { weight: weight.reshape((d, c * p * p))?.t()?.contiguous()?, bias, patch: p })
    }

    pub fn dtype(&self) -> candle_core::DType {
        self.weight.dtype()
    }

    /// [B, 3, S, S] → [B, (S/p)², hidden], patches in raster order.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, s, _) = pixels.dims4()?;
        let (p, g) = (self.patch, s / self.patch);
        let patches = pixels
            .to_dtype(self.weight.dtype())?
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, g * g, c * p * p))?;
        Ok(patches.broadcast_matmul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// A ViT's input tokens: patch embeddings with the CLS token in front and position embeddings
/// (already sized for `image_size`) added.
pub struct VitEmbeddings {
    patch: PatchEmbed,
    /// [1, 1, hidden]
    cls: Tensor,
    /// [1, 1 + (image_size/p)², hidden]
    pos: Tensor,
    image_size: usize,
}

impl VitEmbeddings {
    pub fn new(patch: PatchEmbed, cls: Tensor, pos: Tensor, image_size: usize) -> Self {
        Self { patch, cls, pos, image_size }
    }

    pub fn dtype(&self) -> candle_core::DType {
        self.patch.dtype()
    }

    /// Tokens per image, CLS included.
    pub fn num_tokens(&self) -> usize {
        self.pos.dim(1).unwrap_or(0)
    }

    /// [B, 3, S, S] → [B, 1 + (S/p)², hidden]; `model` names the encoder in the shape error.
    pub fn forward(&self, pixels: &Tensor, model: &str) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        if c != 3 || h != self.image_size || w != self.image_size {
            return Err(crate::Error::Config(format!(
                "{model} expects [B, 3, {s}, {s}] pixels, got {:?}",
                pixels.dims(),
                s = self.image_size
            )));
        }
        let x = self.patch.forward(pixels)?;
        let cls = self.cls.broadcast_as((b, 1, self.cls.dim(2)?))?.to_dtype(x.dtype())?;
        Ok(Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos)?)
    }
}

pub use minigpt4_ops::vit_ops::multi_head_attention;
