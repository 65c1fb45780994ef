//! Attention of one new token against the key/value cache, for decoding on the CPU.
//!
//! Per token and layer this is a few hundred dot products of one head's width: candle's path
//! (`q·kᵀ` through the gemm crate, scale, softmax, `p·v`, each its own op and allocation, and the
//! cache concatenated anew every token) spent about a fifth of SmolLM2's decoding in gemm's
//! set-up for matrices of a few rows. Here one call reads the cache where it lies (buffers with
//! room for more positions, the first `len` filled) and writes the heads' outputs
//! (`softmax(q·kᵀ/√d)·v`, Vaswani et al. 2017, eq. 1). Grouped-query attention (Ainslie et al.
//! 2023): query head h reads key/value head h / (heads / kv_heads), as `repeat_kv` in
//! transformers' Llama; the heads of a group share each load of their cache.
//!
//! The arithmetic is the composite path's, operation for operation: each score is one
//! sequential fused multiply-add chain over the head's dimensions (what the gemm microkernel
//! does per output), scaled by the f32 reciprocal of √d; the softmax subtracts the maximum,
//! sums in order and divides; each output is a sequential fused multiply-add chain over
//! positions. Greedy decoding can hinge on near-tied logits (SmolLM2's Paris prompt does), so
//! this kernel keeps the tokens the composite path gave. The speed comes from the layout: keys
//! are stored transposed, [head dim, capacity], so 8 positions' chains run side by side in one
//! vector register.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::cpu::slice;

/// `softmax(q·kᵀ·scale)·v` for one query position: `q` [B, H, 1, D]; `k_t` [B, KV, D, capacity]
/// (keys transposed) and `v` [B, KV, capacity, D], contiguous, positions `0..len` filled; H a
/// multiple of KV. Returns [B, 1, H·D] (the heads side by side, as the output projection takes
/// them).
pub fn decode_attention(q: &Tensor, k_t: &Tensor, v: &Tensor, len: usize, scale: f32) -> candle_core::Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(k_t, v, &DecodeAttention { len, scale })
}

struct DecodeAttention {
    len: usize,
    scale: f32,
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (q, k, v) = (slice::<f32>(qs, ql, op)?, slice::<f32>(ks, kl, op)?, slice::<f32>(vs, vl, op)?);
        let &[b, heads, 1, d] = ql.dims() else { bail!("{op}: query {:?} is not [B, H, 1, D]", ql.dims()) };
        let &[vb, kv_heads, cap, vd] = vl.dims() else { bail!("{op}: value cache {:?} is not 4-D", vl.dims()) };
        if vb != b || vd != d || kl.dims() != [b, kv_heads, d, cap] || kv_heads == 0 || heads % kv_heads != 0 {
            bail!("{op}: query {:?} does not fit caches {:?} / {:?}", ql.dims(), kl.dims(), vl.dims());
        }
        if self.len == 0 || self.len > cap {
            bail!("{op}: {} filled positions in a cache of {cap}", self.len);
        }
        let n_rep = heads / kv_heads;
        let mut out = vec![0f32; b * heads * d];
        let mut scores = vec![0f32; n_rep * self.len];
        let group_fn = group_fn();
        for (g, o) in out.chunks_exact_mut(n_rep * d).enumerate() {
            let at = g * cap * d;
            let cache = Cache { k_t: &k[at..at + cap * d], v: &v[at..at + self.len * d], cap, len: self.len };
            group_fn(&q[g * n_rep * d..(g + 1) * n_rep * d], cache, self.scale, &mut scores, o);
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[b, 1, heads * d])))
    }
}

/// One key/value head's cache: keys [D, cap] (transposed), values [len, D].
#[derive(Clone, Copy)]
struct Cache<'a> {
    k_t: &'a [f32],
    v: &'a [f32],
    cap: usize,
    len: usize,
}

/// One group of query heads `q` [n, D] sharing a key/value head: for each, `o = softmax(q·kⱼ·
/// scale)ⱼ · v` over the filled positions j (`scores` is scratch of ≥ n·len values).
type GroupFn = fn(&[f32], Cache, f32, &mut [f32], &mut [f32]);

