//! Fused CPU kernels, each with a backward pass, for the training forward (`Mode::Differentiable`):
//! RMSNorm with a frozen weight, causal softmax, RoPE and SwiGLU.
//!
//! candle's fused kernels for these drop gradients, and its differentiable forms (`rms_norm_slow`,
//! `ops::softmax`, `rope_slow`, `silu(g) * u`) build each result from 5–10 elementwise and
//! broadcast ops. Every one of those allocates a tensor that the graph keeps alive until the
//! backward pass and adds a backward node of its own. Here each op is one pass over its rows and
//! one graph node; its backward is again one pass (run without a graph node: nothing
//! differentiates twice) and returns only the gradients of activations, never of frozen weights.
//!
//! Only f32 and f64 on the CPU are fused; other devices and dtypes get candle's composite forms,
//! so the same call is correct everywhere.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType, D};
use num_traits::{Float, NumAssignOps, One, Zero};
use rayon::prelude::*;

use crate::cpu::{fused_float as fused, slice};

type Result<T> = candle_core::Result<T>;

/// The element types the kernels run on.
trait Real: WithDType + Float + NumAssignOps {}
impl<T: WithDType + Float + NumAssignOps> Real for T {}

/// RMSNorm over the last dimension, `x · rsqrt(mean(x²) + eps) · w`, for a frozen `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if !fused(x) {
        return candle_nn::ops::rms_norm_slow(x, w, eps);
    }
    x.contiguous()?.apply_op1(RmsNorm { w: w.contiguous()?, eps })
}

/// `softmax(scores / sqrt_d + causal mask)` over the last dimension. `scores` is [.., t, total]:
/// the last `t` of `total` positions attend, query i seeing keys `0..=total - t + i`.
pub fn causal_softmax(scores: &Tensor, sqrt_d: f64) -> Result<Tensor> {
    if !fused(scores) {
        let (t, total) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
        let mask = causal_mask(t, total - t, scores.device(), scores.dtype())?;
        return candle_nn::ops::softmax(&(scores / sqrt_d)?.broadcast_add(&mask)?, D::Minus1);
    }
    scores.contiguous()?.apply_op1(CausalSoftmax { sqrt_d })
}

/// Rotary embedding of `x` [.., t, head_dim] by the angles whose `cos`/`sin` are [t, head_dim/2]:
/// pairs `(i, i + head_dim/2)` (Hugging Face) or, `interleaved`, `(2i, 2i + 1)` (GGUF).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    if !fused(x) {
        use candle_nn::rotary_emb as r;
        return if interleaved { r::rope_i_slow(x, cos, sin) } else { r::rope_slow(x, cos, sin) };
    }
    let op = Rope { cos: cos.contiguous()?, sin: sin.contiguous()?, interleaved, inverse: false };
    x.contiguous()?.apply_op1(op)
}

/// `silu(gate) · up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !fused(gate) {
        return candle_nn::ops::silu(gate)? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// Runs `$body` with `$t` bound to the element type of `$s` (f32 or f64).
macro_rules! with_float {
    ($s:expr, $op:expr, $t:ident => $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            s => bail!("{}: dtype {:?} is not fused", $op, s.dtype()),
        }
    };
}

/// A frozen tensor's elements; `T` is the activations' type, which the weights share.
fn frozen<T: WithDType>(t: &Tensor, op: &str) -> candle_core::Result<Vec<T>> {
    if t.dtype() != T::DTYPE {
        bail!("{op}: weights are {:?}, activations {:?}", t.dtype(), T::DTYPE);
    }
    t.flatten_all()?.to_vec1::<T>()
}

