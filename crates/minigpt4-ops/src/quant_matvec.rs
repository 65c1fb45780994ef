//! `x · wᵀ` on the CPU for a few activation rows (decoding) against a GGUF matrix kept in its
//! file's blocks: Q4_1 (SmolLM2's layers) or Q8_0 (its embeddings, which the tied LM head shares).
//!
//! candle's Q4_1 dot product is scalar, so the loader used to requantize Q4_1 to Q8_0 (1.7× the
//! bytes each token reads) and run candle's Q8_0 kernel, which converts both f16 scales of every
//! block pair in its inner loop. This is the scheme of llama.cpp's `ggml_vec_dot_q4_1_q8_1`: the
//! activation row is quantized once per call to 8-bit blocks that carry their scale `d` and
//! `s = d·Σq`, and one block of the dot product is
//!   Σ (d_w·q_w + m_w)·(d_a·q_a) = d_w·d_a·Σ q_w·q_a + m_w·s_a,
//! an integer dot product of 32 lanes (AVX2 where the CPU has it) plus two multiply-adds. Q4_1's
//! two f16 block scales are converted once at load into an f32 side table (8 bytes per 32
//! weights) so the inner loop has no conversions; Q8_0's one scale is widened in the loop through
//! a 64K-entry f16 → f32 table shared by every matrix, since a per-matrix side table (4 bytes per
//! 32 weights) came to 0.84 GB for a 7B model.
//!
//! Q4_K (`minigpt4 convert --quantize q4_k`, the published k-quant GGUFs) is read the same way:
//! each 256-weight super-block holds 8 sub-blocks of 32 with 6-bit scales and minimums. As in
//! llama.cpp's `ggml_vec_dot_q4_K_q8_K`, the activation row is quantized with one scale d_a per
//! 256 values (its 8 blocks share it), so a super-block's dot product is
//!   d_w·d_a·Σ_j sc_j·Σ q_w·q_a − dmin·Σ_j m_j·s_j,
//! the 6-bit scales applied in the integer domain (`madd`), one float multiply-add per 256
//! weights (no side table). candle 0.11 runs Q4_K through a repacked
//! copy of every matrix that it keeps next to the original (+1.33× the Q4_K bytes: 5 GB for a 7B
//! model), which this kernel does not need.
//!
//! From 4 activation rows on (prefill), a matrix with `set_int8_prefill` on a CPU with AVX-512
//! VNNI multiplies through [`crate::quant_gemm`] instead: the same blocks against 8-bit activations, a tile of weight
//! rows at a time.
//!
//! Output rows are split over candle's persistent barrier pool (the threads its own quantized
//! matmul uses; the calling thread works too), so no extra threads compete for the cores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QTensor};

use crate::quant_gemm;
use candle_core::{CpuStorage, Layout, Shape};

/// Weights per block (both formats).
const QK: usize = 32;

/// Below this many block dot products per call the work stays on the calling thread: waking the
/// pool costs a few microseconds, about what 2k block products take.
const MIN_BLOCKS_PER_THREAD: usize = 2048;

/// From this many activation rows on, products go through the 8-bit integer gemm
/// (`quant_gemm`) where it is on: its tiles take 4 rows at a time.
const INT8_GEMM_ROWS: usize = 4;

/// Output row ranges per thread in one product (see `split_rows`).
const RANGES_PER_THREAD: usize = 4;

/// The block formats this kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `{ d: f16, m: f16, qs: [u8; 16] }`: weight j is `d·q + m`, q the low nibble of `qs[j]` for
    /// j < 16 and the high nibble of `qs[j - 16]` otherwise.
    Q4_1,
    /// `{ d: f16, qs: [i8; 32] }`: weight j is `d·qs[j]`.
    Q8_0,
    /// `{ d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }` per 256 weights (ggml's
    /// `block_q4_K`): sub-block j (32 weights) is `d·sc_j·q − dmin·m_j`, with 6-bit `sc_j`, `m_j`
    /// packed in `scales` and q the low nibbles of `qs[32c..32c+32]` for j = 2c, the high ones
    /// for j = 2c + 1.
    Q4K,
}

/// Weights per Q4_K super-block, and its bytes.
const QK_K: usize = 256;
pub(crate) const Q4K_BYTES: usize = 144;

/// A Q4_K super-block's `d` and `dmin` (widened through the f16 table) and its 12 packed scale
/// bytes.
#[inline]
pub(crate) fn q4k_header<'a>(sb: &'a [u8], table: &[f32; 1 << 16]) -> (f32, f32, &'a [u8]) {
    let d = table[u16::from_le_bytes([sb[0], sb[1]]) as usize];
    let dmin = table[u16::from_le_bytes([sb[2], sb[3]]) as usize];
    (d, dmin, &sb[4..16])
}

/// Sub-block j's (scale, min) of a Q4_K super-block's 12 packed scale bytes (ggml's
/// `get_scale_min_k4`).
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

