//! Fused CPU kernels for ViT inference (the DINOv2 encoder's blocks): a dense layer with its
//! bias and, in the same op, an exact-erf GELU or a residual add; and multi-head attention
//! straight from the packed q|k|v projection.
//!
//! candle runs a block as ~20 ops, each a full pass over a [tokens, width] tensor with its own
//! allocation and thread hand-off: the bias and residual adds, the layer-scale multiply, the
//! head split and merge copies, the scaled softmax, and a scalar libm `erff` per element of the
//! 257×1536 MLP activations. Here the bias (and residual) are written into the output before
//! the gemm accumulates onto them, the GELU runs on the rows the gemm just wrote, and attention
//! reads each head's q, k and v in place (strided gemm) and writes its context into its columns
//! of the output, its scores never leaving a per-thread scratch block.
//!
//! Only f32 on the CPU is fused; other devices and dtypes get candle's composite forms, so the
//! same call is correct everywhere. No backward pass: the vision encoder is frozen.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::{fused_f32 as fused, slice};

type Result<T> = candle_core::Result<T>;

/// What a [`Dense`] layer does to `x·W + b` before returning it.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    None,
    /// `gelu(y)` with the exact erf.
    Gelu,
    /// `r + y`, for a residual stream `r` shaped like the output.
    Residual(&'a Tensor),
}

/// A linear layer stored as `W` [in, out] (transposed once at load, so the gemm reads it row
/// by row) and `b` [out].
pub struct Dense {
    w: Tensor,
    b: Tensor,
}

impl Dense {
    /// From PyTorch's `weight` [out, in] and `bias` [out]; `scale` [out] (a layer-scale γ that
    /// follows the layer) is folded into both, so `γ ⊙ (x·Wᵀ + b)` costs nothing at run time.
    pub fn new(weight: &Tensor, bias: &Tensor, scale: Option<&Tensor>) -> Result<Self> {
        let (mut w, mut b) = (weight.t()?, bias.clone());
        if let Some(g) = scale {
            w = w.broadcast_mul(g)?;
            b = (b * g)?;
        }
        Ok(Self { w: w.contiguous()?, b: b.contiguous()? })
    }

    /// `x` [.., in] → [.., out].
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        if !fused(x) || !fused(&self.w) {
            let y = x.broadcast_matmul(&self.w)?.broadcast_add(&self.b)?;
            return Ok(match epilogue {
                Epilogue::None => y,
                Epilogue::Gelu => y.gelu_erf()?,
                Epilogue::Residual(r) => (r + y)?,
            });
        }
        let residual = match epilogue {
            Epilogue::Residual(r) => Some(r.contiguous()?),
            _ => None,
        };
        let op =
            DenseOp { w: &self.w, b: &self.b, gelu: matches!(epilogue, Epilogue::Gelu), residual: residual.as_ref() };
        x.contiguous()?.apply_op1_no_bwd(&op)
    }
}

/// Scaled dot-product attention over `heads` heads of a packed projection `qkv` [B, N, 3·D]
/// (q, k, v side by side in the last dim) → [B, N, D]; scores are `q·kᵀ / √(D/heads)`.
pub fn attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let d = qkv.dim(2)? / 3;
    if !fused(qkv) {
        let part = |i: usize| qkv.narrow(2, i * d, d);
        return multi_head_attention(&part(0)?, &part(1)?, &part(2)?, heads);
    }
    qkv.contiguous()?.apply_op1_no_bwd(&AttentionOp { heads })
}

/// A contiguous CPU f32 tensor's elements, read under `guard` (from `storage_and_layout`).
fn held<'a>(guard: &'a Storage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let Storage::Cpu(s) = guard else { bail!("{op}: an operand is not on the CPU") };
    slice(s, l, op)
}

/// `C ← [C +] alpha·A·B` for row-major-or-strided `A` [m, k] and `B` [k, n] (row stride, column
/// stride each) into `C` [m, n] with row stride `c_rs`.
///
/// # Safety
/// The pointers must cover every element the sizes and strides reach, and `C` must not alias
/// `A` or `B`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    c_rs: usize,
    accumulate: bool,
    (a, a_rs, a_cs): (*const f32, usize, usize),
    (b, b_rs, b_cs): (*const f32, usize, usize),
    alpha: f32,
    par: Parallelism,
) {
    // gemm's dst = α·dst + β·lhs·rhs: its α is the accumulate switch, its β our scale.
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        c_rs as isize,
        accumulate,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        1.0,
        alpha,
        false,
        false,
        false,
        par,
    );
}

