//! The one trained part of MiniGPT-4: `llama_proj`, Linear(d_adapter → d_llm) with bias.
//! Its output is the soft prompt that stands where `<ImageHere>` was.

use candle_core::{Module, Tensor};
use candle_nn::Linear;

use crate::{Error, Result};
use minigpt4_io::weights::VarBuilder;

pub struct Projector {
    linear: Linear,
    in_dim: usize,
    out_dim: usize,
}

impl Projector {
    /// Reads `llama_proj.weight` [out, in] and `llama_proj.bias` [out] (pass the scope that
    /// holds them, e.g. `weights.pp("llama_proj")`).
    pub fn load(in_dim: usize, out_dim: usize, w: &VarBuilder) -> Result<Self> {
        Ok(Self { linear: candle_nn::linear_b(in_dim, out_dim, true, w.clone())?, in_dim, out_dim })
    }

    pub fn from_tensors(weight: Tensor, bias: Tensor) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        if bias.dims() != [out_dim] {
            return Err(Error::Config(format!(
                "projection bias {:?} does not match weight {:?}",
                bias.dims(),
                weight.dims()
            )));
        }
        Ok(Self { linear: Linear::new(weight, Some(bias)), in_dim, out_dim })
    }

    pub fn weight(&self) -> &Tensor {
        self.linear.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.linear.bias()
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.linear.forward(x)?)
    }
}
