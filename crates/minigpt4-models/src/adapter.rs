//! What sits between the vision encoder and the projection: BLIP-2's Q-Former, MiniGPT-4
//! Llama-2's "merge N" (drop CLS, concatenate N consecutive tokens in raster order), or, for a
//! classifier, "classes": its class probabilities laid out as soft-token slots.

use candle_core::{Tensor, D};

use crate::qformer::QFormer;
use crate::{Error, Result};

pub enum Adapter {
    QFormer(Box<QFormer>),
    Merge(usize),
    /// Class probabilities `p = softmax(logits / temperature)` as `slots` tokens: token t holds
    /// `p` in its t-th block of a `slots·C`-wide vector and zeros elsewhere, so the one linear
    /// projection gives each slot its own map from class evidence to an LLM embedding (slot t of
    /// class c can become the t-th token of c's name).
    Classes {
        slots: usize,
        temperature: f64,
    },
}

impl Adapter {
    /// Width of the adapter's output tokens, given the vision width.
    pub fn out_dim(&self, vision_dim: usize) -> usize {
        match self {
            Adapter::QFormer(q) => q.config().hidden_size,
            Adapter::Merge(n) => vision_dim * n,
            Adapter::Classes { slots, .. } => vision_dim * slots,
        }
    }

    /// Number of image tokens the LLM sees, given the encoder's token count (CLS included).
    pub fn num_tokens(&self, vision_tokens: usize) -> usize {
        match self {
            Adapter::QFormer(q) => q.num_query_tokens(),
            Adapter::Merge(n) => vision_tokens.saturating_sub(1) / n,
            Adapter::Classes { slots, .. } => *slots,
        }
    }

    /// `image` [B, N, D] after `ln_vision`.
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        match self {
            Adapter::QFormer(q) => q.forward(image),
            Adapter::Merge(n) => merge_tokens(image, *n),
            Adapter::Classes { slots, temperature } => class_slots(image, *slots, *temperature),
        }
    }
}

/// [B, 1, C] logits → [B, slots, slots·C] (see [`Adapter::Classes`]).
pub fn class_slots(logits: &Tensor, slots: usize, temperature: f64) -> Result<Tensor> {
    let (b, tokens, c) = logits.dims3()?;
    if tokens != 1 || slots == 0 || temperature.is_nan() || temperature <= 0.0 {
        return Err(Error::Config(format!(
            "the classes adapter needs one logits token, slots ≥ 1 and a positive temperature (got {tokens} tokens, {slots} slots, temperature {temperature})"
        )));
    }
    let p = candle_nn::ops::softmax(&(logits / temperature)?, D::Minus1)?;
    let rows = (0..slots)
        .map(|t| {
            let before = Tensor::zeros((b, 1, t * c), p.dtype(), p.device())?;
            let after = Tensor::zeros((b, 1, (slots - 1 - t) * c), p.dtype(), p.device())?;
            Tensor::cat(&[&before, &p, &after], 2)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 1)?)
}

/// Drops the CLS token and concatenates every `n` consecutive patch tokens:
/// [B, 1 + P, D] → [B, P / n, n·D].
pub fn merge_tokens(x: &Tensor, n: usize) -> Result<Tensor> {
    let (b, tokens, d) = x.dims3()?;
    let patches = tokens.saturating_sub(1);
    if n == 0 || patches == 0 || patches % n != 0 {
        return Err(Error::Config(format!("cannot merge {patches} patch tokens in groups of {n}")));
    }
    Ok(x.narrow(1, 1, patches)?.contiguous()?.reshape((b, patches / n, n * d))?)
}