/// About the rows of one dense-layer task (see `DenseOp::cpu_fwd`).
const BAND_ROWS: usize = 512;

struct DenseOp<'a> {
    w: &'a Tensor,
    b: &'a Tensor,
    gelu: bool,
    residual: Option<&'a Tensor>,
}

impl CustomOp1 for DenseOp<'_> {
    fn name(&self) -> &'static str {
        "vit-dense"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (k, n) = self.w.dims2()?;
        let dims = l.dims();
        if dims.last() != Some(&k) {
            bail!("{op}: input {dims:?} does not end in {k}");
        }
        let x = slice::<f32>(s, l, op)?;
        let m = x.len() / k;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank checked above") = n;
        if m * n == 0 {
            return Ok((CpuStorage::F32(vec![]), shape.into()));
        }
        let (wg, wl) = self.w.storage_and_layout();
        let w = held(&wg, wl, op)?;
        let (bg, bl) = self.b.storage_and_layout();
        let b = held(&bg, bl, op)?;
        let rg = self.residual.map(|r| r.storage_and_layout());
        let r = match &rg {
            Some((g, rl)) => {
                if rl.shape().elem_count() != m * n {
                    bail!("{op}: residual {:?} does not match the output [{m}, {n}]", rl.dims());
                }
                Some(held(g, rl, op)?)
            }
            None => None,
        };

        // Each task owns a band of rows: it writes the bias (plus the residual) there, runs a
        // single-threaded gemm accumulating onto it, and applies the GELU while the band is
        // still in cache. Bands, not gemm's own threading: no synchronisation inside the gemm,
        // and a few bands per thread let rayon rebalance when another process takes a core.
        let threads = rayon::current_num_threads();
        let bands = threads * (m as f64 / (threads * BAND_ROWS) as f64).round().max(1.0) as usize;
        let rows_per_band = m.div_ceil(bands);
        // Allocated without zeroing: every element is written before anything reads it.
        let mut y = Vec::<f32>::with_capacity(m * n);
        y.spare_capacity_mut().par_chunks_mut(rows_per_band * n).enumerate().for_each(|(band, y)| {
            let (r0, rows) = (band * rows_per_band, y.len() / n);
            for (i, row) in y.chunks_exact_mut(n).enumerate() {
                match r {
                    Some(r) => {
                        let at = (r0 + i) * n;
                        row.iter_mut().zip(&r[at..at + n]).zip(b).for_each(|((y, r), b)| _ = y.write(r + b));
                    }
                    None => row.iter_mut().zip(b).for_each(|(y, &b)| _ = y.write(b)),
                }
            }
            // SAFETY: every element of the band was written just above.
            let y = unsafe { &mut *(y as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            let x = &x[r0 * k..(r0 + rows) * k];
            // SAFETY: x is [rows, k], w [k, n] and y [rows, n], all contiguous and distinct.
            unsafe {
                gemm_f32(
                    (rows, n, k),
                    y.as_mut_ptr(),
                    n,
                    true,
                    (x.as_ptr(), k, 1),
                    (w.as_ptr(), n, 1),
                    1.0,
                    Parallelism::None,
                )
            };
            if self.gelu {
                gelu_in_place(y);
            }
        });
        // SAFETY: the bands cover all m·n elements, each written above.
        unsafe { y.set_len(m * n) };
        Ok((CpuStorage::F32(y), shape.into()))
    }
}

/// Most query rows per attention task (the blocks of a head are evened out): a [64, N] score
/// block stays in L2 next to the head's k and v.
const QUERY_BLOCK: usize = 64;

struct AttentionOp {
    heads: usize,
}

