//! `--warm-start nouns|classes|classes+nouns`: closed-form starting projections for stage 1.
//!
//! `classes` (a classifier encoder): each class's probability is mapped onto the LLM's embedding
//! of the class's everyday noun ([`fit_classes`]); `classes+nouns` then bends that map toward the
//! training captions' nouns ([`refit_toward`]). `nouns`, for any encoder, is described below.
//!
//! Every training image's adapter tokens, averaged, are regressed (ridge, closed form) onto the
//! LLM's input embedding of its caption's main noun ([`crate::keyword::main_noun`]: "A spiny
//! lobster, from …" → " lobster"). The projection is linear, so the mean of an image's projected
//! tokens becomes a guess at the word for what it shows.
//!
//! Why: on a CPU the language-model steps are the expensive part of training (about a second
//! per sample on the tiny model), and from a random projection the first hundreds of them go to
//! finding where words live in the LLM's embedding space. This fit takes seconds and starts
//! stage 1 there. It does not replace stage 1: on its own, the blurred mix of tokens does not
//! make the LLM name the object; the language-model loss sharpens it.

use std::str::FromStr;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use minigpt4_core::llama::Llama;
use minigpt4_core::tokenizer::Tokenizer;
use minigpt4_data::manifest::Record;
use serde::{Deserialize, Serialize};

use crate::features::FeatureStore;
use crate::keyword::main_noun;

/// How the projection starts when there is no `--init` and no checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarmStart {
    /// Random, as MiniGPT-4 starts.
    #[default]
    Random,
    /// Ridge regression of pooled image features onto caption-noun embeddings.
    Nouns,
    /// For the `classes` adapter: slot t of class c maps onto the t-th token of c's noun.
    Classes,
    /// `classes`, then refined on the training captions: a ridge fit toward the closed form.
    ClassesNouns,
}

impl WarmStart {
    /// Whether this start reads a class table (`--class-names`).
    pub fn uses_classes(self) -> bool {
        matches!(self, Self::Classes | Self::ClassesNouns)
    }
}

impl FromStr for WarmStart {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "random" => Ok(Self::Random),
            "nouns" => Ok(Self::Nouns),
            "classes" => Ok(Self::Classes),
            "classes+nouns" => Ok(Self::ClassesNouns),
            _ => bail!("unknown warm start `{s}` (expected random, nouns, classes or classes+nouns)"),
        }
    }
}

/// Ridge strength relative to the mean variance of a feature dimension. Of 1, 0.1 and 0.01,
/// 0.01 predicted nouns best on a 15% split of 2,682 training images (nearest noun embedding
/// right for 31% vs 25% at 1); the eval's held-out split was not used to choose it.
pub const RIDGE: f64 = 0.01;

/// `W [d_out, d_in]`, `b [d_out]` (f32) minimising `Σ‖W xᵢ + b − yᵢ‖² + λ‖W‖²` for rows `x`
/// `[N, d_in]` and `y` `[N, d_out]`, with `λ = ridge · tr(XcᵀXc) / d_in` (`Xc`: centred x; the
/// bias is not penalised). Solved in f64 through a Cholesky factorisation.
pub fn fit(x: &Tensor, y: &Tensor, ridge: f64) -> Result<(Tensor, Tensor)> {
    let (n, d_in) = x.dims2()?;
    let (ny, d_out) = y.dims2()?;
    if n != ny || n < 2 {
        bail!("ridge fit needs at least 2 rows and as many targets ({n} rows, {ny} targets)");
    }
    let x = x.to_dtype(DType::F64)?;
    let y = y.to_dtype(DType::F64)?;
    let (mx, my) = (x.mean_keepdim(0)?, y.mean_keepdim(0)?);
    let xc = x.broadcast_sub(&mx)?;
    let yc = y.broadcast_sub(&my)?;
    let mut g = xc.t()?.matmul(&xc)?.flatten_all()?.to_vec1::<f64>()?;
    let mut r = xc.t()?.matmul(&yc)?.flatten_all()?.to_vec1::<f64>()?;
    let trace: f64 = (0..d_in).map(|i| g[i * d_in + i]).sum();
    let lambda = (ridge * trace / d_in as f64).max(f64::MIN_POSITIVE);
    for i in 0..d_in {
        g[i * d_in + i] += lambda;
    }
    cholesky_solve(&mut g, &mut r, d_in, d_out)?;
    let device = x.device();
    let wt = Tensor::from_vec(r, (d_in, d_out), device)?;
    let b = my.squeeze(0)?.sub(&mx.matmul(&wt)?.squeeze(0)?)?;
    Ok((wt.t()?.contiguous()?.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?))
}

