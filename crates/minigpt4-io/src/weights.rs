//! Named-tensor sources: safetensors (single or sharded), PyTorch `.pth` zip-pickles, or tensors
//! already in memory. Every lookup checks the shape and names the tensor and file on failure.
//!
//! `.pth` files (zip and legacy layouts) are read by [`crate::torch_pickle`], our own restricted
//! unpickler: it refuses every callable a state dict does not need, so a hostile checkpoint cannot
//! run code, and bounds everything a hostile file could blow up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
pub use candle_nn::VarBuilder;

use crate::error::{Error, Result};

enum Store {
    Safetensors(MmapedSafetensors),
    Pth(crate::torch_pickle::TorchZip),
    Memory(HashMap<String, Tensor>),
    /// A sharded torch checkpoint (`pytorch_model.bin.index.json`): each shard read lazily as
    /// `Pth` is, `map` saying which shard holds each name (checked at open).
    Shards {
        shards: Vec<Store>,
        map: HashMap<String, usize>,
    },
}

impl Store {
    fn names(&self) -> Vec<String> {
        match self {
            Store::Safetensors(st) => st.tensors().into_iter().map(|(n, _)| n).collect(),
            Store::Pth(p) => p.names().cloned().collect(),
            Store::Memory(m) => m.keys().cloned().collect(),
            Store::Shards { map, .. } => map.keys().cloned().collect(),
        }
    }

    fn contains(&self, raw: &str) -> bool {
        match self {
            Store::Safetensors(st) => st.get(raw).is_ok(),
            Store::Pth(p) => p.contains(raw),
            Store::Memory(m) => m.contains_key(raw),
            Store::Shards { shards, map } => map.get(raw).is_some_and(|&i| shards[i].contains(raw)),
        }
    }

    fn dims(&self, raw: &str) -> Option<Vec<usize>> {
        match self {
            Store::Safetensors(st) => st.get(raw).ok().map(|v| v.shape().to_vec()),
            Store::Pth(p) => p.dims(raw).map(<[usize]>::to_vec),
            Store::Memory(m) => m.get(raw).map(|t| t.dims().to_vec()),
            Store::Shards { shards, map } => map.get(raw).and_then(|&i| shards[i].dims(raw)),
        }
    }

    /// The tensor as stored, `None` when there is no such name; `origin` names the source in
    /// messages.
    fn load(&self, raw: &str, origin: &str) -> Result<Option<Tensor>> {
        Ok(match self {
            Store::Safetensors(st) => {
                let Ok(view) = st.get(raw) else { return Ok(None) };
                let t = st.load(raw, &Device::Cpu).map_err(|e| Error::BadCheckpoint {
                    file: origin.to_string(),
                    msg: format!("reading `{raw}`: {e}"),
                })?;
                release_mapped(view.data());
                Some(t)
            }
            Store::Pth(p) => p.get(raw)?,
            Store::Memory(m) => m.get(raw).cloned(),
            Store::Shards { shards, map } => match map.get(raw) {
                Some(&i) => shards[i].load(raw, origin)?,
                None => None,
            },
        })
    }
}

pub struct Weights {
    store: Store,
    /// What to call the source in messages (a path, or several).
    origin: String,
    /// Canonical name → name in the file, for files that use other names (see `names.rs`).
    /// Empty means the file already uses canonical names.
    aliases: HashMap<String, String>,
    device: Device,
    dtype: DType,
}