fn same_shape(a: &Layout, b: &Layout, op: &str) -> candle_core::Result<()> {
    if a.dims() != b.dims() {
        bail!("{op}: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    Ok(())
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

/// Rows shorter than this are handed to rayon in batches, so scheduling stays small next to work.
const MIN_PAR_ELEMS: usize = 16 * 1024;

/// `f(row index, output row, input rows…)` for every row of width `n`, spread over rayon's pool
/// (the one candle's matmuls use, so `RAYON_NUM_THREADS` bounds both).
fn map_rows<T: Real, const K: usize>(
    inputs: [&[T]; K],
    n: usize,
    f: impl Fn(usize, &mut [T], [&[T]; K]) + Sync,
) -> Vec<T> {
    let len = inputs[0].len();
    let mut out = vec![T::zero(); len];
    let rows_per_task = MIN_PAR_ELEMS.div_ceil(n.max(1)).max(1);
    out.par_chunks_mut(n * rows_per_task).enumerate().for_each(|(task, chunk)| {
        for (k, row) in chunk.chunks_mut(n).enumerate() {
            let r = task * rows_per_task + k;
            f(r, row, inputs.map(|x| &x[r * n..(r + 1) * n]));
        }
    });
    out
}

fn storage<T: WithDType>(v: Vec<T>, l: &Layout) -> (CpuStorage, Shape) {
    (T::to_cpu_storage_owned(v), l.shape().clone())
}

fn inv_rms<T: Real>(x: &[T], eps: T) -> T {
    let ss = x.iter().fold(T::zero(), |acc, &v| acc + v * v);
    (ss / T::from_f64(x.len() as f64) + eps).sqrt().recip()
}

struct RmsNorm {
    w: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn weights<T: Real>(&self, n: usize) -> candle_core::Result<(Vec<T>, T)> {
        let w = frozen::<T>(&self.w, "rms-norm")?;
        if w.len() != n {
            bail!("rms-norm: weight has {} entries, rows have {n}", w.len());
        }
        Ok((w, T::from_f64(f64::from(self.eps))))
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = last_dim(l);
        with_float!(s, self.name(), T => {
            let (w, eps) = self.weights::<T>(n)?;
            let y = map_rows([slice::<T>(s, l, self.name())?], n, |_, y, [x]| {
                let r = inv_rms(x, eps);
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(&w) {
                    *y = x * r * w;
                }
            });
            Ok(storage(y, l))
        })
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &RmsNormGrad(self))?))
    }
}

/// (x, dy) → dx = r · (g − x̂ · mean(g ⊙ x̂)) with g = dy ⊙ w, x̂ = x · r, r = rsqrt(mean(x²) + eps).
struct RmsNormGrad<'a>(&'a RmsNorm);

impl CustomOp2 for RmsNormGrad<'_> {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(lx, lg, self.name())?;
        let n = last_dim(lx);
        with_float!(sx, self.name(), T => {
            let (w, eps) = self.0.weights::<T>(n)?;
            let inputs = [slice::<T>(sx, lx, self.name())?, slice::<T>(sg, lg, self.name())?];
            let dx = map_rows(inputs, n, |_, dx, [x, dy]| {
                let r = inv_rms(x, eps);
                let dot = x.iter().zip(dy).zip(&w).fold(T::zero(), |acc, ((&x, &dy), &w)| acc + dy * w * x);
                let c = dot * r * r / T::from_f64(n as f64);
                for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(&w) {
                    *dx = r * (dy * w - x * c);
                }
            });
            Ok(storage(dx, lx))
        })
    }
}

struct CausalSoftmax {
    sqrt_d: f64,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let (t, total) = match dims {
            [.., t, total] if t <= total => (*t, *total),
            _ => bail!("{}: scores {dims:?} are not [.., queries, keys ≥ queries]", self.name()),
        };
        with_float!(s, self.name(), T => {
            let sqrt_d = T::from_f64(self.sqrt_d);
            let y = map_rows([slice::<T>(s, l, self.name())?], total, |r, y, [x]| {
                // Masked keys keep the zero `map_rows` starts from.
                let seen = total - t + r % t + 1;
                let (y, x) = (&mut y[..seen], &x[..seen]);
                let max = x.iter().fold(T::neg_infinity(), |m, &v| m.max(v / sqrt_d));
                let mut sum = T::zero();
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = (x / sqrt_d - max).exp();
                    sum += *y;
                }
                let inv = sum.recip();
                y.iter_mut().for_each(|y| *y *= inv);
            });
            Ok(storage(y, l))
        })
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxGrad { sqrt_d: self.sqrt_d })?))
    }
}

/// (y, dy) → dx = y ⊙ (dy − Σ dy ⊙ y) / sqrt_d; masked keys have y = 0, hence dx = 0.
struct SoftmaxGrad {
    sqrt_d: f64,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        sy: &CpuStorage,
        ly: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(ly, lg, self.name())?;
        with_float!(sy, self.name(), T => {
            let sqrt_d = T::from_f64(self.sqrt_d);
            let inputs = [slice::<T>(sy, ly, self.name())?, slice::<T>(sg, lg, self.name())?];
            let dx = map_rows(inputs, last_dim(ly), |_, dx, [y, dy]| {
                let dot = y.iter().zip(dy).fold(T::zero(), |acc, (&y, &dy)| acc + y * dy);
                for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                    *dx = y * (dy - dot) / sqrt_d;
                }
            });
            Ok(storage(dx, ly))
        })
    }
}

