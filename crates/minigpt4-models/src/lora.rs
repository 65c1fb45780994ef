//! LoRA adapters for the LLaMA decoder (Hu et al., arXiv 2106.09685): a frozen matrix `W`
//! `[out, in]` becomes `W + s·B·A` with `A` `[r, in]`, `B` `[out, r]` and `s = α / r`
//! (`α / √r` with rsLoRA). MiniGPT-v2 puts r = 64, α = 16 on `q_proj` and `v_proj` (DESIGN §6).
//!
//! Read from two layouts, whose names both end in PEFT's
//! `model.layers.N.self_attn.q_proj.lora_A[.default].weight`:
//! * a PEFT adapter folder: `adapter_config.json` (`r`, `lora_alpha`, `use_rslora`) and
//!   `adapter_model.safetensors` (or `adapter_model.bin`), names prefixed `base_model.model.`;
//! * a MiniGPT-v2 checkpoint (`.pth`): names prefixed `llama_model.base_model.model.`, next to
//!   `llama_proj.*`, with no config (α comes from the model file; r from `A`'s shape).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::{Error, Result};
use minigpt4_io::weights::Weights;

/// The decoder matrices an adapter can touch, by their Hugging Face module names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    fn parse(module: &str) -> Option<Self> {
        Some(match module {
            "self_attn.q_proj" => LoraTarget::Q,
            "self_attn.k_proj" => LoraTarget::K,
            "self_attn.v_proj" => LoraTarget::V,
            "self_attn.o_proj" => LoraTarget::O,
            "mlp.gate_proj" => LoraTarget::Gate,
            "mlp.up_proj" => LoraTarget::Up,
            "mlp.down_proj" => LoraTarget::Down,
            _ => return None,
        })
    }

    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Q => "self_attn.q_proj",
            LoraTarget::K => "self_attn.k_proj",
            LoraTarget::V => "self_attn.v_proj",
            LoraTarget::O => "self_attn.o_proj",
            LoraTarget::Gate => "mlp.gate_proj",
            LoraTarget::Up => "mlp.up_proj",
            LoraTarget::Down => "mlp.down_proj",
        }
    }
}

/// PEFT's name of an adapter tensor: `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`
/// (`ab` is "A" or "B"), what adapter folders hold and what a trained adapter is saved under.
pub fn peft_name(layer: usize, target: LoraTarget, ab: &str) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{ab}.weight", target.module())
}

/// One adapted matrix: `W + scale · B · A`.
#[derive(Clone, Debug)]
pub struct LoraPair {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    pub scale: f64,
}

impl LoraPair {
    /// `scale · B · A` `[out, in]`, the update a merge adds to `W`.
    pub fn delta(&self) -> Result<Tensor> {
        Ok((self.b.matmul(&self.a)? * self.scale)?)
    }

    /// `scale · (x · Aᵀ) · Bᵀ` for rows `x` `[.., in]`: the update as a side product, without
    /// forming `B · A` (2·r·(in + out) flops per row instead of touching `in × out` weights).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.a.to_dtype(x.dtype())?;
        let b = self.b.to_dtype(x.dtype())?;
        Ok((x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)? * self.scale)?)
    }
}

/// What `adapter_config.json` says that changes the result; the rest (task type, dropout,
/// target patterns: the tensors present say what is adapted) is ignored.
#[derive(Debug, Deserialize)]
struct PeftConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, serde_json::Value>,
}

/// A LoRA adapter for every matrix it names, by (layer, target).
#[derive(Clone, Debug, Default)]
pub struct LoraAdapter {
    pub pairs: BTreeMap<(usize, LoraTarget), LoraPair>,
    /// The file or folder it came from, for messages.
    pub origin: String,
}

/// `(layer, target, is_a)` of a LoRA tensor name, whatever comes before `layers.N.` and after
/// `lora_A`/`lora_B` (PEFT's adapter name `.default`, `.weight`).
fn parse_name(name: &str) -> Option<(usize, LoraTarget, bool)> {
    let at = name.find("layers.")?;
    let rest = &name[at + "layers.".len()..];
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, rest) = match rest.find(".lora_") {
        Some(i) => (&rest[..i], &rest[i + ".lora_".len()..]),
        None => return None,
    };
    let is_a = match rest.split('.').next()? {
        "A" => true,
        "B" => false,
        _ => return None,
    };
    Some((layer, LoraTarget::parse(module)?, is_a))
}

