//! A depthwise convolution for channels-last activations (EfficientNet-Lite's MBConv blocks):
//! candle's grouped conv runs one convolution per channel, this kernel reads each pixel's
//! channels contiguously and writes one output row per task.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::slice;

/// TensorFlow "same" padding along one axis: (before, after) so that the output is ⌈in/stride⌉.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// `relu6(depthwise_conv(x, w) + b)` with TensorFlow "same" padding: `x` [B, H, W, C] f32 on the
/// CPU, `w` [k, k, C], `b` [C] → [B, ⌈H/s⌉, ⌈W/s⌉, C].
pub fn depthwise_conv_relu6(
    x: &Tensor,
    w_hwc: &Tensor,
    b: &Tensor,
    kernel: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(w_hwc, b, &DepthwiseOp { kernel, stride })
}

struct DepthwiseOp {
    kernel: usize,
    stride: usize,
}

impl CustomOp3 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "depthwise-conv-relu6"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, w, bias) = (slice::<f32>(xs, xl, op)?, slice::<f32>(ws, wl, op)?, slice::<f32>(bs, bl, op)?);
        let &[batch, h, wd, c] = xl.dims() else { bail!("{op}: input {:?} is not [B, H, W, C]", xl.dims()) };
        let (k, s) = (self.kernel, self.stride);
        if w.len() != k * k * c || bias.len() != c {
            bail!("{op}: weights do not match {c} channels and a {k}×{k} kernel");
        }
        let (top, _) = same_padding(h, k, s);
        let (left, _) = same_padding(wd, k, s);
        let (oh, ow) = (h.div_ceil(s), wd.div_ceil(s));
        let mut out = vec![0f32; batch * oh * ow * c];
        // One output row per task: each reads k input rows and writes ow·C contiguous values.
        out.par_chunks_mut(ow * c).enumerate().for_each(|(row, dst)| {
            let (n, oy) = (row / oh, row % oh);
            for ox in 0..ow {
                let acc = &mut dst[ox * c..(ox + 1) * c];
                acc.copy_from_slice(bias);
                for ky in 0..k {
                    let Some(iy) = (oy * s + ky).checked_sub(top).filter(|&iy| iy < h) else { continue };
                    for kx in 0..k {
                        let Some(ix) = (ox * s + kx).checked_sub(left).filter(|&ix| ix < wd) else { continue };
                        let src = &x[((n * h + iy) * wd + ix) * c..][..c];
                        let tap = &w[(ky * k + kx) * c..][..c];
                        for ((a, &v), &t) in acc.iter_mut().zip(src).zip(tap) {
                            *a += v * t;
                        }
                    }
                }
                for a in acc.iter_mut() {
                    *a = a.clamp(0.0, 6.0);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from_dims(&[batch, oh, ow, c])))
    }
}
