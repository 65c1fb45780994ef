//! Pieces the vision transformers (EVA ViT, DINOv2) and the Q-Former share.

use candle_core::{Tensor, D};
use minigpt4_io::weights::VarBuilder;

use crate::Result;

/// A frozen linear layer whose weight is held in a storage dtype of its own (f16 halves EVA
/// ViT-g's 4 GB) and widened to the input's dtype for each call; the bias stays in the compute
/// dtype. With storage = compute dtype it is candle's `Linear`.
pub struct StoredLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl StoredLinear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// `weight` [out, in] in `storage`, `bias` [out] in the builder's dtype.
    pub fn load(w: &VarBuilder, in_dim: usize, out_dim: usize, storage: candle_core::DType) -> Result<Self> {
        let weight = w.get_with_hints_dtype((out_dim, in_dim), "weight", Default::default(), storage)?;
        Ok(Self { weight, bias: Some(w.get(out_dim, "bias")?) })
    }
}

impl candle_core::Module for StoredLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let weight = match (self.weight.dtype(), x.dtype()) {
            (a, b) if a == b => self.weight.clone(),
            (candle_core::DType::F16, candle_core::DType::F32) => minigpt4_ops::widen::f16_to_f32(&self.weight)?,
            (_, b) => self.weight.to_dtype(b)?,
        };
        candle_nn::Linear::new(weight, self.bias.clone()).forward(x)
    }
}

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

/// Where a checkpoint keeps a ViT's embeddings, under its `embeddings` prefix: the patch
/// convolution (`{patch}.weight`/`.bias`), the class token and the position table.
pub struct EmbeddingNames {
    pub patch: &'static str,
    pub cls: &'static str,
    pub pos: &'static str,
}

impl VitEmbeddings {
    pub fn new(patch: PatchEmbed, cls: Tensor, pos: Tensor, image_size: usize) -> Self {
        Self { patch, cls, pos, image_size }
    }

    /// Loads width-`hidden`, patch-`p` embeddings stored for a `stored_grid`² grid, their position
    /// table resized to `image_size` when it differs (as both reference models interpolate it).
    pub fn load(
        vb: &VarBuilder,
        names: &EmbeddingNames,
        hidden: usize,
        p: usize,
        stored_grid: usize,
        image_size: usize,
    ) -> Result<Self> {
        let conv = vb.get(&[hidden, 3, p, p], &format!("{}.weight", names.patch))?;
        let patch = PatchEmbed::from_conv(&conv, vb.get(&[hidden], &format!("{}.bias", names.patch))?)?;
        let mut pos = vb.get(&[1, stored_grid * stored_grid + 1, hidden], names.pos)?;
        if image_size / p != stored_grid {
            pos = interpolate_pos_embed(&pos, stored_grid, image_size / p)?;
        }
        Ok(Self::new(patch, vb.get(&[1, 1, hidden], names.cls)?, pos, image_size))
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

/// Resizes the patch part of a [1, 1 + g², D] position embedding to a `new_g` grid with
/// `F.interpolate(mode="bicubic", align_corners=False)` semantics; the CLS entry is kept.
pub fn interpolate_pos_embed(pos: &Tensor, g: usize, new_g: usize) -> Result<Tensor> {
    let d = pos.dim(D::Minus1)?;
    let cls = pos.narrow(1, 0, 1)?;
    let grid = pos.narrow(1, 1, g * g)?.reshape((g, g, d))?.to_dtype(candle_core::DType::F32)?;
    let data: Vec<f32> = grid.flatten_all()?.to_vec1()?;
    let scale = g as f64 / new_g as f64;
    let resized = bicubic_resize_grid(&data, g, g, d, new_g, new_g, scale, scale);
    let patch = Tensor::from_vec(resized, (1, new_g * new_g, d), pos.device())?.to_dtype(pos.dtype())?;
    Ok(Tensor::cat(&[&cls, &patch], 1)?)
}

/// Bicubic resampling of an [h, w, c] grid like PyTorch's `upsample_bicubic2d` with
/// `align_corners=False` (A = −0.75, half-pixel centres, borders clamped). `scale_*` is the
/// source step per output pixel: in/out when a size is given, 1/scale_factor when a factor is.
#[allow(clippy::too_many_arguments)]
pub fn bicubic_resize_grid(
    src: &[f32],
    h: usize,
    w: usize,
    c: usize,
    out_h: usize,
    out_w: usize,
    scale_h: f64,
    scale_w: f64,
) -> Vec<f32> {
    fn taps(out: usize, len: usize, scale: f64) -> Vec<([usize; 4], [f32; 4])> {
        const A: f64 = -0.75;
        let cubic1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
        let cubic2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
        (0..out)
            .map(|o| {
                // PyTorch computes these in the tensor's precision; f32 keeps us bit-close.
                let src = ((o as f32 + 0.5) * scale as f32 - 0.5) as f64;
                let i0 = src.floor();
                let t = src - i0;
                let wts = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
                let idx = [-1i64, 0, 1, 2].map(|k| (i0 as i64 + k).clamp(0, len as i64 - 1) as usize);
                (idx, wts.map(|x| x as f32))
            })
            .collect()
    }
    let ty = taps(out_h, h, scale_h);
    let tx = taps(out_w, w, scale_w);
    let mut out = vec![0f32; out_h * out_w * c];
    for (oy, (iy, wy)) in ty.iter().enumerate() {
        for (ox, (ix, wx)) in tx.iter().enumerate() {
            let dst = &mut out[(oy * out_w + ox) * c..][..c];
            for (a, &yy) in iy.iter().enumerate() {
                // Rows first, then columns, as PyTorch's kernel does.
                for ch in 0..c {
                    let row = (0..4).map(|b| src[(yy * w + ix[b]) * c + ch] * wx[b]).sum::<f32>();
                    dst[ch] += row * wy[a];
                }
            }
        }
    }
    out
}
