//! Checkpoints and the final projection.
//!
//! `DIR/checkpoints/step-NNNNNNNN.safetensors` (one file, written atomically) holds
//!
//! * `llama_proj.weight` `[d_llm, d_a]` and `llama_proj.bias` `[d_llm]` (f32) — so the file is
//!   itself a projection: `minigpt4 describe --projection FILE` or a model file's
//!   `[projection] weights = FILE` read it (other tensors are ignored);
//! * the AdamW state `adamw.exp_avg.llama_proj.{weight,bias}` and
//!   `adamw.exp_avg_sq.llama_proj.{weight,bias}`;
//! * with LoRA training, the adapter under MiniGPT-v2's checkpoint names
//!   (`llama_model.base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, so the file is
//!   also an `[llm] lora`) and its AdamW state under `adamw.exp_avg.lora-state.…` (names without
//!   `.lora_`, which an adapter reader would take for weights);
//! * metadata: `format` = `minigpt4-train-checkpoint/1`, `step` (optimizer steps done, which is
//!   also AdamW's step count and, times `batch × grad_accum`, the position in the seeded data
//!   stream), `samples_seen`, `elapsed_s`, `config` (the [`TrainConfig`] as JSON), `data_digest`,
//!   `encoder_fingerprint`, `llm_digest`.
//!
//! The data order and the stage-2 instruction choices are pure functions of (seed, position), so
//! the step count is the whole RNG state: a resumed run draws exactly what the uninterrupted
//! one would have.
//!
//! `DIR/projection.safetensors` holds only `llama_proj.weight` / `llama_proj.bias` with metadata
//! `format` = `minigpt4-projection/1`, `stage`, `steps`, `in_dim`, `out_dim`, `model`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::config::TrainConfig;
use crate::io;

pub const CHECKPOINT_FORMAT: &str = "minigpt4-train-checkpoint/1";
pub const PROJECTION_FORMAT: &str = "minigpt4-projection/1";
pub const WEIGHT: &str = "llama_proj.weight";
pub const BIAS: &str = "llama_proj.bias";

pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

pub fn checkpoint_path(out: &Path, step: usize) -> PathBuf {
    checkpoint_dir(out).join(format!("step-{step:08}.safetensors"))
}

/// Everything a checkpoint holds.
pub struct Checkpoint {
    pub path: PathBuf,
    pub step: usize,
    pub samples_seen: u64,
    pub elapsed_s: f64,
    pub config: TrainConfig,
    pub data_digest: String,
    pub encoder_fingerprint: String,
    pub llm_digest: String,
    pub weight: Tensor,
    pub bias: Tensor,
    /// (exp_avg, exp_avg_sq) of weight and bias.
    pub weight_moments: (Tensor, Tensor),
    pub bias_moments: (Tensor, Tensor),
    /// Trained LoRA tensors: (PEFT name, value, exp_avg, exp_avg_sq).
    pub lora: Vec<(String, Tensor, Tensor, Tensor)>,
}

fn m_name(which: &str, p: &str) -> String {
    format!("adamw.{which}.{p}")
}

/// Where a LoRA tensor (PEFT name) lives in a checkpoint.
pub fn lora_tensor_name(peft: &str) -> String {
    format!("llama_model.{peft}")
}

fn lora_moment_name(which: &str, peft: &str) -> String {
    m_name(which, &format!("lora-state.{}", peft.replace(".lora_", ".lora-")))
}

