//! What sits between the vision encoder and the projection: BLIP-2's Q-Former, or MiniGPT-4
//! Llama-2's "merge N" (drop CLS, concatenate N consecutive tokens in raster order).

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::qformer::QFormer;

pub enum Adapter {
    QFormer(Box<QFormer>),
    Merge(usize),
}

impl Adapter {
    /// Width of the adapter's output tokens, given the vision width.
    pub fn out_dim(&self, vision_dim: usize) -> usize {
        match self {
            Adapter::QFormer(q) => q.config().hidden_size,
            Adapter::Merge(n) => vision_dim * n,
        }
    }

    /// Number of image tokens the LLM sees, given the encoder's token count (CLS included).
    pub fn num_tokens(&self, vision_tokens: usize) -> usize {
        match self {
            Adapter::QFormer(q) => q.num_query_tokens(),
            Adapter::Merge(n) => vision_tokens.saturating_sub(1) / n,
        }
    }

    /// `image` [B, N, D] after `ln_vision`.
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        match self {
            Adapter::QFormer(q) => q.forward(image),
            Adapter::Merge(n) => merge_tokens(image, *n),
        }
    }
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