impl Format {
    /// Bytes per 32 weights (a Q4_K super-block's 144 bytes over its 8 sub-blocks).
    pub(crate) fn block_bytes(self) -> usize {
        match self {
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
            Format::Q4K => Q4K_BYTES / (QK_K / QK),
        }
    }

    /// Weights a row's width must be a multiple of.
    fn row_multiple(self) -> usize {
        match self {
            Format::Q4K => QK_K,
            _ => QK,
        }
    }

    /// Scales kept per block in the side table (`d` and `m` for Q4_1; Q8_0 reads its block's).
    fn scales(self) -> usize {
        match self {
            Format::Q4_1 => 2,
            Format::Q8_0 | Format::Q4K => 0,
        }
    }
}

/// One block of a quantized activation row: `x[j] ≈ d·qs[j]`, and `s = d·Σ qs`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct ActBlock {
    pub(crate) d: f32,
    pub(crate) s: f32,
    pub(crate) qs: [i8; QK],
}

/// A [rows, cols] Q4_1 or Q8_0 matrix ready for `forward`; shares the `QTensor`'s blocks.
#[derive(Debug)]
pub struct QuantMatvec {
    q: Arc<QTensor>,
    pub(crate) format: Format,
    rows: usize,
    pub(crate) cols: usize,
    /// Per block, row-major: `d` (and `m` for Q4_1) as f32.
    pub(crate) scales: Vec<f32>,
    /// Products of ≥ 4 rows go through `quant_gemm` (where the CPU has it).
    int8_prefill: bool,
}

impl QuantMatvec {
    /// Wraps a CPU matrix in one of the supported block types; `None` for others (or a width
    /// that is not whole blocks), which keep candle's kernels.
    pub fn new(q: Arc<QTensor>) -> Option<Self> {
        let format = match q.dtype() {
            GgmlDType::Q4_1 => Format::Q4_1,
            GgmlDType::Q8_0 => Format::Q8_0,
            GgmlDType::Q4K => Format::Q4K,
            _ => return None,
        };
        let (rows, cols) = q.shape().dims2().ok()?;
        if cols % format.row_multiple() != 0 || !q.device().is_cpu() {
            return None;
        }
        let data = q.data().ok()?;
        // Checked: a file that lies about its shape must not pass with a product that wrapped.
        let blocks = rows.checked_mul(cols)? / QK;
        if Some(data.len()) != blocks.checked_mul(format.block_bytes()) {
            return None;
        }
        let f16_at = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        let mut scales = Vec::with_capacity(blocks * format.scales());
        if format == Format::Q4_1 {
            for block in data.chunks_exact(format.block_bytes()) {
                scales.push(f16_at(block, 0));
                scales.push(f16_at(block, 2));
            }
        }
        drop(data);
        Some(Self { q, format, rows, cols, scales, int8_prefill: false })
    }

    /// Lets products of many activation rows (prompts) run in 8-bit integers, on a CPU that has
    /// AVX-512 VNNI ([`quant_gemm::available`]).
    pub fn set_int8_prefill(&mut self, on: bool) {
        self.int8_prefill = on;
    }

    /// Whether products of many rows run in 8-bit integers here.
    pub fn int8_prefill(&self) -> bool {
        self.int8_prefill && quant_gemm::available()
    }

    pub fn qtensor(&self) -> &Arc<QTensor> {
        &self.q
    }

    /// The matrix as f32 [rows, cols], row-major, for prefill, where a dense gemm reuses each
    /// weight across many activation rows. Bit for bit what candle's `dequantize` gives (the same
    /// `d·q + m` in f32), but from the f32 scale table and on candle's barrier pool, like `matmul`: candle's is one thread
    /// converting f16 scales per block, and at 128 prompt tokens it was a third of the prefill.
    pub fn dequantize(&self) -> Vec<f32> {
        self.dequantize_rows(0..self.rows)
    }