impl Checkpoint {
    pub fn save(&self) -> Result<()> {
        let meta = HashMap::from([
            ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("samples_seen".to_string(), self.samples_seen.to_string()),
            ("elapsed_s".to_string(), format!("{}", self.elapsed_s)),
            ("config".to_string(), serde_json::to_string(&self.config)?),
            ("data_digest".to_string(), self.data_digest.clone()),
            ("encoder_fingerprint".to_string(), self.encoder_fingerprint.clone()),
            ("llm_digest".to_string(), self.llm_digest.clone()),
        ]);
        let (wm, wv) = &self.weight_moments;
        let (bm, bv) = &self.bias_moments;
        let names = [
            m_name("exp_avg", WEIGHT),
            m_name("exp_avg_sq", WEIGHT),
            m_name("exp_avg", BIAS),
            m_name("exp_avg_sq", BIAS),
        ];
        let lora_names: Vec<[String; 3]> = self
            .lora
            .iter()
            .map(|(n, ..)| [lora_tensor_name(n), lora_moment_name("exp_avg", n), lora_moment_name("exp_avg_sq", n)])
            .collect();
        let mut tensors: Vec<(&str, &Tensor)> = vec![
            (WEIGHT, &self.weight),
            (BIAS, &self.bias),
            (&names[0], wm),
            (&names[1], wv),
            (&names[2], bm),
            (&names[3], bv),
        ];
        for ((_, value, m, v), [nv, nm, ns]) in self.lora.iter().zip(&lora_names) {
            tensors.extend([(nv.as_str(), value), (nm.as_str(), m), (ns.as_str(), v)]);
        }
        io::save_safetensors(&self.path, &tensors, meta)
    }

    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let l = io::load_safetensors(path, device)?;
        if l.meta("format")? != CHECKPOINT_FORMAT {
            bail!("{}: not a training checkpoint (format `{}`)", path.display(), l.meta("format")?);
        }
        let parse = |k: &str| -> Result<String> { Ok(l.meta(k)?.to_string()) };
        let config: TrainConfig = serde_json::from_str(l.meta("config")?)
            .with_context(|| format!("{}: bad `config` metadata", path.display()))?;
        let get = |n: &str| -> Result<Tensor> { Ok(l.tensor(n)?.clone()) };
        let mut lora = Vec::new();
        let mut names: Vec<&String> =
            l.tensors.keys().filter(|n| n.starts_with("llama_model.") && n.contains(".lora_")).collect();
        names.sort();
        for n in names {
            let peft = &n["llama_model.".len()..];
            lora.push((
                peft.to_string(),
                get(n)?,
                get(&lora_moment_name("exp_avg", peft))?,
                get(&lora_moment_name("exp_avg_sq", peft))?,
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            step: parse("step")?.parse().with_context(|| format!("{}: bad `step`", path.display()))?,
            samples_seen: parse("samples_seen")?
                .parse()
                .with_context(|| format!("{}: bad `samples_seen`", path.display()))?,
            elapsed_s: parse("elapsed_s")?.parse().unwrap_or(0.0),
            config,
            data_digest: parse("data_digest")?,
            encoder_fingerprint: parse("encoder_fingerprint")?,
            llm_digest: parse("llm_digest")?,
            weight: get(WEIGHT)?,
            bias: get(BIAS)?,
            weight_moments: (get(&m_name("exp_avg", WEIGHT))?, get(&m_name("exp_avg_sq", WEIGHT))?),
            bias_moments: (get(&m_name("exp_avg", BIAS))?, get(&m_name("exp_avg_sq", BIAS))?),
            lora,
        })
    }
}

/// Checkpoint files in `out`, newest first, by the step in their name.
pub fn list(out: &Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(checkpoint_dir(out))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    v
}

/// The newest checkpoint that loads; unreadable ones are reported through `warn` and passed over.
pub fn latest(out: &Path, device: &Device, warn: &mut dyn FnMut(String)) -> Option<Checkpoint> {
    for (_, path) in list(out) {
        match Checkpoint::load(&path, device) {
            Ok(c) => return Some(c),
            Err(e) => warn(format!("skipping unreadable checkpoint: {e:#}")),
        }
    }
    None
}

/// Removes temporary files a killed run left behind while writing a checkpoint.
pub fn remove_stale_temporaries(out: &Path) {
    for e in std::fs::read_dir(checkpoint_dir(out)).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(".step-") && name.contains(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Deletes all but the newest `keep` checkpoints (0 keeps all).
pub fn prune(out: &Path, keep: usize) {
    if keep == 0 {
        return;
    }
    for (_, p) in list(out).into_iter().skip(keep) {
        let _ = std::fs::remove_file(p);
    }
}

/// Writes the projection alone, loadable by `Pipeline` as `[projection] weights`.
pub fn save_projection(path: &Path, weight: &Tensor, bias: &Tensor, mut meta: HashMap<String, String>) -> Result<()> {
    meta.insert("format".into(), PROJECTION_FORMAT.into());
    let (out_dim, in_dim) = weight.dims2()?;
    meta.insert("in_dim".into(), in_dim.to_string());
    meta.insert("out_dim".into(), out_dim.to_string());
    io::save_safetensors(path, &[(WEIGHT, weight), (BIAS, bias)], meta)
}
