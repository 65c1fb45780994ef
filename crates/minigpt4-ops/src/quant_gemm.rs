//! `x · wᵀ` for many activation rows (prefill) against a GGUF matrix, in 8-bit integers with
//! AVX-512 VNNI (`vpdpbusd`: 64 byte products summed into 16 lanes per instruction).
//!
//! The f32 route (dequantize a chunk of rows, run an f32 gemm) reads every weight as 4 bytes and
//! multiplies 16 lanes per instruction; at 7B it prefilled at 0.28–0.48× llama.cpp, whose CPU
//! backend multiplies quantized blocks against 8-bit activations the same way
//! (`ggml_vec_dot_q8_0_q8_0`, llamafile's tinyBLAS). Here every block format is read as
//! `weight_j = d·u_j + m` with u_j unsigned 8-bit, per block of 32:
//!   Q4_1: u = the nibble, d and m the block's;
//!   Q8_0: u = q + 128, d the block's, m = −128·d;
//!   Q4_K: u = the nibble, d = d·sc_j and m = −dmin·m_j of sub-block j,
//! and every activation row is quantized per block of 32 (`a_j ≈ d_a·q_j`, `s_a = d_a·Σ q_j`, as
//! the decode kernel's Q8_1 blocks), so one block of a dot product is
//!   d·d_a·Σ u_j·q_j + m·s_a:
//! an unsigned × signed integer sum (exactly `vpdpbusd`'s operands), one float multiply-add, and
//! a minimum term that is a small product over blocks.
//!
//! A tile of 4 weight rows is unpacked to those bytes and scales once per call (it then stays in
//! L1 while every activation row passes it); 4 activation rows share each load of the tile.
//! Other CPUs keep the f32 route ([`available`]).

use crate::quant_matvec::{ActBlock, QuantMatvec};

/// Weights per block.
const QK: usize = 32;

/// Weight rows unpacked together, and activation rows that share each load of them.
const TILE_ROWS: usize = 4;
const TILE_ACTS: usize = 4;