    /// Rows `rows` of the matrix as f32 [rows.len(), cols] (see [`QuantMatvec::dequantize`]).
    pub fn dequantize_rows(&self, rows: std::ops::Range<usize>) -> Vec<f32> {
        assert!(rows.end <= self.rows, "rows {rows:?} of a {}-row matrix", self.rows);
        let data = self.q.data().expect("CPU QTensor data is a borrow");
        let (bb, ns, nb) = (self.format.block_bytes(), self.format.scales(), self.cols / QK);
        let n_rows = rows.len();
        let mut out = vec![0f32; n_rows * self.cols];
        let run = |first: usize, out: &mut [f32]| {
            for (k, row) in out.chunks_exact_mut(self.cols).enumerate() {
                let r = rows.start + first + k;
                let w = &data[r * nb * bb..(r + 1) * nb * bb];
                if self.format == Format::Q4K {
                    for (sb, o) in w.chunks_exact(Q4K_BYTES).zip(row.chunks_exact_mut(QK_K)) {
                        dequantize_q4k(sb, o);
                    }
                    continue;
                }
                let sc = &self.scales[r * nb * ns..(r + 1) * nb * ns];
                for (b, (block, o)) in w.chunks_exact(bb).zip(row.chunks_exact_mut(QK)).enumerate() {
                    match self.format {
                        Format::Q4_1 => {
                            let (d, m) = (sc[2 * b], sc[2 * b + 1]);
                            let (lo, hi) = o.split_at_mut(QK / 2);
                            for ((&q, lo), hi) in block[4..].iter().zip(lo).zip(hi) {
                                *lo = (q & 0x0f) as f32 * d + m;
                                *hi = (q >> 4) as f32 * d + m;
                            }
                        }
                        Format::Q8_0 => {
                            let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                            for (&q, o) in block[2..].iter().zip(o) {
                                *o = q as i8 as f32 * d;
                            }
                        }
                        Format::Q4K => unreachable!("handled by super-block above"),
                    }
                }
            }
        };
        self.split_rows(&mut out, self.cols, n_rows, n_rows * nb, run);
        out
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Runs `run(first row, rows' outputs)` over disjoint row ranges of `out` (`per_row` values
    /// per row) on candle's barrier pool, or on the calling thread when `blocks` is little work.
    fn split_rows(
        &self,
        out: &mut [f32],
        per_row: usize,
        n_rows: usize,
        blocks: usize,
        run: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        let pool = candle_core::utils::barrier_pool();
        let threads = (pool.n_workers() + 1).min(blocks / MIN_BLOCKS_PER_THREAD).max(1);
        if threads == 1 {
            return run(0, out);
        }
        // A few ranges per thread, handed out by a shared cursor: with one fixed half each, the
        // calling thread waited for the pool's thread for 12 % of SmolLM2's decoding.
        let per = n_rows.div_ceil(threads * RANGES_PER_THREAD);
        let parts: Vec<Mutex<&mut [f32]>> = out.chunks_mut(per * per_row).map(Mutex::new).collect();
        let cursor = AtomicUsize::new(0);
        pool.execute(|_| loop {
            let i = cursor.fetch_add(1, Ordering::Relaxed);
            let Some(part) = parts.get(i) else { break };
            // Each range is taken once (the cursor), so its lock is never contended.
            let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
            run(i * per, &mut part);
        });
    }

    /// `x · wᵀ` for `x` [.., cols] f32 in row-major order: returns [.., rows].
    pub fn matmul(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len() % self.cols, 0, "activation length is not a multiple of the width");
        let m = x.len() / self.cols;
        let nb = self.cols / QK;
        let data = self.q.data().expect("CPU QTensor data is a borrow");
        let (data, bb, ns) = (&data[..], self.format.block_bytes(), self.format.scales());
        // out_t[r·m + i] = row r · activation i: each thread then writes one contiguous range.
        let mut out_t = vec![0f32; self.rows * m];
        if m >= INT8_GEMM_ROWS && self.int8_prefill() {
            let acts = quant_gemm::Activations::new(&quantize_activations(Format::Q8_0, x), m);
            let run = |first: usize, out: &mut [f32]| quant_gemm::rows_times_activations(self, data, &acts, first, out);
            self.split_rows(&mut out_t, m, self.rows, self.rows * nb * m, run);
        } else {
            let act = quantize_activations(self.format, x);
            let dot = dot_fn(self.format);
            let run = |first: usize, out: &mut [f32]| {
                for (k, o) in out.chunks_exact_mut(m).enumerate() {
                    let r = first + k;
                    let w = &data[r * nb * bb..(r + 1) * nb * bb];
                    let sc = &self.scales[r * nb * ns..(r + 1) * nb * ns];
                    for (i, o) in o.iter_mut().enumerate() {
                        *o = dot(w, sc, &act[i * nb..(i + 1) * nb]);
                    }
                }
            };
            self.split_rows(&mut out_t, m, self.rows, self.rows * nb * m, run);
        }
        if m == 1 {
            return out_t;
        }
        let mut out = vec![0f32; self.rows * m];
        for (r, row) in out_t.chunks_exact(m).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                out[i * self.rows + r] = v;
            }
        }
        out
    }
}

impl candle_core::CustomOp1 for QuantMatvec {
    fn name(&self) -> &'static str {
        "quant-matvec"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.dims();
        if dims.last() != Some(&self.cols) {
            candle_core::bail!("quant-matvec: input {dims:?} does not end in the width {}", self.cols);
        }
        let (CpuStorage::F32(x), Some((start, end))) = (x, layout.contiguous_offsets()) else {
            candle_core::bail!("quant-matvec: input must be contiguous f32");
        };
        let out = self.matmul(&x[start..end]);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank checked above") = self.rows;
        Ok((CpuStorage::F32(out), shape.into()))
    }
}