impl Weights {
    /// Opens a checkpoint by its form: a `.safetensors` file, a sharded `*.index.json` (safetensors
    /// or `.bin` shards), a directory holding `model.safetensors.index.json`, `model.safetensors`,
    /// `pytorch_model.bin.index.json` or `pytorch_model.bin` (first present wins), or a
    /// `.pth`/`.pt`/`.bin` pickle.
    pub fn open(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            if index.exists() {
                return Self::from_index(&index, device, dtype);
            }
            let single = path.join("model.safetensors");
            if single.exists() {
                return Self::from_safetensors(&[single], device, dtype);
            }
            // Older checkpoints (and lmsys' Vicuna deltas) are torch pickles; safetensors are
            // preferred when both are there, as `transformers` does.
            let index = path.join("pytorch_model.bin.index.json");
            if index.exists() {
                return Self::from_index(&index, device, dtype);
            }
            let single = path.join("pytorch_model.bin");
            if single.exists() {
                return Self::from_pth(&single, device, dtype);
            }
            return Err(Error::BadCheckpoint {
                file: path.display().to_string(),
                msg: "directory holds none of model.safetensors.index.json, model.safetensors, \
                      pytorch_model.bin.index.json, pytorch_model.bin"
                    .into(),
            });
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".safetensors") {
            Self::from_safetensors(&[path.to_path_buf()], device, dtype)
        } else if name.ends_with(".index.json") {
            Self::from_index(path, device, dtype)
        } else if name.ends_with(".pth") || name.ends_with(".pt") || name.ends_with(".bin") {
            Self::from_pth(path, device, dtype)
        } else {
            Err(Error::BadCheckpoint {
                file: path.display().to_string(),
                msg: "unknown checkpoint format (expected .safetensors, .safetensors.index.json or .pth)".into(),
            })
        }
    }

    pub fn from_safetensors(paths: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        for p in paths {
            std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        }
        let origin = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        // SAFETY: the files are mapped read-only; like every mmap reader we rely on nobody
        // truncating them while they are open.
        let st = unsafe { MmapedSafetensors::multi(paths) }
            .map_err(|e| Error::BadCheckpoint { file: origin.clone(), msg: e.to_string() })?;
        Ok(Self::new(Store::Safetensors(st), origin, device, dtype))
    }

    /// A sharded Hugging Face checkpoint: `{"weight_map": {name: file}}`, the shards safetensors
    /// (`model.safetensors.index.json`) or torch pickles (`pytorch_model.bin.index.json`, what
    /// older checkpoints and lmsys' Vicuna deltas publish), not a mix.
    pub fn from_index(index: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let bad = |msg: String| Error::BadCheckpoint { file: index.display().to_string(), msg };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map =
            json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no `weight_map` object".into()))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files: Vec<PathBuf> = Vec::new();
        let mut shard_of: HashMap<String, usize> = HashMap::new();
        for (name, shard) in map {
            let shard = shard.as_str().ok_or_else(|| bad("`weight_map` values must be file names".into()))?;
            // Only a file name beside the index: `../` or an absolute path would read elsewhere.
            if Path::new(shard).components().count() != 1 || Path::new(shard).file_name().is_none() {
                return Err(bad(format!("shard `{shard}` of `{name}` is not a file name beside the index")));
            }
            let p = dir.join(shard);
            let i = match files.iter().position(|f| *f == p) {
                Some(i) => i,
                None => {
                    files.push(p);
                    files.len() - 1
                }
            };
            shard_of.insert(name.clone(), i);
        }
        if files.is_empty() {
            return Err(bad("`weight_map` is empty".into()));
        }
        let is_st = |p: &PathBuf| p.extension().is_some_and(|e| e == "safetensors");
        if files.iter().all(is_st) {
            return Self::from_safetensors(&files, device, dtype);
        }
        if files.iter().any(is_st) {
            return Err(bad("`weight_map` mixes safetensors and torch pickle shards".into()));
        }
        let mut shards = Vec::with_capacity(files.len());
        for f in &files {
            shards.push(Self::from_pth(f, device, dtype)?.store);
        }
        // Every name the index lists must be in the shard it names: found now, not as a missing
        // tensor halfway through loading a 7B model.
        let mut names: Vec<&String> = shard_of.keys().collect();
        names.sort();
        for name in names {
            let i = shard_of[name];
            if !shards[i].contains(name) {
                return Err(bad(format!("`{name}` is not in its shard {}", files[i].display())));
            }
        }
        let store = Store::Shards { shards, map: shard_of };
        Ok(Self::new(store, index.display().to_string(), device, dtype))
    }

    /// A PyTorch checkpoint (zip or legacy layout). Training checkpoints wrap the state dict as
    /// `{"model": {...}}` or `{"state_dict": {...}}`; those and a bare state dict are accepted.
    pub fn from_pth(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let mut head = [0u8; 4];
        let read_head = std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut head));
        let n = read_head.map_err(|e| Error::io(path, e))?;
        let file = path.display().to_string();
        if crate::torch_pickle::is_legacy(&head[..n]) {
            let tensors = crate::torch_pickle::read(path, device, dtype)?;
            return Ok(Self::new(Store::Memory(tensors), file, device, dtype));
        }
        if !crate::torch_pickle::is_zip(&head[..n]) {
            return Err(Error::BadCheckpoint { file, msg: "neither a zip nor a legacy torch.save file".into() });
        }
        let pth = crate::torch_pickle::TorchZip::open(path)?;
        Ok(Self::new(Store::Pth(pth), file, device, dtype))
    }

    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: &str, device: &Device, dtype: DType) -> Self {
        Self::new(Store::Memory(tensors), origin.to_string(), device, dtype)
    }

    fn new(store: Store, origin: String, device: &Device, dtype: DType) -> Self {
        Self { store, origin, aliases: HashMap::new(), device: device.clone(), dtype }
    }

    /// Views the file through a rename table (`names::lavis_to_hf`, …): afterwards only the
    /// canonical names are visible and file names the table maps to `None` are ignored.
    pub fn renamed(mut self, rename: impl Fn(&str) -> Option<String>) -> Self {
        self.aliases = self.raw_names().into_iter().filter_map(|n| rename(&n).map(|c| (c, n))).collect();
        self
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn raw_names(&self) -> Vec<String> {
        self.store.names()
    }

    /// Canonical names of every tensor visible through this source, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names = if self.aliases.is_empty() { self.raw_names() } else { self.aliases.keys().cloned().collect() };
        names.sort();
        names
    }

    fn file_name<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if self.aliases.is_empty() {
            Some(name)
        } else {
            self.aliases.get(name).map(String::as_str)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        let Some(raw) = self.file_name(name) else { return false };
        self.store.contains(raw)
    }

    /// The shape of `name` as stored, without reading its data.
    pub fn dims(&self, name: &str) -> Result<Vec<usize>> {
        let missing = || Error::MissingTensor { name: name.to_string(), file: self.origin.clone() };
        let raw = self.file_name(name).ok_or_else(missing)?;
        self.store.dims(raw).ok_or_else(missing)
    }

    /// The tensor as stored (any shape), converted to this source's dtype and device.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let missing = || Error::MissingTensor { name: name.to_string(), file: self.origin.clone() };
        let raw = self.file_name(name).ok_or_else(missing)?;
        let t = self.store.load(raw, &self.origin)?.ok_or_else(missing)?;
        // A NaN or ∞ in a weight would run silently: the quantized kernels turn it into finite
        // garbage, and a NaN projection gave an empty answer with exit status 0.
        if !all_finite(&t)? {
            return Err(Error::BadCheckpoint {
                file: self.origin.clone(),
                msg: format!("`{raw}` holds NaN or infinite values"),
            });
        }
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    /// The tensor, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_any(name)?;
        if t.dims() != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                file: self.origin.clone(),
                expected: shape.to_vec(),
                actual: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    /// A candle `VarBuilder` over these weights, at `prefix` (empty for the root): what every
    /// model part loads from, so model code can move to and from candle-transformers.
    pub fn pp(&self, prefix: &str) -> VarBuilder<'_> {
        let vb = VarBuilder::from_backend(Box::new(Borrowed(self)), self.dtype, self.device.clone());
        if prefix.is_empty() {
            vb
        } else {
            vb.pp(prefix)
        }
    }

    /// [`Weights::pp`] owning the weights.
    pub fn into_var_builder(self) -> VarBuilder<'static> {
        let (dtype, device) = (self.dtype, self.device.clone());
        VarBuilder::from_backend(Box::new(self), dtype, device)
    }
}