/// Rotation of pairs of each row by the row's position's angles. A rotation's transpose is the
/// rotation by −θ, so the backward pass is this op with `inverse` set, on the output gradient.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let (t, hd) = match dims {
            [.., t, hd] if hd % 2 == 0 => (*t, *hd),
            _ => bail!("{}: input {dims:?} is not [.., positions, even head_dim]", self.name()),
        };
        let half = hd / 2;
        if self.cos.dims() != [t, half] || self.sin.dims() != [t, half] {
            bail!("{}: tables {:?} do not match input {dims:?}", self.name(), self.cos.dims());
        }
        with_float!(s, self.name(), T => {
            let cos = frozen::<T>(&self.cos, self.name())?;
            let mut sin = frozen::<T>(&self.sin, self.name())?;
            if self.inverse {
                sin.iter_mut().for_each(|s| *s = -*s);
            }
            // (first, second) element of pair i within a row.
            let pair = |i: usize| if self.interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
            let y = map_rows([slice::<T>(s, l, self.name())?], hd, |r, y, [x]| {
                let p = r % t;
                let (cos, sin) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
                for i in 0..half {
                    let (a, b) = pair(i);
                    y[a] = x[a] * cos[i] - x[b] * sin[i];
                    y[b] = x[b] * cos[i] + x[a] * sin[i];
                }
            });
            Ok(storage(y, l))
        })
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inverse = Rope { cos: self.cos.clone(), sin: self.sin.clone(), inverse: !self.inverse, ..*self };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

fn sigmoid<T: Real>(x: T) -> T {
    (T::one() + (-x).exp()).recip()
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        su: &CpuStorage,
        lu: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(lg, lu, self.name())?;
        with_float!(sg, self.name(), T => {
            let inputs = [slice::<T>(sg, lg, self.name())?, slice::<T>(su, lu, self.name())?];
            let y = map_rows(inputs, last_dim(lg), |_, y, [g, u]| {
                for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                    *y = g * sigmoid(g) * u;
                }
            });
            Ok(storage(y, lg))
        })
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dg = g.apply_op3_no_bwd(u, &dy, &SwiGluGrad::Gate)?;
        let du = g.apply_op3_no_bwd(u, &dy, &SwiGluGrad::Up)?;
        Ok((Some(dg), Some(du)))
    }
}

/// (g, u, dy) → one of the two input gradients: dg = dy · u · σ(g)(1 + g(1 − σ(g))), du = dy · silu(g).
enum SwiGluGrad {
    Gate,
    Up,
}

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "fused-swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        su: &CpuStorage,
        lu: &Layout,
        sd: &CpuStorage,
        ld: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(lg, lu, self.name())?;
        same_shape(lg, ld, self.name())?;
        with_float!(sg, self.name(), T => {
            let inputs =
                [slice::<T>(sg, lg, self.name())?, slice::<T>(su, lu, self.name())?, slice::<T>(sd, ld, self.name())?];
            let d = map_rows(inputs, last_dim(lg), |_, d, [g, u, dy]| {
                for (((d, &g), &u), &dy) in d.iter_mut().zip(g).zip(u).zip(dy) {
                    let s = sigmoid(g);
                    *d = match self {
                        SwiGluGrad::Gate => dy * u * s * (T::one() + g * (T::one() - s)),
                        SwiGluGrad::Up => dy * g * s,
                    };
                }
            });
            Ok(storage(d, lg))
        })
    }
}

/// Additive mask [t, pos + t]: query i (at absolute position pos + i) sees keys 0..=pos + i.
pub fn causal_mask(t: usize, pos: usize, device: &candle_core::Device, dtype: DType) -> Result<Tensor> {
    let total = pos + t;
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (t, total), device)?.to_dtype(dtype)
}

/// `x · wᵀ` for a frozen `w` [out, in] whose backward gives only `x`'s gradient (see
/// [`FrozenMatmul`]).
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenMatmul { wt: w.t()? })
}

/// `x · wᵀ` for a frozen `w`. candle's matmul backward always computes the gradient of both
/// operands; for a frozen weight that is a weight-sized matmul and tensor per layer thrown away
/// (about a third of a training step, and 28 GB for a 7B model). This op's backward only gives
/// the input's gradient.
pub struct FrozenMatmul {
    /// wᵀ as a strided view [in, out].
    wt: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (k, n) = self.wt.dims2()?;
        let dims = layout.dims();
        if dims.last() != Some(&k) || !layout.is_contiguous() {
            candle_core::bail!("frozen-matmul: input {dims:?} is not a contiguous [.., {k}]");
        }
        let m = layout.shape().elem_count() / k;
        let rows = candle_core::Layout::contiguous_with_offset((m, k), layout.start_offset());
        let (w, wl) = self.wt.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w else { candle_core::bail!("frozen-matmul: weight is not on the CPU") };
        let out = x.matmul(w, (1, m, n, k), &rows, wl)?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank checked above") = n;
        Ok((out, shape.into()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.broadcast_matmul(&self.wt.t()?)?))
    }
}

#[cfg(test)]
mod tests {
    //! Each fused op against candle's composite form on random inputs: the forward values and
    //! the gradient of `sum(y ⊙ r)` for a random `r`, so every output element's gradient counts.