/// One Q4_K super-block as 256 f32, in the order and arithmetic of candle's (and ggml's)
/// `dequantize_row_q4_K`, so prefill with the dequantized matrix is bit for bit candle's.
fn dequantize_q4k(sb: &[u8], out: &mut [f32]) {
    let (d, dmin, scales) = q4k_header(sb, f16_table());
    let qs = &sb[16..144];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1 as f32, dmin * m1 as f32, d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let o = &mut out[64 * c..64 * c + 64];
        for l in 0..32 {
            o[l] = d1 * (q[l] & 0xF) as f32 - min1;
            o[32 + l] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

/// The activation rows `x` as the blocks `format`'s kernel takes.
pub(crate) fn quantize_activations(format: Format, x: &[f32]) -> Vec<ActBlock> {
    #[inline(always)]
    fn run(format: Format, x: &[f32]) -> Vec<ActBlock> {
        // Plain loops: `collect` would run the closures in a generic `from_iter` compiled
        // without the caller's target features.
        let mut act = Vec::with_capacity(x.len() / QK);
        match format {
            Format::Q4K => {
                for sb in x.chunks_exact(QK_K) {
                    act.extend_from_slice(&quantize_superblock(sb));
                }
            }
            _ => {
                for b in x.chunks_exact(QK) {
                    act.push(quantize_block(b));
                }
            }
        }
        act
    }
    /// The same code with AVX2 enabled: baseline x86-64 has no rounding instruction, and a libm
    /// `roundf` call per value was 2.5 % of SmolLM2's decoding.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(format: Format, x: &[f32]) -> Vec<ActBlock> {
        run(format, x)
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::cpu_level() >= crate::cpu::CpuLevel::Avx2 {
        // SAFETY: `cpu_level` found AVX2 and FMA.
        return unsafe { run_avx2(format, x) };
    }
    run(format, x)
}

/// Quantizes 32 values to 8 bits with one scale, rounding as ggml's Q8_0/Q8_1 (and candle's)
/// do, scale stored as f16 included: greedy decoding can hinge on near-tied logits, and this
/// keeps them where llama.cpp and the previous candle kernel put them.
#[inline(always)]
fn quantize_block(x: &[f32]) -> ActBlock {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let d = half::f16::from_f32(d).to_f32();
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        // |v·id| ≤ 127, so the cast never saturates.
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    ActBlock { d, s: d * sum as f32, qs }
}

/// Quantizes 256 values to 8 bits with one f32 scale (ggml's Q8_K), as 8 blocks that share it:
/// Q4_K's 6-bit sub-block scales then apply to integer sums.
#[inline(always)]
fn quantize_superblock(x: &[f32]) -> [ActBlock; QK_K / QK] {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let (d, id) = if amax > 0.0 { (amax / 127.0, 127.0 / amax) } else { (0.0, 0.0) };
    std::array::from_fn(|j| {
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, v) in qs.iter_mut().zip(&x[j * QK..(j + 1) * QK]) {
            *q = (v * id).round().clamp(-127.0, 127.0) as i8;
            sum += *q as i32;
        }
        ActBlock { d, s: d * sum as f32, qs }
    })
}

/// One row's dot product: the row's block bytes, its side-table scales, the activation blocks.
type DotFn = fn(&[u8], &[f32], &[ActBlock]) -> f32;

/// Picks the best kernel the CPU has (`cpu::cpu_level`, read once per process; AVX-512 VNNI has
/// a Q4_K kernel, the other formats take AVX2 there).
fn dot_fn(format: Format) -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::cpu::{cpu_level, CpuLevel};
        let level = cpu_level();
        // Q4_1 and Q8_0 kernels with `vpdpbusd` (two blocks per instruction) decoded SmolLM2 no
        // faster than these AVX2 ones (93–96 tokens/s either way, medians of 4 alternating runs):
        // at this size decoding waits on memory, so they were not kept.
        if level >= CpuLevel::Avx512Vnni && format == Format::Q4K {
            return avx512::dot_q4k;
        }
        if level >= CpuLevel::Avx2 {
            return match format {
                Format::Q4_1 => avx2::dot_q4_1,
                Format::Q8_0 => avx2::dot_q8_0,
                Format::Q4K => avx2::dot_q4k,
            };
        }
    }
    match format {
        Format::Q4_1 => dot_q4_1_scalar,
        Format::Q8_0 => dot_q8_0_scalar,
        Format::Q4K => dot_q4k_scalar,
    }
}