impl LoraAdapter {
    /// The LoRA tensors among `w`'s names (`None` when there are none), scaled by `alpha / r`
    /// (`alpha / √r` with `rslora`), r read from each `A`.
    pub fn from_weights(w: &Weights, alpha: f64, rslora: bool) -> Result<Option<Self>> {
        let origin = w.origin().to_string();
        let mut halves: BTreeMap<(usize, LoraTarget), (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for name in w.names() {
            if !name.contains(".lora_") {
                continue;
            }
            let Some((layer, target, is_a)) = parse_name(&name) else {
                return Err(Error::BadCheckpoint {
                    file: origin,
                    msg: format!("`{name}`: a LoRA tensor this decoder has no place for"),
                });
            };
            let t = w.get_any(&name)?.to_dtype(DType::F32)?;
            let slot = halves.entry((layer, target)).or_default();
            if is_a {
                slot.0 = Some(t);
            } else {
                slot.1 = Some(t);
            }
        }
        if halves.is_empty() {
            return Ok(None);
        }
        let mut pairs = BTreeMap::new();
        for ((layer, target), (a, b)) in halves {
            let what = format!("layers.{layer}.{}", target.module());
            let bad = |msg: String| Error::BadCheckpoint { file: origin.clone(), msg };
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(format!("{what}: lora_A and lora_B must come together")));
            };
            let ((r, _), (_, rb)) = (a.dims2()?, b.dims2()?);
            if r == 0 || r != rb {
                return Err(bad(format!(
                    "{what}: lora_A {:?} and lora_B {:?} disagree on the rank",
                    a.dims(),
                    b.dims()
                )));
            }
            let scale = if rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
            pairs.insert((layer, target), LoraPair { a, b, scale });
        }
        Ok(Some(Self { pairs, origin }))
    }

    /// A PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors` or `.bin`).
    pub fn from_peft_dir(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| Error::Config(format!("reading {}: {e}", cfg_path.display())))?;
        let cfg: PeftConfig = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: not a PEFT LoRA config: {e}", cfg_path.display())))?;
        let unsupported = if cfg.peft_type.as_deref().is_some_and(|t| t != "LORA") {
            Some(format!("peft_type {:?} (only LORA)", cfg.peft_type.unwrap_or_default()))
        } else if cfg.use_dora {
            Some("DoRA (use_dora)".to_string())
        } else if cfg.fan_in_fan_out {
            Some("fan_in_fan_out (GPT-2's Conv1D layout)".to_string())
        } else if !cfg.alpha_pattern.is_empty() {
            Some("per-module alpha_pattern".to_string())
        } else {
            None
        };
        if let Some(what) = unsupported {
            return Err(Error::Config(format!("{}: {what} is not supported", cfg_path.display())));
        }
        let weights = ["adapter_model.safetensors", "adapter_model.bin"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.exists())
            .ok_or_else(|| Error::Config(format!("{} holds no adapter_model.safetensors or .bin", dir.display())))?;
        let w = Weights::open(&weights, device, DType::F32)?;
        // Each pair's rank comes from its `A` (`rank_pattern` may give modules other ranks than `r`).
        let _ = cfg.r;
        Self::from_weights(&w, cfg.lora_alpha, cfg.use_rslora)?
            .ok_or_else(|| Error::Config(format!("{} holds no LoRA tensors", weights.display())))
    }

    /// A PEFT folder, or a checkpoint holding LoRA tensors (MiniGPT-v2's `.pth`) with `alpha`.
    pub fn open(path: &Path, alpha: f64, device: &Device) -> Result<Self> {
        if path.is_dir() {
            return Self::from_peft_dir(path, device);
        }
        let w = Weights::open(path, device, DType::F32)?;
        Self::from_weights(&w, alpha, false)?
            .ok_or_else(|| Error::Config(format!("{} holds no LoRA tensors (`...lora_A...`)", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_both_layouts_parse() {
        for (name, want) in [
            ("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight", Some((3, LoraTarget::Q, true))),
            (
                "llama_model.base_model.model.model.layers.31.self_attn.v_proj.lora_B.default.weight",
                Some((31, LoraTarget::V, false)),
            ),
            ("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight", Some((0, LoraTarget::Down, true))),
            ("base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight", None),
            ("base_model.model.model.layers.0.self_attn.rotary.lora_A.weight", None),
            ("base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight", None),
            ("llama_proj.weight", None),
        ] {
            assert_eq!(parse_name(name), want, "{name}");
        }
    }
}