/// Solves `A X = B` in place for a symmetric positive definite `a` `[n, n]` (overwritten by its
/// Cholesky factor) and `b` `[n, m]` (overwritten by `X`), both row-major.
fn cholesky_solve(a: &mut [f64], b: &mut [f64], n: usize, m: usize) -> Result<()> {
    // A = L Lᵀ, L in the lower triangle of `a`, row by row.
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (&a[i * n..i * n + j], &a[j * n..j * n + j]);
            let s = a[i * n + j] - ri.iter().zip(rj).map(|(p, q)| p * q).sum::<f64>();
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    bail!("ridge fit: the feature covariance is not positive definite (row {i})");
                }
                a[i * n + i] = s.sqrt();
            } else {
                a[i * n + j] = s / a[j * n + j];
            }
        }
    }
    // L Z = B, then Lᵀ X = Z; rows of B are updated as whole vectors.
    for i in 0..n {
        for k in 0..i {
            let l = a[i * n + k];
            let (head, tail) = b.split_at_mut(i * m);
            for (t, s) in tail[..m].iter_mut().zip(&head[k * m..k * m + m]) {
                *t -= l * s;
            }
        }
        let d = a[i * n + i];
        b[i * m..i * m + m].iter_mut().for_each(|t| *t /= d);
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            let l = a[k * n + i];
            let (head, tail) = b.split_at_mut(k * m);
            for (t, s) in head[i * m..i * m + m].iter_mut().zip(&tail[..m]) {
                *t -= l * s;
            }
        }
        let d = a[i * n + i];
        b[i * m..i * m + m].iter_mut().for_each(|t| *t /= d);
    }
    Ok(())
}

/// The fitted starting projection and what it was fitted on.
pub struct NounFit {
    pub weight: Tensor,
    pub bias: Tensor,
    /// Records with a usable image and a caption with a main noun.
    pub records: usize,
    pub distinct_nouns: usize,
}

/// Fits the `nouns` warm start.
pub fn fit_nouns(t: &NounTargets) -> Result<NounFit> {
    let (weight, bias) = fit(&t.x, &t.y, RIDGE)?;
    Ok(NounFit { weight, bias, records: t.x.dim(0)?, distinct_nouns: t.distinct })
}

/// Ridge strength of [`refit_toward`], relative like [`RIDGE`]. The closed form is a good start,
/// so the training captions only bend it: of 0.01, 0.1, 1 and 10, 1 gave the most keyword hits
/// through the LLM on a validation fifth of the training records (24.1%, 25.9%, 27.7%, 17.5%;
/// closed form alone 15.1%); the eval's held-out split was not used to choose it.
pub const REFIT_RIDGE: f64 = 1.0;

