//! AdamW as PyTorch's `torch.optim.AdamW` computes it, with weight decay applied per parameter
//! (MiniGPT-4 decays `llama_proj.weight` but not `llama_proj.bias`; candle-nn's `AdamW` decays
//! every variable). State (`exp_avg`, `exp_avg_sq`, step) is saved in checkpoints.

use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 }
    }
}

/// One trained tensor with its moment estimates.
pub struct Param {
    pub name: String,
    pub var: Var,
    pub decay: bool,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Updates applied so far.
    pub step: usize,
    pub params: Vec<Param>,
}

impl AdamW {
    /// `params`: (name, variable, whether weight decay applies).
    pub fn new(cfg: AdamWConfig, params: Vec<(String, Var, bool)>) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var, decay)| {
                let z = var.as_tensor().zeros_like()?;
                Ok(Param { name, var, decay, exp_avg: z.clone(), exp_avg_sq: z })
            })
            .collect::<Result<_>>()?;
        Ok(Self { cfg, step: 0, params })
    }

    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    pub fn param_mut(&mut self, name: &str) -> Option<&mut Param> {
        self.params.iter_mut().find(|p| p.name == name)
    }

    /// One update with `grads[i]` for `params[i]` at learning rate `lr`:
    ///
    /// ```text
    /// p ← p · (1 − lr·wd)                         (decayed parameters only)
    /// m ← β1·m + (1 − β1)·g ;  v ← β2·v + (1 − β2)·g²
    /// p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
    /// ```
    pub fn update(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            bail!("{} gradients for {} parameters", grads.len(), self.params.len());
        }
        self.step += 1;
        let c = self.cfg;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        for (p, g) in self.params.iter_mut().zip(grads) {
            if g.dims() != p.var.dims() {
                bail!("gradient of `{}` has shape {:?}, the parameter {:?}", p.name, g.dims(), p.var.dims());
            }
            let mut value = p.var.as_tensor().detach();
            if p.decay && c.weight_decay != 0.0 {
                value = value.affine(1.0 - lr * c.weight_decay, 0.0)?;
            }
            p.exp_avg = ((&p.exp_avg * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            p.exp_avg_sq = ((&p.exp_avg_sq * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((p.exp_avg_sq.sqrt()? / bias2_sqrt)? + c.eps)?;
            let value = (value - ((&p.exp_avg / denom)? * step_size)?)?;
            p.var.set(&value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps by hand against the same formulas in f64 scalars.
    #[test]
    fn matches_the_formulas_and_decays_only_where_asked() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.5f64], &dev).unwrap()).unwrap();
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(cfg, vec![("w".into(), w.clone(), true), ("b".into(), b.clone(), false)]).unwrap();
        let grads = [[0.3f64, -0.1], [0.2, 0.4]];
        let gb = [[1.0f64], [-1.0]];
        let lrs = [1e-2, 5e-3];
        let (mut pw, mut pb) = (vec![1.0f64, -2.0], vec![0.5f64]);
        let (mut mw, mut vw, mut mb, mut vb) = (vec![0.0; 2], vec![0.0; 2], vec![0.0; 1], vec![0.0; 1]);
        for s in 0..2 {
            opt.update(&[Tensor::new(&grads[s], &dev).unwrap(), Tensor::new(&gb[s], &dev).unwrap()], lrs[s]).unwrap();
            let t = (s + 1) as i32;
            let one = |p: &mut Vec<f64>, m: &mut Vec<f64>, v: &mut Vec<f64>, g: &[f64], decay: bool| {
                for i in 0..p.len() {
                    if decay {
                        p[i] *= 1.0 - lrs[s] * cfg.weight_decay;
                    }
                    m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
                    v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
                    let denom = v[i].sqrt() / (1.0 - cfg.beta2.powi(t)).sqrt() + cfg.eps;
                    p[i] -= lrs[s] / (1.0 - cfg.beta1.powi(t)) * m[i] / denom;
                }
            };
            one(&mut pw, &mut mw, &mut vw, &grads[s], true);
            one(&mut pb, &mut mb, &mut vb, &gb[s], false);
        }
        let got_w: Vec<f64> = w.as_tensor().to_vec1().unwrap();
        let got_b: Vec<f64> = b.as_tensor().to_vec1().unwrap();
        for (g, e) in got_w.iter().zip(&pw).chain(got_b.iter().zip(&pb)) {
            assert!((g - e).abs() < 1e-15, "{g} vs {e}");
        }
        assert_eq!(opt.step, 2);
    }

    #[test]
    fn bias_is_not_decayed_with_zero_gradient() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[1.0f32], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[1.0f32], &dev).unwrap()).unwrap();
        let mut opt =
            AdamW::new(AdamWConfig::default(), vec![("w".into(), w.clone(), true), ("b".into(), b.clone(), false)])
                .unwrap();
        let z = Tensor::new(&[0.0f32], &dev).unwrap();
        opt.update(&[z.clone(), z], 0.1).unwrap();
        assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0]);
        assert!((w.as_tensor().to_vec1::<f32>().unwrap()[0] - 0.995).abs() < 1e-7);
    }
}