/// The crate is built for baseline x86-64 (SSE2, no FMA instruction: `mul_add` is a libm call
/// there); the same loops compiled with AVX2 and FMA run 8 lanes of fused multiply-adds.
fn group_fn() -> GroupFn {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::cpu_level() >= crate::cpu::CpuLevel::Avx2 {
        return |q, cache, scale, scores, o| {
            // SAFETY: `cpu_level` found AVX2 and FMA.
            unsafe { group_avx2(q, cache, scale, scores, o) }
        };
    }
    group
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn group_avx2(q: &[f32], cache: Cache, scale: f32, scores: &mut [f32], o: &mut [f32]) {
    group(q, cache, scale, scores, o)
}

#[inline(always)]
fn group(q: &[f32], cache: Cache, scale: f32, scores: &mut [f32], o: &mut [f32]) {
    let Cache { k_t, v, cap, len } = cache;
    let d = k_t.len() / cap;
    for (qh, s) in q.chunks_exact(d).zip(scores.chunks_exact_mut(len)) {
        // s[j] = Σ_i q[i]·k_t[i][j], one chain over i per j. 32 positions at a time are four
        // independent vector chains (one chain waits on its multiply-add's latency), then 8 at a
        // time, then one.
        let mut j = 0;
        while j + 32 <= len {
            score_block::<32>(qh, k_t, cap, j, scale, &mut s[j..j + 32]);
            j += 32;
        }
        while j + 8 <= len {
            score_block::<8>(qh, k_t, cap, j, scale, &mut s[j..j + 8]);
            j += 8;
        }
        for j in j..len {
            score_block::<1>(qh, k_t, cap, j, scale, &mut s[j..j + 1]);
        }
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0f32;
        for x in s.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        s.iter_mut().for_each(|x| *x /= sum);
    }
    o.fill(0.0);
    for (j, vj) in v.chunks_exact(d).enumerate() {
        for (h, oh) in o.chunks_exact_mut(d).enumerate() {
            let p = scores[h * len + j];
            for (o, &x) in oh.iter_mut().zip(vj) {
                *o = p.mul_add(x, *o);
            }
        }
    }
}

/// `out[l] = scale · Σ_i q[i]·k_t[i][j0 + l]` for `l < W`, each a sequential chain over i.
#[inline(always)]
fn score_block<const W: usize>(q: &[f32], k_t: &[f32], cap: usize, j0: usize, scale: f32, out: &mut [f32]) {
    let mut acc = [0f32; W];
    for (&qi, row) in q.iter().zip(k_t.chunks_exact(cap)) {
        let keys: &[f32; W] = row[j0..j0 + W].try_into().expect("W positions");
        for l in 0..W {
            acc[l] = qi.mul_add(keys[l], acc[l]);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Against candle's composite ops (`repeat_kv`, matmul, softmax, matmul) on the filled part
    /// of a cache with spare room: equal to the last bit (see the module's note on order).
    #[test]
    fn matches_composite_attention_with_grouped_heads() {
        let dev = Device::Cpu;
        for (len, d) in [(17, 40), (24, 64), (3, 8)] {
            let (b, heads, kv_heads, cap) = (2, 6, 2, 24);
            let q = Tensor::randn(0f32, 1.0, (b, heads, 1, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, kv_heads, cap, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, kv_heads, cap, d), &dev).unwrap();
            let k_t = k.transpose(2, 3).unwrap().contiguous().unwrap();
            let got = decode_attention(&q, &k_t, &v, len, (1.0 / (d as f64).sqrt()) as f32).unwrap();
            let n_rep = heads / kv_heads;
            let qg = q.reshape((b, kv_heads, n_rep, d)).unwrap();
            let filled = |x: &Tensor| x.narrow(2, 0, len).unwrap().contiguous().unwrap();
            let scores = (qg.matmul(&filled(&k).t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            let want = probs.matmul(&filled(&v)).unwrap().reshape((b, 1, heads * d)).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff <= 1e-6, "len {len}, d {d}: max abs diff {diff}");
        }
    }

    /// The AVX2 build of the per-group loop against the baseline one, whatever MINIGPT4_CPU says:
    /// the same operations in the same order, so the same bits.
    #[test]
    fn simd_and_baseline_groups_agree() {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let dev = Device::Cpu;
            let (d, n, len, cap) = (72, 3, 33, 40);
            let r = |shape: (usize, usize)| {
                Tensor::randn(0f32, 1.0, shape, &dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            let (q, k_t, v) = (r((n, d)), r((d, cap)), r((len, d)));
            let cache = Cache { k_t: &k_t, v: &v, cap, len };
            let (mut s1, mut s2) = (vec![0f32; n * len], vec![0f32; n * len]);
            let (mut o1, mut o2) = (vec![1f32; n * d], vec![2f32; n * d]);
            group(&q, cache, 0.2, &mut s1, &mut o1);
            // SAFETY: AVX2 and FMA detected above.
            unsafe { group_avx2(&q, cache, 0.2, &mut s2, &mut o2) };
            assert_eq!(o1, o2);
        }
    }

    #[test]
    fn refuses_a_length_beyond_the_cache() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 1, 8), DType::F32, &dev).unwrap();
        let k_t = Tensor::zeros((1, 1, 8, 4), DType::F32, &dev).unwrap();
        let v = Tensor::zeros((1, 1, 4, 8), DType::F32, &dev).unwrap();
        assert!(decode_attention(&q, &k_t, &v, 5, 1.0).is_err());
        assert!(decode_attention(&q, &k_t, &v, 0, 1.0).is_err());
        assert!(decode_attention(&q, &v, &v, 2, 1.0).is_err(), "keys not transposed");
    }
}