/// `classes+nouns`: the closed-form start `w0` refined on the training captions, minimising
/// `Σ‖W xᵢ + b − yᵢ‖² + λ‖W − W₀‖²` (`xᵢ`: image i's mean adapter token, `yᵢ`: its caption noun's
/// embedding). With `V = W − W₀` this is the plain ridge fit of the residuals `yᵢ − W₀xᵢ`.
/// It lets the training data correct what the class names get wrong (a classifier that calls
/// every pair of pliers a "can opener", clip art that it calls a "comic book").
pub fn refit_toward(w0: &Tensor, t: &NounTargets) -> Result<NounFit> {
    let w0 = w0.to_dtype(DType::F32)?;
    let residual = (&t.y - t.x.matmul(&w0.t()?)?)?;
    let (v, bias) = fit(&t.x, &residual, REFIT_RIDGE)?;
    Ok(NounFit { weight: (w0 + v)?, bias, records: t.x.dim(0)?, distinct_nouns: t.distinct })
}

/// What the noun fits regress: each usable training record's mean adapter token and its
/// caption noun's embedding.
pub struct NounTargets {
    /// `[N, d_a]`
    pub x: Tensor,
    /// `[N, d_llm]`
    pub y: Tensor,
    /// Distinct nouns among the N.
    pub distinct: usize,
}

/// The [`NounTargets`] of `records` (`image_of[i]`: record `i`'s row in `features`); records
/// without a usable image or a caption noun are left out.
pub fn noun_targets(
    records: &[Record],
    image_of: &[Option<usize>],
    features: &FeatureStore,
    llm: &Llama,
    tokenizer: &Tokenizer,
) -> Result<NounTargets> {
    let mut pooled = Vec::new();
    let mut targets = Vec::new();
    let mut nouns = std::collections::HashSet::new();
    for (r, img) in records.iter().zip(image_of) {
        let (Some(img), Some(noun)) = (img, main_noun(&r.caption)) else {
            continue;
        };
        // With the leading space: the token the noun is inside a sentence.
        let ids = tokenizer.encode(&format!(" {noun}"), false)?;
        if ids.is_empty() {
            continue;
        }
        pooled.push(features.get(*img)?.mean(D::Minus2)?.squeeze(0)?.to_dtype(DType::F32)?);
        targets.push(llm.embed(&ids)?.squeeze(0)?.mean(0)?.to_dtype(DType::F32)?);
        nouns.insert(noun);
    }
    if pooled.len() < 2 {
        bail!("--warm-start: only {} training captions have a main noun; it needs at least 2", pooled.len());
    }
    Ok(NounTargets { x: Tensor::stack(&pooled, 0)?, y: Tensor::stack(&targets, 0)?, distinct: nouns.len() })
}

/// The `noun` column of a class table (tab-separated, a header line naming the columns, one row
/// per class in class order), as written by `scripts/imagenet_nouns.py`.
pub fn read_class_nouns(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let Some(col) = header.iter().position(|h| *h == "noun") else {
        bail!("{}: the header line has no `noun` column", path.display());
    };
    lines
        .enumerate()
        .map(|(i, l)| match l.split('\t').nth(col).map(str::trim) {
            Some(n) if !n.is_empty() => Ok(n.to_string()),
            _ => bail!("{}: row {} has no noun", path.display(), i + 1),
        })
        .collect()
}