/// The output's base pointer, shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each attention task writes only its own (image, query block, head) rectangle.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// (A method, so that closures capture the whole `Sync` wrapper, not its raw pointer.)
    ///
    /// # Safety
    /// `offset` must stay inside the output.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "vit-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (bsz, n, d3) = l.shape().dims3()?;
        let (d, heads) = (d3 / 3, self.heads);
        if d3 % 3 != 0 || heads == 0 || d % heads != 0 {
            bail!("{op}: packed width {d3} does not split into q, k, v of {heads} heads");
        }
        let hd = d / heads;
        let qkv = slice::<f32>(s, l, op)?;
        if bsz * n * d == 0 {
            return Ok((CpuStorage::F32(vec![]), (bsz, n, d).into()));
        }
        // Allocated without zeroing: the tasks' gemms write every element (they do not read it).
        let mut out = Vec::<f32>::with_capacity(bsz * n * d);
        let ptr = OutPtr(out.as_mut_ptr());
        let blocks = n.div_ceil(QUERY_BLOCK);
        let block_rows = n.div_ceil(blocks);
        let scale = 1.0 / (hd as f32).sqrt();
        (0..bsz * heads * blocks).into_par_iter().for_each_init(
            || vec![0f32; block_rows * n],
            |scores, task| {
                let (image, head, block) = (task / (heads * blocks), task / blocks % heads, task % blocks);
                let (r0, rows) = (block * block_rows, block_rows.min(n - block * block_rows));
                let base = &qkv[image * n * d3..(image + 1) * n * d3];
                let (q, k, v) = (&base[r0 * d3 + head * hd..], &base[d + head * hd..], &base[2 * d + head * hd..]);
                // SAFETY: q, k and v are rows of `base` d3 apart (kᵀ read column-wise), the scores
                // [rows, n] fit the scratch, and this task's output rectangle (rows r0.., columns
                // head·hd..+hd) is written by no other task.
                unsafe {
                    gemm_f32(
                        (rows, n, hd),
                        scores.as_mut_ptr(),
                        n,
                        false,
                        (q.as_ptr(), d3, 1),
                        (k.as_ptr(), 1, d3),
                        scale,
                        Parallelism::None,
                    );
                    softmax_rows(&mut scores[..rows * n], n);
                    let o = ptr.at((image * n + r0) * d + head * hd);
                    gemm_f32(
                        (rows, hd, n),
                        o,
                        d,
                        false,
                        (scores.as_ptr(), n, 1),
                        (v.as_ptr(), d3, 1),
                        1.0,
                        Parallelism::None,
                    );
                }
            },
        );
        // SAFETY: the tasks cover every (image, row, head) rectangle, i.e. all bsz·n·d elements.
        unsafe { out.set_len(bsz * n * d) };
        Ok((CpuStorage::F32(out), (bsz, n, d).into()))
    }
}

// ---------------------------------------------------------------- vectorisable math
//
// The crate is built for baseline x86-64, where LLVM vectorises with SSE2 only, calls libm for
// `mul_add` and `floor`, and candle's `gelu_erf` is a scalar `erff` per element. The kernels
// below are branch-free loops over slices, compiled a second time with AVX2 and FMA enabled and
// picked at run time when the CPU has them.

/// `a·b + c`, fused where the instruction exists (a libm call otherwise, so only then).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// erf(x) in f32 as onnxruntime's MLAS computes it (so the GELU matches the peer's rounding as
/// well as the function): a = |x|, `a + a·P(a²)` below 0.921875, `1 − e^−(a + a·Q(a))` above,
/// 1 from 3.925 on (erf = 1 within f32 rounding there); within 1e-7 of the true value. Both
/// branches are computed and one picked, so the loop stays branch-free.
#[inline(always)]
fn erf<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs().min(3.925);
    let horner = |cs: &[f32], r: f32| cs[1..].iter().fold(cs[0], |p, &c| madd::<FMA>(p, r, c));
    let small = madd::<FMA>(
        horner(&[-5.991_05e-4, 4.993_396e-3, -2.676_673_4e-2, 0.112_818_03, -0.376_124_86, 0.128_379_15], a * a),
        a,
        a,
    );
    let big = madd::<FMA>(
        horner(
            &[1.729_489_3e-5, -3.832_087e-4, 3.883_934_4e-3, -2.425_456e-2, 0.106_777_85, 0.634_846_7, 0.128_717_51],
            a,
        ),
        a,
        a,
    );
    let big = 1.0 - exp_nonpositive::<FMA>(-big);
    (if a < 0.921_875 { small } else { big }).copysign(x)
}

