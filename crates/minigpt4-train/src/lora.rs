//! The LoRA adapter a stage-3 (or `--lora`) run trains: where it starts, and the PEFT folder it
//! ends as.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use minigpt4_core::llama::Llama;
use minigpt4_core::lora::{LoraAdapter, LoraPair, LoraTarget};
use minigpt4_core::model_file::ModelSpec;
use minigpt4_core::weights::Weights;

use crate::config::LoraSettings;
use crate::data::{derive_seed, SplitMix64};

/// MiniGPT-v2's LoRA targets.
pub const TARGETS: [LoraTarget; 2] = [LoraTarget::Q, LoraTarget::V];

/// A fresh adapter on q_proj and v_proj of every layer, as PEFT initialises one: `A`
/// Kaiming-uniform (U(−1/√in, 1/√in)), `B` zero, so the adapted decoder starts as the base.
pub fn fresh(llm: &Llama, settings: LoraSettings, seed: u64, device: &Device) -> Result<LoraAdapter> {
    let cfg = llm.config();
    let (d, hd) = (cfg.hidden_size, cfg.head_dim());
    let mut adapter = LoraAdapter { origin: "a fresh adapter".into(), ..Default::default() };
    for layer in 0..cfg.num_hidden_layers {
        for (k, target) in TARGETS.into_iter().enumerate() {
            let out = match target {
                LoraTarget::Q => cfg.num_attention_heads * hd,
                _ => cfg.num_kv_heads() * hd,
            };
            let bound = 1.0 / (d as f64).sqrt();
            let mut rng = SplitMix64::new(derive_seed(seed, &[5, layer as u64, k as u64]));
            let a: Vec<f32> = (0..settings.r * d).map(|_| ((rng.unit_f64() * 2.0 - 1.0) * bound) as f32).collect();
            let pair = LoraPair {
                a: Tensor::from_vec(a, (settings.r, d), device)?,
                b: Tensor::zeros((out, settings.r), DType::F32, device)?,
                scale: settings.alpha / settings.r as f64,
            };
            adapter.pairs.insert((layer, target), pair);
        }
    }
    Ok(adapter)
}

/// Where training starts: the checkpoint's adapter (PEFT names → tensors) on resume, else the
/// model file's `[llm] lora`, else [`fresh`].
pub fn start(
    llm: &Llama,
    spec: &ModelSpec,
    settings: LoraSettings,
    seed: u64,
    resume: Option<&[(String, Tensor, Tensor, Tensor)]>,
    device: &Device,
) -> Result<LoraAdapter> {
    if let Some(saved) = resume {
        let map: HashMap<String, Tensor> = saved.iter().map(|(n, v, ..)| (n.clone(), v.clone())).collect();
        let w = Weights::from_tensors(map, "the checkpoint's adapter", device, DType::F32);
        return LoraAdapter::from_weights(&w, settings.alpha, false)?.context("the checkpoint holds no LoRA tensors");
    }
    match &spec.llm.lora {
        Some(path) => Ok(LoraAdapter::open(path, spec.llm.lora_alpha.unwrap_or(settings.alpha), device)?),
        None => fresh(llm, settings, seed, device),
    }
}

/// Writes `adapter` as a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`), what
/// `[llm] lora` and PEFT's `PeftModel.from_pretrained` read.
pub fn save_peft(dir: &Path, adapter: &LoraAdapter, settings: LoraSettings, base: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut modules: Vec<&str> =
        adapter.pairs.keys().map(|(_, t)| t.module().rsplit('.').next().unwrap_or("")).collect();
    modules.sort();
    modules.dedup();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": settings.r,
        "lora_alpha": settings.alpha,
        "lora_dropout": 0.05,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "inference_mode": true,
        "base_model_name_or_path": base.display().to_string(),
    });
    crate::io::write_atomic(&dir.join("adapter_config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (&(layer, target), p) in &adapter.pairs {
        let name = |ab: &str| minigpt4_core::lora::peft_name(layer, target, ab);
        named.push((name("A"), p.a.clone()));
        named.push((name("B"), p.b.clone()));
    }
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    crate::io::save_safetensors(&dir.join("adapter_model.safetensors"), &refs, HashMap::new())
}