/// Whether this CPU runs the integer product (AVX-512 F/BW/VNNI, within `MINIGPT4_CPU`).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu::cpu_level() >= crate::cpu::CpuLevel::Avx512Vnni
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Activation rows quantized per block, padded to whole pairs of blocks (`vpdpbusd` takes 64
/// bytes): `qs` [m, 32·blocks], `d` [m, blocks]; `s` [m, s_blocks], padded to whole registers of
/// 16 (the offsets' product runs 16 blocks per instruction).
pub(crate) struct Activations {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    rows: usize,
    blocks: usize,
    s_blocks: usize,
}

impl Activations {
    pub(crate) fn new(blocks: &[ActBlock], rows: usize) -> Self {
        let per_row = blocks.len() / rows;
        let (padded, s_padded) = (per_row.next_multiple_of(2), per_row.next_multiple_of(16));
        let mut qs = vec![0i8; rows * padded * QK];
        let (mut d, mut s) = (vec![0f32; rows * padded], vec![0f32; rows * s_padded]);
        for (i, row) in blocks.chunks_exact(per_row).enumerate() {
            for (b, blk) in row.iter().enumerate() {
                let at = i * padded + b;
                qs[at * QK..(at + 1) * QK].copy_from_slice(&blk.qs);
                d[at] = blk.d;
                s[i * s_padded + b] = blk.s;
            }
        }
        Self { qs, d, s, rows, blocks: padded, s_blocks: s_padded }
    }
}

/// One weight row unpacked: bytes u [32·blocks] in the activation's order, and per block the
/// scale d and offset m (zero in the padding; m padded like the activations' s).
#[derive(Default)]
struct Unpacked {
    u: Vec<u8>,
    d: Vec<f32>,
    m: Vec<f32>,
}

/// Unpacks row `r` of `mv` into `out` (see the module note for each format).
fn unpack_row(mv: &QuantMatvec, data: &[u8], r: usize, acts: &Activations, out: &mut Unpacked) {
    use crate::quant_matvec::Format;
    let nb = mv.cols / QK;
    out.u.clear();
    out.u.resize(acts.blocks * QK, 0);
    out.d.clear();
    out.d.resize(acts.blocks, 0.0);
    out.m.clear();
    out.m.resize(acts.s_blocks, 0.0);
    let bb = mv.format.block_bytes();
    let w = &data[r * nb * bb..(r + 1) * nb * bb];
    match mv.format {
        Format::Q4_1 => {
            let sc = &mv.scales[r * nb * 2..(r + 1) * nb * 2];
            for (b, block) in w.chunks_exact(bb).enumerate() {
                let u = &mut out.u[b * QK..(b + 1) * QK];
                for (j, &q) in block[4..20].iter().enumerate() {
                    (u[j], u[j + 16]) = (q & 0x0F, q >> 4);
                }
                (out.d[b], out.m[b]) = (sc[2 * b], sc[2 * b + 1]);
            }
        }
        Format::Q8_0 => {
            let table = crate::quant_matvec::f16_table();
            for (b, block) in w.chunks_exact(bb).enumerate() {
                for (u, &q) in out.u[b * QK..(b + 1) * QK].iter_mut().zip(&block[2..34]) {
                    *u = q ^ 0x80;
                }
                let d = table[u16::from_le_bytes([block[0], block[1]]) as usize];
                (out.d[b], out.m[b]) = (d, -128.0 * d);
            }
        }
        Format::Q4K => {
            let table = crate::quant_matvec::f16_table();
            for (s, sb) in w.chunks_exact(crate::quant_matvec::Q4K_BYTES).enumerate() {
                let (d, dmin, scales) = crate::quant_matvec::q4k_header(sb, table);
                for j in 0..8 {
                    let (sc, m) = crate::quant_matvec::scale_min_k4(j, scales);
                    let b = s * 8 + j;
                    let (q, shift) = (&sb[16 + 32 * (j / 2)..48 + 32 * (j / 2)], 4 * (j % 2));
                    for (u, &q) in out.u[b * QK..(b + 1) * QK].iter_mut().zip(q) {
                        *u = (q >> shift) & 0x0F;
                    }
                    (out.d[b], out.m[b]) = (d * sc as f32, -dmin * m as f32);
                }
            }
        }
    }
}

/// `out_t[r·m + i]` = row `first + r` of `mv` · activation row i, for the rows of `out_t`.
pub(crate) fn rows_times_activations(
    mv: &QuantMatvec,
    data: &[u8],
    acts: &Activations,
    first: usize,
    out_t: &mut [f32],
) {
    let m = acts.rows;
    let n_rows = out_t.len() / m;
    let mut tile: [Unpacked; TILE_ROWS] = Default::default();
    let mut r = 0;
    while r < n_rows {
        let rows = TILE_ROWS.min(n_rows - r);
        for (k, t) in tile.iter_mut().enumerate().take(rows) {
            unpack_row(mv, data, first + r + k, acts, t);
        }
        let out = &mut out_t[r * m..(r + rows) * m];
        let mut i = 0;
        while i < m {
            let n_acts = TILE_ACTS.min(m - i);
            tile_product(&tile[..rows], acts, i, n_acts, out, m);
            i += n_acts;
        }
        r += rows;
    }
}

/// The tile's rows against activation rows `i0..i0 + n_acts`, written at `out[r·m + i]`.
fn tile_product(tile: &[Unpacked], acts: &Activations, i0: usize, n_acts: usize, out: &mut [f32], m: usize) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: `available` found AVX-512 F/BW/VNNI.
        unsafe {
            match (tile.len(), n_acts) {
                (4, 4) => avx512::tile::<4, 4>(tile, acts, i0, out, m),
                (4, _) => (0..n_acts).for_each(|k| avx512::tile::<4, 1>(tile, acts, i0 + k, out, m)),
                (_, 4) => tile
                    .chunks(1)
                    .enumerate()
                    .for_each(|(r, t)| avx512::tile::<1, 4>(t, acts, i0, &mut out[r * m..], m)),
                _ => tile.chunks(1).enumerate().for_each(|(r, t)| {
                    (0..n_acts).for_each(|k| avx512::tile::<1, 1>(t, acts, i0 + k, &mut out[r * m..], m))
                }),
            }
        }
        return;
    }
    for (r, w) in tile.iter().enumerate() {
        for i in i0..i0 + n_acts {
            out[r * m + i] = dot_scalar(w, acts, i);
        }
    }
}