/// e^x for x ≤ 0 (softmax after subtracting the row max): 2ⁿ·e^r with n = round(x/ln 2) and
/// Cephes' degree-6 polynomial on |r| ≤ ln2/2, ~1 ulp. x is clamped to [−87, 0] (e^−87 ≈ 1.6e−38
/// is as good as 0 next to the row max's 1; NaN becomes −87), which keeps n in [−126, 0].
#[inline(always)]
fn exp_nonpositive<const FMA: bool>(x: f32) -> f32 {
    #[allow(clippy::manual_clamp)] // `clamp` would keep a NaN
    let x = x.max(-87.0).min(0.0);
    let n = madd::<FMA>(x, std::f32::consts::LOG2_E, 0.5).floor();
    let r = madd::<FMA>(n, -0.693_359_4, x);
    let r = madd::<FMA>(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4;
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = madd::<FMA>(p, r, c);
    }
    let e = madd::<FMA>(p, r * r, r) + 1.0;
    // SAFETY: n is a whole number in [−126, 0] (see above). `as i32` would also be correct, but
    // its NaN and overflow handling keeps LLVM from vectorising the conversion.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    e * f32::from_bits(((n + 127) << 23) as u32)
}

#[inline(always)]
fn gelu_kernel<const FMA: bool>(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf::<FMA>(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Softmax of each row (width `n`) in place.
#[inline(always)]
fn softmax_kernel<const FMA: bool>(x: &mut [f32], n: usize) {
    const L: usize = 8;
    for row in x.chunks_exact_mut(n) {
        // Eight running maxima/sums, so the reductions vectorise without reassociating floats.
        let mut acc = [f32::NEG_INFINITY; L];
        let mut chunks = row.chunks_exact(L);
        for c in &mut chunks {
            for i in 0..L {
                acc[i] = acc[i].max(c[i]);
            }
        }
        let max =
            chunks.remainder().iter().fold(acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| a.max(b));
        for v in row.iter_mut() {
            *v = exp_nonpositive::<FMA>(*v - max);
        }
        let mut acc = [0f32; L];
        let mut chunks = row.chunks_exact(L);
        for c in &mut chunks {
            for i in 0..L {
                acc[i] += c[i];
            }
        }
        let inv = 1.0 / (acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>());
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Defines `$name`, running `$kernel::<FMA>` compiled for AVX2 + FMA when the CPU has them.
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => $kernel:ident) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $kernel::<true>($($arg),*)
                }
                if avx2_fma() {
                    // SAFETY: the CPU has both features (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $kernel::<false>($($arg),*)
        }
    };
}

dispatch!(
    /// `x ← gelu(x) = x·(1 + erf(x/√2))/2`.
    fn gelu_in_place(x: &mut [f32]) => gelu_kernel
);
dispatch!(
    /// Softmax of every row of width `n` of `x`, in place.
    fn softmax_rows(x: &mut [f32], n: usize) => softmax_kernel
);

/// Scaled dot-product attention with heads split from and merged back into the last dim:
/// q [B, N, D], k and v [B, M, D] → [B, N, D]; scores are `q·kᵀ / √(D/heads)`.
pub fn multi_head_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, d) = q.dims3()?;
    let m = k.dim(1)?;
    let hd = d / heads;
    let split =
        |t: &Tensor, len: usize| -> Result<Tensor> { t.reshape((b, len, heads, hd))?.transpose(1, 2)?.contiguous() };
    let (q, k, v) = (split(q, n)?, split(k, m)?, split(v, m)?);
    let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
    let ctx = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
    ctx.transpose(1, 2)?.reshape((b, n, d))
}

#[cfg(test)]
mod tests {
    //! Each fused op against candle's composite form on random inputs (max |fused − composite|
    //! over max |composite|), and the erf/exp approximations against f64 references.