    use super::*;
    use candle_core::{Device, Var};

    /// Largest |a − b| over the largest |b|: relative to the tensor's scale, so entries near zero
    /// (masked probabilities, cancelling rotations) do not inflate it.
    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap();
        let scale = b.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap();
        diff.to_scalar::<f64>().unwrap() / scale.to_scalar::<f64>().unwrap().max(1e-30)
    }

    fn randn(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    /// f32 rounding, accumulated over rows of a few hundred; f64 is near exact.
    fn tolerance(dtype: DType) -> f64 {
        if dtype == DType::F32 {
            2e-6
        } else {
            1e-13
        }
    }

    /// Compares `fused` and `reference` (functions of the same inputs) in value and in the
    /// gradient of every input.
    fn check(
        name: &str,
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
    ) {
        let dtype = inputs[0].dtype();
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (y, y_ref) = (fused(&ts), reference(&ts));
        assert_eq!(y.dims(), y_ref.dims(), "{name}: shape");
        let err = rel_err(&y, &y_ref);
        assert!(err < tolerance(dtype), "{name} {dtype:?}: forward differs by {err:e}");
        let r = randn(y.dims(), dtype);
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, t) in ts.iter().enumerate() {
            let err = rel_err(g.get(t).expect("fused gradient"), g_ref.get(t).expect("reference gradient"));
            assert!(err < tolerance(dtype), "{name} {dtype:?}: gradient of input {i} differs by {err:e}");
        }
    }

    const DTYPES: [DType; 2] = [DType::F32, DType::F64];

    #[test]
    fn rms_norm_matches_composite() {
        for dtype in DTYPES {
            let w = randn(&[96], dtype);
            let eps = 1e-5;
            check(
                "rms-norm",
                &[randn(&[2, 7, 96], dtype)],
                |x| rms_norm(&x[0], &w, eps).unwrap(),
                |x| candle_nn::ops::rms_norm_slow(&x[0], &w, eps).unwrap(),
            );
        }
    }

    #[test]
    fn causal_softmax_matches_composite() {
        for dtype in DTYPES {
            // 5 queries after 3 cached positions, and a square (prefill) block.
            for (t, total) in [(5, 8), (9, 9)] {
                let sqrt_d = 8f64;
                let mask = causal_mask(t, total - t, &Device::Cpu, dtype).unwrap();
                check(
                    "causal-softmax",
                    &[(randn(&[2, 3, t, total], dtype) * 4.0).unwrap()],
                    |x| causal_softmax(&x[0], sqrt_d).unwrap(),
                    |x| {
                        let s = (&x[0] / sqrt_d).unwrap().broadcast_add(&mask).unwrap();
                        candle_nn::ops::softmax(&s, D::Minus1).unwrap()
                    },
                );
            }
        }
    }

    #[test]
    fn rope_matches_composite() {
        for dtype in DTYPES {
            let (t, hd) = (6, 16);
            let angles = (Tensor::arange(0f32, (t * hd / 2) as f32, &Device::Cpu).unwrap() * 0.37).unwrap();
            let angles = angles.reshape((t, hd / 2)).unwrap().to_dtype(dtype).unwrap();
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            for interleaved in [false, true] {
                use candle_nn::rotary_emb as r;
                check(
                    if interleaved { "rope-i" } else { "rope" },
                    &[randn(&[2, 3, t, hd], dtype)],
                    |x| rope(&x[0], &cos, &sin, interleaved).unwrap(),
                    |x| {
                        if interleaved { r::rope_i_slow(&x[0], &cos, &sin) } else { r::rope_slow(&x[0], &cos, &sin) }
                            .unwrap()
                    },
                );
            }
        }
    }

    #[test]
    fn swiglu_matches_composite() {
        for dtype in DTYPES {
            check(
                "swiglu",
                &[(randn(&[3, 5, 40], dtype) * 3.0).unwrap(), randn(&[3, 5, 40], dtype)],
                |x| swiglu(&x[0], &x[1]).unwrap(),
                |x| (candle_nn::ops::silu(&x[0]).unwrap() * &x[1]).unwrap(),
            );
        }
    }

    #[test]
    fn other_dtypes_fall_back_to_composite() {
        let x = randn(&[2, 4, 8], DType::BF16);
        let w = randn(&[8], DType::BF16);
        let y = rms_norm(&x, &w, 1e-5).unwrap();
        let y_ref = candle_nn::ops::rms_norm_slow(&x, &w, 1e-5).unwrap();
        assert_eq!(rel_err(&y.to_dtype(DType::F32).unwrap(), &y_ref.to_dtype(DType::F32).unwrap()), 0.0);
    }
}
