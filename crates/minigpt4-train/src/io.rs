//! Files written so that a crash never leaves a half-written one under the final name: write a
//! temporary file next to it, fsync it, rename it over the target, fsync the directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest as _, Sha256};

/// Writes `bytes` to `path` atomically (temp + fsync + rename + directory fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    minigpt4_io::files::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Serialises f32 tensors (any device) with string metadata and writes them atomically.
pub fn save_safetensors(path: &Path, tensors: &[(&str, &Tensor)], metadata: HashMap<String, String>) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.to_string(), t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
        .with_context(|| format!("serialising {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// A safetensors file's tensors (on `device`) and its `__metadata__`.
pub struct Loaded {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
    pub path: PathBuf,
}

impl Loaded {
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).with_context(|| format!("{}: tensor `{name}` is missing", self.path.display()))
    }

    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{}: metadata `{key}` is missing", self.path.display()))
    }
}

pub fn load_safetensors(path: &Path, device: &Device) -> Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file ({e})", path.display()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("{}: reading tensors", path.display()))?;
    Ok(Loaded { tensors, metadata, path: path.to_path_buf() })
}

/// A 128-bit hex digest (SHA-256, cut) of a sequence of byte strings, each length-suffixed so
/// that ("ab", "c") and ("a", "bc") differ. It names caches and detects changed inputs.
#[derive(Clone, Default)]
pub struct Digest {
    h: Sha256,
}

impl Digest {
    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        self.h.update(bytes);
        self.h.update((bytes.len() as u64).to_le_bytes());
        self
    }

    pub fn update_str(&mut self, s: &str) -> &mut Self {
        self.update(s.as_bytes())
    }

    pub fn hex(&self) -> String {
        minigpt4_io::files::hex(&self.h.clone().finalize()[..16])
    }
}