/// A row of Q4_K super-blocks against its activation blocks (8 per super-block, sharing their
/// scale: `quantize_superblock`).
fn dot_q4k_scalar(w: &[u8], _: &[f32], a: &[ActBlock]) -> f32 {
    let table = f16_table();
    let mut acc = 0f32;
    for (sb, ab) in w.chunks_exact(Q4K_BYTES).zip(a.chunks_exact(QK_K / QK)) {
        let (d, dmin, scales) = q4k_header(sb, table);
        let (d, qs) = (d * ab[0].d, &sb[16..144]);
        let (mut sumi, mut mins) = (0i32, 0f32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            let isum: i32 = q.iter().zip(&ab[j].qs).map(|(&q, &x)| ((q >> shift) & 0xF) as i32 * x as i32).sum();
            sumi += sc as i32 * isum;
            mins += m as f32 * ab[j].s;
        }
        acc += d * sumi as f32 - dmin * mins;
    }
    acc
}

fn dot_q4_1_scalar(w: &[u8], sc: &[f32], a: &[ActBlock]) -> f32 {
    let mut acc = 0f32;
    for ((wb, s), ab) in w.chunks_exact(20).zip(sc.chunks_exact(2)).zip(a) {
        let qs = &wb[4..20];
        let mut isum = 0i32;
        let (lo, hi) = ab.qs.split_at(QK / 2);
        for ((&q, &l), &h) in qs.iter().zip(lo).zip(hi) {
            isum += (q & 0x0F) as i32 * l as i32 + (q >> 4) as i32 * h as i32;
        }
        acc += s[0] * ab.d * isum as f32 + s[1] * ab.s;
    }
    acc
}

/// Every f16 value as f32, indexed by its bits: Q8_0's block scales are widened by one lookup.
/// (A fixed-size array, so a `u16` index needs no bounds check.)
pub(crate) fn f16_table() -> &'static [f32; 1 << 16] {
    static TABLE: std::sync::OnceLock<Box<[f32; 1 << 16]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0f32; 1 << 16]);
        for (b, v) in t.iter_mut().enumerate() {
            *v = half::f16::from_bits(b as u16).to_f32();
        }
        t
    })
}