/// The `classes` warm start: `W [d_llm, slots·C]` whose column `t·C + c` is the LLM's input
/// embedding of the t-th of the last `slots` tokens of `" {noun_c}"` (a shorter noun fills the
/// first slots with its first token), and a zero bias. With the adapter's probabilities `p`
/// (summing to 1), slot t's soft token is then `Σ_c p_c · E(noun_c)[t]`: the embedding of the
/// predicted noun when the classifier is sure, and a blend of related nouns when it hesitates
/// between, say, two dog breeds (both map onto " dog").
pub fn fit_classes(nouns: &[String], slots: usize, llm: &Llama, tokenizer: &Tokenizer) -> Result<(Tensor, Tensor)> {
    if slots == 0 {
        bail!("--warm-start classes needs at least one slot");
    }
    let c = nouns.len();
    let d = llm.hidden_size();
    let mut columns = vec![None; slots * c];
    for (k, noun) in nouns.iter().enumerate() {
        let ids = tokenizer.encode(&format!(" {noun}"), false)?;
        if ids.is_empty() {
            bail!("class {k}: noun `{noun}` has no tokens");
        }
        let emb = llm.embed(&ids)?.squeeze(0)?.to_dtype(DType::F32)?; // [n, d]
        let n = ids.len();
        for t in 0..slots {
            // Right-aligned: the last slot always holds the noun's last token.
            let i = (t + n).saturating_sub(slots).min(n - 1);
            columns[t * c + k] = Some(emb.get(i)?);
        }
    }
    let columns: Vec<Tensor> = columns.into_iter().map(|t| t.expect("every column set")).collect();
    let weight = Tensor::stack(&columns, 1)?; // [d, slots·C]
    let bias = Tensor::zeros(d, DType::F32, weight.device())?;
    Ok((weight, bias))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn recovers_a_linear_map_and_matches_the_normal_equations() -> Result<()> {
        let dev = Device::Cpu;
        let (n, d_in, d_out) = (200, 12, 5);
        let x = Tensor::randn(0f32, 1.0, (n, d_in), &dev)?;
        let w_true = Tensor::randn(0f32, 1.0, (d_out, d_in), &dev)?;
        let b_true = Tensor::randn(0f32, 1.0, d_out, &dev)?;
        let y = x.matmul(&w_true.t()?)?.broadcast_add(&b_true)?;
        // No noise and a tiny ridge: the exact map comes back.
        let (w, b) = fit(&x, &y, 1e-9)?;
        let dw = (w - &w_true)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let db = (b - &b_true)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(dw < 1e-4 && db < 1e-4, "weight off by {dw}, bias by {db}");

        // With a real ridge the gradient of the objective vanishes at the solution:
        // Xcᵀ(Xc Wᵀ − Yc) + λ Wᵀ = 0.
        let noisy = (y + Tensor::randn(0f32, 0.5, (n, d_out), &dev)?)?;
        let (w, _) = fit(&x, &noisy, 0.3)?;
        let x64 = x.to_dtype(DType::F64)?;
        let xc = x64.broadcast_sub(&x64.mean_keepdim(0)?)?;
        let y64 = noisy.to_dtype(DType::F64)?;
        let yc = y64.broadcast_sub(&y64.mean_keepdim(0)?)?;
        let g = xc.t()?.matmul(&xc)?;
        let lambda = 0.3 * g.to_vec2::<f64>()?.iter().enumerate().map(|(i, r)| r[i]).sum::<f64>() / d_in as f64;
        let wt = w.to_dtype(DType::F64)?.t()?;
        let residual = (xc.matmul(&wt)? - yc)?;
        let grad = (xc.t()?.matmul(&residual)? + (wt * lambda)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(grad < 1e-3, "normal equations off by {grad}");
        Ok(())
    }

    #[test]
    fn class_table_is_read_by_its_header() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("minigpt4-classes-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let table = dir.join("classes.tsv");
        std::fs::write(&table, "index\twnid\tname\tnoun\n0\tn1\ttench\tfish\n1\tn2\ttabby\tcat\n")?;
        assert_eq!(read_class_nouns(&table)?, ["fish", "cat"]);
        std::fs::write(&table, "index\tname\n0\ttench\n")?;
        assert!(read_class_nouns(&table).unwrap_err().to_string().contains("no `noun` column"));
        std::fs::write(&table, "index\tnoun\n0\t\n")?;
        assert!(read_class_nouns(&table).unwrap_err().to_string().contains("row 1 has no noun"));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn refuses_degenerate_input() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3), DType::F32, &dev).unwrap();
        assert!(fit(&x, &x, 0.01).is_err());
        assert!("ridge".parse::<WarmStart>().is_err());
        assert_eq!("nouns".parse::<WarmStart>().unwrap(), WarmStart::Nouns);
        assert_eq!("classes+nouns".parse::<WarmStart>().unwrap(), WarmStart::ClassesNouns);
    }
}