/// candle's loading interface over a named-tensor source: lookups keep this crate's checks
/// (shape, finiteness, the file named in every message); their errors travel as candle errors
/// and print the same.
impl SimpleBackend for Weights {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = Weights::get(self, name, s.dims()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.get_any(name).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

struct Borrowed<'a>(&'a Weights);

impl SimpleBackend for Borrowed<'_> {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        SimpleBackend::get(self.0, s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// Lets the kernel drop the memory-mapped pages of a tensor that has been copied out. The
/// mapping is read-only and file-backed, so the pages are simply read again if touched; without
/// this every tensor read stays resident, and a 2.2 GB f16 checkpoint quantized to 1.2 GB at load
/// still peaked at 4.1 GB (the whole file plus the blocks).
fn release_mapped(bytes: &[u8]) {
    #[cfg(unix)]
    {
        let page = 4096usize;
        let start = (bytes.as_ptr() as usize).div_ceil(page) * page;
        let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
        if end > start {
            // SAFETY: [start, end) lies inside `bytes`, a slice of a live read-only file mapping
            // that nothing writes; MADV_DONTNEED on such a mapping only drops clean pages, which
            // later reads fetch from the file again, so no memory we hold changes.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

/// Whether every element of `t` is finite (false for NaN and ±∞).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    if !t.dtype().is_float() {
        return Ok(true);
    }
    // A sum is NaN or ∞ exactly when some element is (∞ + finite = ∞, ∞ − ∞ = NaN, NaN spreads),
    // or when it overflows, which no weight or activation of a working model comes near in f32.
    // No abs: that would copy the whole tensor (a 7B model's every weight) just to check it.
    let t = match t.dtype() {
        DType::F32 | DType::F64 => t.clone(),
        _ => t.to_dtype(DType::F32)?,
    };
    Ok(t.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_finite_finds_nan_and_infinities() {
        let t = |v: Vec<f32>| Tensor::from_vec(v.clone(), v.len(), &Device::Cpu).unwrap();
        assert!(all_finite(&t(vec![0.5, -3.0, 1e30])).unwrap());
        for bad in [
            vec![1.0, f32::NAN],
            vec![f32::INFINITY, 1.0],
            vec![f32::INFINITY, f32::NEG_INFINITY],
            vec![f32::NEG_INFINITY],
        ] {
            assert!(!all_finite(&t(bad.clone())).unwrap(), "{bad:?}");
        }
        let half = t(vec![1.0, f32::NAN]).to_dtype(DType::F16).unwrap();
        assert!(!all_finite(&half).unwrap());
        assert!(all_finite(&t(vec![60000.0; 4]).to_dtype(DType::F16).unwrap()).unwrap(), "summed in f32, not f16");
    }
}