fn dot_q8_0_scalar(w: &[u8], _: &[f32], a: &[ActBlock]) -> f32 {
    let table = f16_table();
    let mut acc = 0f32;
    for (wb, ab) in w.chunks_exact(34).zip(a) {
        let d = table[u16::from_le_bytes([wb[0], wb[1]]) as usize];
        let isum: i32 = wb[2..34].iter().zip(&ab.qs).map(|(&q, &x)| q as i8 as i32 * x as i32).sum();
        acc += d * ab.d * isum as f32;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{ActBlock, QK};
    use std::arch::x86_64::*;

    /// Safe entry: checks the slice lengths the unsafe loop relies on; `dot_fn` only hands this
    /// out after detecting AVX2 and FMA.
    pub(super) fn dot_q4_1(w: &[u8], sc: &[f32], a: &[ActBlock]) -> f32 {
        assert!(w.len() >= a.len() * 20 && sc.len() >= a.len() * 2);
        // SAFETY: AVX2/FMA were detected by `dot_fn`; lengths are checked above.
        unsafe { dot_q4_1_impl(w, sc, a) }
    }

    pub(super) fn dot_q8_0(w: &[u8], _: &[f32], a: &[ActBlock]) -> f32 {
        assert!(w.len() >= a.len() * 34);
        // SAFETY: as above.
        unsafe { dot_q8_0_impl(w, a) }
    }

    pub(super) fn dot_q4k(w: &[u8], _: &[f32], a: &[ActBlock]) -> f32 {
        assert!(a.len().is_multiple_of(8) && w.len() >= a.len() / 8 * super::Q4K_BYTES);
        // SAFETY: as above.
        unsafe { dot_q4k_impl(w, a) }
    }

    /// Per super-block: per 32 bytes of nibbles, the low nibbles against one activation block
    /// and the high ones against the next (unsigned nibbles × signed activations in `maddubs`,
    /// ≤ 2·15·127 per pair), each `madd`ed with its sub-block's 6-bit scale into i32 sums; one
    /// float multiply-add by d_w·d_a per super-block, and the minimums' −dmin·Σ m_j·s_j.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_q4k_impl(w: &[u8], a: &[ActBlock]) -> f32 {
        let table = super::f16_table();
        let low = _mm256_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        for (s, ab) in a.chunks_exact(8).enumerate() {
            let sb = &w[s * super::Q4K_BYTES..(s + 1) * super::Q4K_BYTES];
            let (d, dmin, scales) = super::q4k_header(sb, table);
            let d = d * ab[0].d;
            let mut sumi = _mm256_setzero_si256();
            let mut mins = 0f32;
            for c in 0..4 {
                // SAFETY: bytes 16 + 32c .. 48 + 32c of the super-block are in bounds (asserted).
                let q = _mm256_loadu_si256(sb.as_ptr().add(16 + 32 * c) as *const __m256i);
                let (sc0, m0) = super::scale_min_k4(2 * c, scales);
                let (sc1, m1) = super::scale_min_k4(2 * c + 1, scales);
                let (a0, a1) = (&ab[2 * c], &ab[2 * c + 1]);
                let lo = _mm256_maddubs_epi16(
                    _mm256_and_si256(q, low),
                    _mm256_loadu_si256(a0.qs.as_ptr() as *const __m256i),
                );
                let hi = _mm256_maddubs_epi16(
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), low),
                    _mm256_loadu_si256(a1.qs.as_ptr() as *const __m256i),
                );
                let lo = _mm256_madd_epi16(lo, _mm256_set1_epi16(sc0 as i16));
                let hi = _mm256_madd_epi16(hi, _mm256_set1_epi16(sc1 as i16));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(lo, hi));
                mins += m0 as f32 * a0.s + m1 as f32 * a1.s;
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            offsets -= dmin * mins;
        }
        hsum(acc) + offsets
    }

    /// Per block: the 16 nibble bytes expand to 32 unsigned lanes (low nibbles, then high ones,
    /// matching the activation's order); `maddubs` multiplies them by the signed activation and
    /// adds pairs (≤ 2·15·127, no saturation); `madd` by ones widens to 8 i32 sums, scaled by
    /// d_w·d_a into an f32 accumulator. The offset term m_w·s_a is a scalar per block.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_q4_1_impl(w: &[u8], sc: &[f32], a: &[ActBlock]) -> f32 {
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        for (b, ab) in a.iter().enumerate() {
            // SAFETY: block b's bytes 4..20 and the activation's 32 bytes are in bounds (caller).
            let nib = _mm_loadu_si128(w.as_ptr().add(b * 20 + 4) as *const __m128i);
            let wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nib, 4), nib), low);
            let aq = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, aq), ones);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(sc[2 * b] * ab.d), _mm256_cvtepi32_ps(sums), acc);
            offsets += sc[2 * b + 1] * ab.s;
        }
        hsum(acc) + offsets
    }

    /// Signed × signed: `maddubs` needs one unsigned side, so it multiplies |w| by the activation
    /// with w's sign moved onto it (≤ 2·127·127 per pair, no saturation).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_q8_0_impl(w: &[u8], a: &[ActBlock]) -> f32 {
        let table = super::f16_table();
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (b, ab) in a.iter().enumerate() {
            // SAFETY: block b's bytes 2..34 and the activation's 32 bytes are in bounds (caller).
            let wq = _mm256_loadu_si256(w.as_ptr().add(b * 34 + 2) as *const __m256i);
            let aq = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            let prod = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq));
            let sums = _mm256_madd_epi16(prod, ones);
            // The block's f16 scale, widened through the shared table (one load, like the side
            // table it replaces, but from 256 KB that stay in cache).
            let d = table[u16::from_le_bytes([w[b * 34], w[b * 34 + 1]]) as usize];
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), _mm256_cvtepi32_ps(sums), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    const _: () = assert!(QK == 32, "one block is one 256-bit register of i8");
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::ActBlock;
    use std::arch::x86_64::*;

    pub(super) fn dot_q4k(w: &[u8], _: &[f32], a: &[ActBlock]) -> f32 {
        assert!(a.len().is_multiple_of(8) && w.len() >= a.len() / 8 * super::Q4K_BYTES);
        // SAFETY: `dot_fn` hands this out only when `cpu_level` found AVX-512 F/BW/VNNI;
        // lengths are checked above.
        unsafe { dot_q4k_impl(w, a) }
    }

    /// As the AVX2 kernel, two sub-blocks per instruction: the 32 nibble bytes of a pair of
    /// sub-blocks widen to 64 unsigned lanes (low nibbles in the lower half, high ones in the
    /// upper), the two activation blocks fill one register alike, and one `maddubs` + `madd`
    /// (with each half's 6-bit scale) gives both sub-blocks' scaled i32 sums.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn dot_q4k_impl(w: &[u8], a: &[ActBlock]) -> f32 {
        let table = super::f16_table();
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = _mm512_setzero_ps();
        let mut offsets = 0f32;
        for (s, ab) in a.chunks_exact(8).enumerate() {
            let sb = &w[s * super::Q4K_BYTES..(s + 1) * super::Q4K_BYTES];
            let (d, dmin, scales) = super::q4k_header(sb, table);
            let d = d * ab[0].d;
            let mut sumi = _mm512_setzero_si512();
            let mut mins = 0f32;
            for c in 0..4 {
                // SAFETY: bytes 16 + 32c .. 48 + 32c of the super-block are in bounds (asserted).
                let q = _mm256_loadu_si256(sb.as_ptr().add(16 + 32 * c) as *const __m256i);
                let both = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
                let (a0, a1) = (&ab[2 * c], &ab[2 * c + 1]);
                let lo = _mm256_loadu_si256(a0.qs.as_ptr() as *const __m256i);
                let hi = _mm256_loadu_si256(a1.qs.as_ptr() as *const __m256i);
                let aq = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                let (sc0, m0) = super::scale_min_k4(2 * c, scales);
                let (sc1, m1) = super::scale_min_k4(2 * c + 1, scales);
                let sc = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_set1_epi16(sc0 as i16)),
                    _mm256_set1_epi16(sc1 as i16),
                    1,
                );
                let p = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_and_si512(both, low), aq), sc);
                sumi = _mm512_add_epi32(sumi, p);
                mins += m0 as f32 * a0.s + m1 as f32 * a1.s;
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
            offsets -= dmin * mins;
        }
        _mm512_reduce_add_ps(acc) + offsets
    }
}