    use super::*;
    use candle_core::{DType, Device, D};

    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        diff / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-30)
    }

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    /// f32 rounding of sums over a few hundred terms.
    const TOL: f32 = 2e-6;

    #[test]
    fn dense_matches_composite() {
        let (weight, bias, gamma) = (randn(&[48, 40]), randn(&[48]), randn(&[48]));
        let plain = Dense::new(&weight, &bias, None).unwrap();
        let scaled = Dense::new(&weight, &bias, Some(&gamma)).unwrap();
        // One band per thread, and (1203 rows) several bands of uneven length.
        for shape in [[2, 37, 40], [3, 401, 40]] {
            let x = (randn(&shape) * 2.0).unwrap();
            let r = randn(&[shape[0], shape[1], 48]);
            let y = x.broadcast_matmul(&weight.t().unwrap()).unwrap().broadcast_add(&bias).unwrap();
            let cases = [
                ("none", plain.forward(&x, Epilogue::None).unwrap(), y.clone()),
                ("gelu", plain.forward(&x, Epilogue::Gelu).unwrap(), y.gelu_erf().unwrap()),
                (
                    "layer-scale + residual",
                    scaled.forward(&x, Epilogue::Residual(&r)).unwrap(),
                    (&r + y.broadcast_mul(&gamma).unwrap()).unwrap(),
                ),
            ];
            for (name, got, want) in cases {
                assert_eq!(got.dims(), want.dims(), "{name}");
                let err = rel_err(&got, &want);
                assert!(err < TOL, "dense ({name}, {shape:?}) differs by {err:e}");
            }
        }
    }

    #[test]
    fn attention_matches_composite() {
        // 70 tokens: one full query block and a partial one; two images.
        let (heads, d) = (4, 32);
        let qkv = (randn(&[2, 70, 3 * d]) * 3.0).unwrap();
        let got = attention(&qkv, heads).unwrap();
        let part = |i: usize| qkv.narrow(D::Minus1, i * d, d).unwrap();
        let want = multi_head_attention(&part(0), &part(1), &part(2), heads).unwrap();
        assert_eq!(got.dims(), &[2, 70, d]);
        let err = rel_err(&got, &want);
        assert!(err < TOL, "attention differs by {err:e}");
    }

    #[test]
    fn other_dtypes_fall_back_to_composite() {
        let (weight, bias) = (randn(&[8, 6]).to_dtype(DType::F64).unwrap(), randn(&[8]).to_dtype(DType::F64).unwrap());
        let x = randn(&[3, 6]).to_dtype(DType::F64).unwrap();
        let got = Dense::new(&weight, &bias, None).unwrap().forward(&x, Epilogue::Gelu).unwrap();
        let want = x.matmul(&weight.t().unwrap()).unwrap().broadcast_add(&bias).unwrap().gelu_erf().unwrap();
        // The same arithmetic up to the gemm's summation order (w is stored transposed).
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(diff < 1e-12, "f64 fallback differs by {diff:e}");
    }

    /// erf within 1e-7 of the f64 erf (candle's) on both code paths, and the GELU built on it.
    #[test]
    fn erf_and_gelu_are_accurate() {
        let xs: Vec<f32> = (-60_000..=60_000).map(|i| i as f32 * 1e-4).collect();
        let reference = Tensor::new(xs.iter().map(|&x| x as f64).collect::<Vec<_>>(), &Device::Cpu).unwrap();
        let erf_ref = reference.erf().unwrap().to_vec1::<f64>().unwrap();
        let gelu_ref = reference.gelu_erf().unwrap().to_vec1::<f64>().unwrap();
        for (fma, erf_fn) in [(false, erf::<false> as fn(f32) -> f32), (true, erf::<true> as fn(f32) -> f32)] {
            let worst = xs.iter().zip(&erf_ref).map(|(&x, &e)| (erf_fn(x) as f64 - e).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-7, "erf (fma {fma}) is off by {worst:e}");
        }
        let mut g = xs.clone();
        gelu_in_place(&mut g);
        // Relative to max(1, |x|): the f32 product rounds at that scale.
        let worst = g
            .iter()
            .zip(&gelu_ref)
            .zip(&xs)
            .map(|((&g, &r), &x)| (g as f64 - r).abs() / (x.abs() as f64).max(1.0))
            .fold(0.0, f64::max);
        assert!(worst < 2e-7, "gelu is off by {worst:e} (relative)");
    }

    #[test]
    fn exp_is_accurate() {
        for fma in [false, true] {
            let f = if fma { exp_nonpositive::<true> } else { exp_nonpositive::<false> };
            let worst = (0..=100_000)
                .map(|i| -(i as f32) * 0.87e-3)
                .map(|x| ((f(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs())
                .fold(0.0, f64::max);
            assert!(worst < 4e-7, "exp (fma {fma}) is off by {worst:e} (relative)");
        }
        for x in [-1e4, f32::NEG_INFINITY] {
            assert!(exp_nonpositive::<true>(x) < 1e-37);
        }
    }
}