/// One output in plain arithmetic: the reference the SIMD tile is tested against.
fn dot_scalar(w: &Unpacked, acts: &Activations, i: usize) -> f32 {
    let nb = acts.blocks;
    let mut acc = 0f32;
    for b in 0..nb {
        let qa = &acts.qs[(i * nb + b) * QK..(i * nb + b + 1) * QK];
        let isum: i32 = w.u[b * QK..(b + 1) * QK].iter().zip(qa).map(|(&u, &q)| u as i32 * q as i32).sum();
        acc += w.d[b] * acts.d[i * nb + b] * isum as f32 + w.m[b] * acts.s[i * acts.s_blocks + b];
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Activations, Unpacked, QK};
    use std::arch::x86_64::*;

    /// R weight rows × I activation rows. Per pair of blocks (64 bytes): each row's bytes and
    /// two scales (each repeated over 8 lanes) are loaded once; per activation row, its 64 bytes
    /// and two scales once; per (row, activation) one `vpdpbusd` into fresh i32 lanes (lanes 0–7
    /// are the first block's partial sums, 8–15 the second's, ≤ 4·255·127 each), converted and
    /// multiplied by d·d_a into an f32 accumulator. The offsets Σ m·s then go into the same
    /// accumulator 16 blocks per instruction.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const R: usize, const I: usize>(
        tile: &[Unpacked],
        acts: &Activations,
        i0: usize,
        out: &mut [f32],
        m: usize,
    ) {
        let nb = acts.blocks;
        let (qs, ad) = (acts.qs.as_ptr(), acts.d.as_ptr());
        let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        // Two floats at `p`, each over 8 lanes.
        let spread = |p: *const f32| {
            let two = _mm_castsi128_ps(_mm_loadl_epi64(p as *const __m128i));
            _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(two))
        };
        let mut acc = [[_mm512_setzero_ps(); R]; I];
        let mut p = 0;
        while p < nb {
            let mut w = [_mm512_setzero_si512(); R];
            let mut wd = [_mm512_setzero_ps(); R];
            for r in 0..R {
                // SAFETY: blocks p, p + 1 exist in every unpacked row (padded to pairs).
                w[r] = _mm512_loadu_si512(tile[r].u.as_ptr().add(p * QK) as *const _);
                wd[r] = spread(tile[r].d.as_ptr().add(p));
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let at = (i0 + i) * nb + p;
                // SAFETY: row i0 + i < m and blocks p, p + 1 of it exist (padded to pairs).
                let a = _mm512_loadu_si512(qs.add(at * QK) as *const _);
                let da = spread(ad.add(at));
                for r in 0..R {
                    let dp = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[r], a);
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), _mm512_mul_ps(wd[r], da), acc[r]);
                }
            }
            p += 2;
        }
        let sb = acts.s_blocks;
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: s and m have s_blocks (a multiple of 16) values per row.
            let s = acts.s.as_ptr().add((i0 + i) * sb);
            for (r, acc) in acc.iter_mut().enumerate() {
                let wm = tile[r].m.as_ptr();
                for b in (0..sb).step_by(16) {
                    *acc = _mm512_fmadd_ps(_mm512_loadu_ps(wm.add(b)), _mm512_loadu_ps(s.add(b)), *acc);
                }
                out[r * m + i0 + i] = _mm512_reduce_add_ps(*acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant_matvec::quantize_activations;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The tile kernels (every shape: 4×4, 4×1, 1×4, 1×1) against the scalar sum of the same
    /// integers, and the whole product against the f32 product with the dequantized matrix.
    #[test]
    fn integer_product_matches_scalar_and_dequantized_references() {
        let dev = Device::Cpu;
        for (dtype, rows, cols, m) in [
            (GgmlDType::Q4_1, 37, 576, 19),
            (GgmlDType::Q8_0, 41, 96, 18),
            (GgmlDType::Q8_0, 9, 64, 5),
            (GgmlDType::Q4K, 13, 512, 17),
        ] {
            let w = Tensor::from_vec(random(rows * cols, 1), (rows, cols), &dev).unwrap();
            let mv = QuantMatvec::new(Arc::new(QTensor::quantize(&w, dtype).unwrap())).unwrap();
            let x = random(m * cols, 2);
            let acts = Activations::new(&quantize_activations(crate::quant_matvec::Format::Q8_0, &x), m);
            let data = mv.qtensor().data().unwrap();
            let mut got = vec![0f32; rows * m];
            rows_times_activations(&mv, &data, &acts, 0, &mut got);
            let mut unpacked = Unpacked::default();
            for r in 0..rows {
                unpack_row(&mv, &data, r, &acts, &mut unpacked);
                for i in 0..m {
                    let want = dot_scalar(&unpacked, &acts, i);
                    let g = got[r * m + i];
                    assert!((g - want).abs() <= 1e-4 * want.abs().max(1.0), "{dtype:?} ({r}, {i}): {g} vs {want}");
                }
            }
            // Against x · dequantized(w)ᵀ in f32: the 8-bit activations' rounding only.
            let wd = mv.qtensor().dequantize(&dev).unwrap();
            let xt = Tensor::from_slice(&x, (m, cols), &dev).unwrap();
            let want: Vec<f32> = xt.matmul(&wd.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = (0..rows * m).fold(0f32, |a, k| a.max((got[(k % rows) * m + k / rows] - want[k]).abs())) / scale;
            assert!(err < 1e-2, "{dtype:?}: relative error {err}");
        }
    }
}