/// Whether a GGUF tensor's values are all finite, read from its floating-point fields only:
/// a block's values are integers times its f16/f32 scales (and minimums), so they are finite
/// exactly when those are. Costs one pass over a few bytes per block instead of a dequantization
/// (ggml-common.h gives the block layouts). Block types not listed are dequantized and checked.
pub fn all_finite_blocks(q: &QTensor) -> candle_core::Result<bool> {
    let f16_at = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).is_finite();
    let f32_at = |b: &[u8], at: usize| f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]).is_finite();
    // Offsets in a block of its f16 fields and of its f32 fields.
    let (halves, floats): (&[usize], &[usize]) = match q.dtype() {
        GgmlDType::F32 => (&[], &[0]),
        GgmlDType::F16 => (&[0], &[]),
        GgmlDType::Q4_0 => (&[0], &[]),
        GgmlDType::Q4_1 => (&[0, 2], &[]),
        GgmlDType::Q5_0 => (&[0], &[]),
        GgmlDType::Q5_1 => (&[0, 2], &[]),
        GgmlDType::Q8_0 => (&[0], &[]),
        GgmlDType::Q8_1 => (&[0, 2], &[]),
        GgmlDType::Q2K => (&[80, 82], &[]),
        GgmlDType::Q3K => (&[108], &[]),
        GgmlDType::Q4K => (&[0, 2], &[]),
        GgmlDType::Q5K => (&[0, 2], &[]),
        GgmlDType::Q6K => (&[208], &[]),
        GgmlDType::Q8K => (&[], &[0]),
        _ => {
            let sum = q.dequantize(&candle_core::Device::Cpu)?.abs()?.sum_all()?.to_scalar::<f32>()?;
            return Ok(sum.is_finite());
        }
    };
    let block = q.dtype().type_size();
    let data = q.data()?;
    if data.len() % block != 0 {
        candle_core::bail!("{} bytes are not whole {:?} blocks", data.len(), q.dtype());
    }
    Ok(data
        .chunks_exact(block)
        .all(|b| halves.iter().all(|&at| f16_at(b, at)) && floats.iter().all(|&at| f32_at(b, at))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Max |kernel − f32 reference| over the outputs, relative to the largest reference output.
    fn rel_err(mv: &QuantMatvec, x: &[f32]) -> f32 {
        let dev = Device::Cpu;
        let w = mv.qtensor().dequantize(&dev).unwrap();
        let xt = Tensor::from_slice(x, (x.len() / mv.cols, mv.cols), &dev).unwrap();
        let want: Vec<f32> = xt.matmul(&w.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let got = mv.matmul(x);
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        got.iter().zip(&want).fold(0f32, |a, (g, w)| a.max((g - w).abs())) / scale
    }

    #[test]
    fn matches_dequantized_reference_on_random_data() {
        let dev = Device::Cpu;
        for (dtype, rows, cols) in [
            (GgmlDType::Q4_1, 1536, 576),
            (GgmlDType::Q8_0, 4099, 576),
            (GgmlDType::Q4_1, 7, 64),
            (GgmlDType::Q8_0, 5, 96),
            (GgmlDType::Q4K, 1029, 512),
            (GgmlDType::Q4K, 3, 256),
        ] {
            let w = Tensor::from_vec(random(rows * cols, 1), (rows, cols), &dev).unwrap();
            let mv = QuantMatvec::new(Arc::new(QTensor::quantize(&w, dtype).unwrap())).unwrap();
            for m in [1, 3] {
                let err = rel_err(&mv, &random(m * cols, 2 + m as u64));
                // Q8 activation rounding: ≤ 1/254 of each block's range per value.
                assert!(err < 1e-2, "{dtype:?} {rows}×{cols}, {m} rows: relative error {err}");
            }
        }
    }

    #[test]
    fn dequantize_is_candles_bit_for_bit() {
        let dev = Device::Cpu;
        for (dtype, cols) in [(GgmlDType::Q4_1, 96), (GgmlDType::Q8_0, 96), (GgmlDType::Q4K, 512)] {
            let w = Tensor::from_vec(random(48 * cols, 7), (48, cols), &dev).unwrap();
            let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
            let mv = QuantMatvec::new(q.clone()).unwrap();
            let ours = mv.dequantize();
            let theirs = q.dequantize(&dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype:?}");
        }
    }

    #[test]
    fn scalar_and_simd_kernels_agree() {
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K] {
            let w = Tensor::from_vec(random(8 * 256, 3), (8, 256), &dev).unwrap();
            let mv = QuantMatvec::new(Arc::new(QTensor::quantize(&w, dtype).unwrap())).unwrap();
            let x = random(256, 4);
            let act: Vec<ActBlock> = match mv.format {
                Format::Q4K => x.chunks_exact(QK_K).flat_map(quantize_superblock).collect(),
                _ => x.chunks_exact(QK).map(quantize_block).collect(),
            };
            // The dispatched (AVX2-compiled) quantization is bit for bit the baseline one.
            let dispatched = quantize_activations(mv.format, &x);
            let bits = |a: &[ActBlock]| -> Vec<(u32, u32, [i8; QK])> {
                a.iter().map(|b| (b.d.to_bits(), b.s.to_bits(), b.qs)).collect()
            };
            assert_eq!(bits(&act), bits(&dispatched), "{dtype:?} activation blocks");
            let data = mv.q.data().unwrap();
            let scalar = match mv.format {
                Format::Q4_1 => dot_q4_1_scalar as DotFn,
                Format::Q8_0 => dot_q8_0_scalar as DotFn,
                Format::Q4K => dot_q4k_scalar as DotFn,
            };
            let a = scalar(&data, &mv.scales, &act);
            // Every SIMD path this CPU can run, whatever MINIGPT4_CPU says.
            let mut paths: Vec<(&str, DotFn)> = vec![("dispatched", dot_fn(mv.format))];
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    paths.push((
                        "avx2",
                        match mv.format {
                            Format::Q4_1 => avx2::dot_q4_1,
                            Format::Q8_0 => avx2::dot_q8_0,
                            Format::Q4K => avx2::dot_q4k,
                        },
                    ));
                }
                let vnni = is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni");
                if vnni && mv.format == Format::Q4K {
                    paths.push(("avx512", avx512::dot_q4k));
                }
            }
            for (name, f) in paths {
                let b = f(&data, &mv.scales, &act);
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{dtype:?} {name}: {a} vs {b}");
            }
        }
    }

    /// The block layouts `all_finite_blocks` reads match candle's sizes, every listed float
    /// field is checked (a NaN put there is found), and real quantized data passes.
    #[test]
    fn non_finite_block_scales_are_found() {
        let w = Tensor::from_vec(random(256 * 4, 3), (4, 256), &Device::Cpu).unwrap();
        let layouts: [(GgmlDType, &[usize], &[usize]); 12] = [
            (GgmlDType::Q4_0, &[0], &[]),
            (GgmlDType::Q4_1, &[0, 2], &[]),
            (GgmlDType::Q5_0, &[0], &[]),
            (GgmlDType::Q5_1, &[0, 2], &[]),
            (GgmlDType::Q8_0, &[0], &[]),
            (GgmlDType::Q2K, &[80, 82], &[]),
            (GgmlDType::Q3K, &[108], &[]),
            (GgmlDType::Q4K, &[0, 2], &[]),
            (GgmlDType::Q5K, &[0, 2], &[]),
            (GgmlDType::Q6K, &[208], &[]),
            (GgmlDType::Q8K, &[], &[0]),
            (GgmlDType::F16, &[0], &[]),
        ];
        for (dtype, halves, floats) in layouts {
            let q = QTensor::quantize(&w, dtype).unwrap();
            assert!(all_finite_blocks(&q).unwrap(), "{dtype:?}");
            let block = dtype.type_size();
            let data = q.data().unwrap().into_owned();
            let poisoned = |at: usize, nan: &[u8]| {
                let mut d = data.clone();
                let b = 2 * block; // some block in the middle
                d[b + at..b + at + nan.len()].copy_from_slice(nan);
                let shape = q.shape().clone();
                QTensor::new(
                    candle_core::quantized::QStorage::from_data(std::borrow::Cow::Owned(d), &Device::Cpu, dtype)
                        .unwrap(),
                    shape,
                )
                .unwrap()
            };
            for &at in halves {
                assert!(
                    !all_finite_blocks(&poisoned(at, &half::f16::NAN.to_le_bytes())).unwrap(),
                    "{dtype:?} f16 at {at}"
                );
            }
            for &at in floats {
                assert!(
                    !all_finite_blocks(&poisoned(at, &f32::INFINITY.to_le_bytes())).unwrap(),
                    "{dtype:?} f32 at {at}"
                );
            }
        }
    }

    #[test]
    fn rejects_other_block_types() {
        let w = Tensor::zeros((4, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(QuantMatvec::new(Arc::new(QTensor::quantize(&w, GgmlDType::Q4_0).unwrap())).is_none());
    }
}
