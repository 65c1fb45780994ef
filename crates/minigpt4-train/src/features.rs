//! The on-disk cache of frozen image features (vision encoder + `ln_vision` + adapter output,
//! `[1, N, d_a]` f32), computed once per image and read by every epoch and both stages.
//!
//! Layout: `<cache>/features/<encoder fingerprint>/<image key>.safetensors`, one file per image
//! holding the tensor `features` and the metadata `format`, `fingerprint`, `source`.
//!
//! * The **image key** is `<SHA-256 of the encoded bytes, first 16 hex>-<byte length, hex>`: the
//!   content hash the pipeline's in-memory cache uses, so a renamed or copied image is found
//!   again and an edited one is not.
//! * The **encoder fingerprint** is a 128-bit digest of everything the features depend on: the
//!   vision and adapter kinds and options, the image preprocessing (size, mean, std), the bytes of
//!   their config files, and of each weight file its size plus a sample of its bytes (the first
//!   and last MiB and 16 blocks of 4 KiB spread over the rest). A safetensors file starts with its
//!   header (names, shapes, offsets) and ends in weight data; a `.pth` zip ends with its central
//!   directory, which holds every entry's CRC-32. Paths and modification times are *not* part of
//!   it, so copying or moving a model keeps its cache, while swapping in different weights (even
//!   of the same shapes) gives a new fingerprint. A changed encoder therefore never reads stale
//!   features; old fingerprints' folders are simply left behind (delete them freely).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use minigpt4_core::image::{self, ImageConfig, Limits};
use minigpt4_core::model_file::{AdapterKind, ModelSpec};
use rayon::prelude::*;

use crate::io::{self, Digest};
use crate::progress::Progress;

pub const FEATURES_FORMAT: &str = "minigpt4-features/1";
const SAMPLE_EDGE: u64 = 1 << 20;
const SAMPLE_BLOCKS: u64 = 16;
const SAMPLE_BLOCK: u64 = 4096;

/// Adds a file (or every file of a directory, sorted) to the digest: size plus sampled bytes.
pub fn digest_file(d: &mut Digest, path: &Path) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for e in entries {
            d.update_str(&e.file_name().unwrap_or_default().to_string_lossy());
            digest_file(d, &e)?;
        }
        return Ok(());
    }
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata().with_context(|| path.display().to_string())?.len();
    d.update(&len.to_le_bytes());
    let mut read_at = |offset: u64, n: u64, d: &mut Digest| -> Result<()> {
        let n = n.min(len.saturating_sub(offset));
        let mut buf = vec![0u8; n as usize];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        d.update(&buf);
        Ok(())
    };
    if len <= 2 * SAMPLE_EDGE + SAMPLE_BLOCKS * SAMPLE_BLOCK {
        read_at(0, len, d)?;
    } else {
        read_at(0, SAMPLE_EDGE, d)?;
        let inner = len - 2 * SAMPLE_EDGE;
        for i in 0..SAMPLE_BLOCKS {
            read_at(SAMPLE_EDGE + inner * i / SAMPLE_BLOCKS, SAMPLE_BLOCK, d)?;
        }
        read_at(len - SAMPLE_EDGE, SAMPLE_EDGE, d)?;
    }
    Ok(())
}

/// The fingerprint of the frozen part of `spec` with preprocessing `image` (see the module docs).
pub fn encoder_fingerprint(spec: &ModelSpec, image: &ImageConfig) -> Result<String> {
    let mut d = Digest::default();
    d.update_str(FEATURES_FORMAT);
    d.update_str(&format!(
        "vision {:?} size {:?} ln {:?}",
        spec.vision.kind, spec.vision.image_size, spec.vision.ln_vision
    ));
    digest_file(&mut d, &spec.vision.weights)?;
    if let Some(c) = &spec.vision.config {
        d.update(&std::fs::read(c).with_context(|| c.display().to_string())?);
    }
    let a = &spec.adapter;
    d.update_str(&format!("adapter {:?} merge {}", a.kind, a.merge));
    if a.kind == AdapterKind::Classes {
        d.update_str(&format!("slots {} temperature {}", a.slots, a.temperature));
    }
    if let Some(c) = &spec.classifier {
        d.update_str(&format!("classifier {:?} slots {} temperature {}", c.kind, c.slots, c.temperature));
        digest_file(&mut d, &c.weights)?;
        if let Some(p) = &c.config {
            d.update(&std::fs::read(p).with_context(|| p.display().to_string())?);
        }
    }
    if let Some(w) = &spec.adapter.weights {
        digest_file(&mut d, w)?;
    }
    if let Some(c) = &spec.adapter.config {
        d.update(&std::fs::read(c).with_context(|| c.display().to_string())?);
    }
    d.update_str(&format!("image {}", image.size));
    for x in image.mean.iter().chain(&image.std) {
        d.update(&x.to_bits().to_le_bytes());
    }
    Ok(d.hex())
}

/// The cache key of an encoded image.
pub fn image_key(bytes: &[u8]) -> String {
    let sha = minigpt4_io::files::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes)[..8]);
    format!("{sha}-{:x}", bytes.len())
}

pub struct FeatureCache {
    pub dir: PathBuf,
    pub fingerprint: String,
}

impl FeatureCache {
    pub fn new(cache_root: &Path, fingerprint: &str) -> Self {
        Self { dir: cache_root.join("features").join(fingerprint), fingerprint: fingerprint.to_string() }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    /// Shape of a cached entry if the file is complete and well formed (header and length only;
    /// the data is not read).
    pub fn probe(&self, key: &str) -> Option<Vec<usize>> {
        let path = self.path(key);
        let mut f = std::fs::File::open(&path).ok()?;
        let file_len = f.metadata().ok()?.len();
        let mut n = [0u8; 8];
        f.read_exact(&mut n).ok()?;
        let n = u64::from_le_bytes(n);
        if n > 1 << 20 || 8 + n > file_len {
            return None;
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header).ok()?;
        let json: serde_json::Value = serde_json::from_slice(&header).ok()?;
        let meta = json.get("__metadata__")?;
        if meta.get("format")?.as_str()? != FEATURES_FORMAT || meta.get("fingerprint")?.as_str()? != self.fingerprint {
            return None;
        }
        let t = json.get("features")?;
        if t.get("dtype")?.as_str()? != "F32" {
            return None;
        }
        let shape: Vec<usize> = serde_json::from_value(t.get("shape")?.clone()).ok()?;
        let offs: Vec<u64> = serde_json::from_value(t.get("data_offsets")?.clone()).ok()?;
        let numel: usize = shape.iter().product();
        (shape.len() == 3 && offs.len() == 2 && offs[1] - offs[0] == 4 * numel as u64 && file_len == 8 + n + offs[1])
            .then_some(shape)
    }

    pub fn load(&self, key: &str, device: &Device) -> Result<Tensor> {
        let l = io::load_safetensors(&self.path(key), device)?;
        Ok(l.tensor("features")?.clone())
    }

    pub fn store(&self, key: &str, features: &Tensor, source: &Path) -> Result<()> {
        let meta = HashMap::from([
            ("format".to_string(), FEATURES_FORMAT.to_string()),
            ("fingerprint".to_string(), self.fingerprint.clone()),
            ("source".to_string(), source.display().to_string()),
        ]);
        io::save_safetensors(&self.path(key), &[("features", features)], meta)
    }
}

/// What feature extraction did.
#[derive(Debug, Default)]
pub struct Extraction {
    /// Per input path, its cache key, or `None` when the image was skipped.
    pub keys: Vec<Option<String>>,
    /// Images that could not be used, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    pub computed: usize,
    pub reused: usize,
    /// `[1, tokens, dim]` of every entry.
    pub shape: Option<Vec<usize>>,
}

/// Makes sure every image in `paths` has cached features, computing missing ones with
/// `encode` (pixels `[B, 3, S, S]` → `[B, N, d_a]`) in batches of `batch`. An unreadable or
/// undecodable image is reported in `skipped`, never fatal.
///
/// Decoding and resizing run on one thread per image of a batch: on 2 cores they took a third of
/// the time per image when done one after another, with the other core idle.
#[allow(clippy::too_many_arguments)]
pub fn extract(
    encode: &dyn Fn(&Tensor) -> minigpt4_core::Result<Tensor>,
    paths: &[PathBuf],
    cache: &FeatureCache,
    image_cfg: &ImageConfig,
    limits: &Limits,
    device: &Device,
    batch: usize,
    progress: &Progress,
) -> Result<Extraction> {
    let mut out = Extraction { keys: vec![None; paths.len()], ..Default::default() };
    let bar = progress.bar(paths.len() as u64, "features");
    // Read and hashed, waiting to be decoded and encoded: (index into `paths`, key, bytes).
    let mut queued: Vec<(usize, String, Vec<u8>)> = Vec::new();
    // Keys already cached, queued or computed in this run; keys whose image did not decode.
    let mut seen: HashSet<String> = HashSet::new();
    let mut failed: HashMap<String, String> = HashMap::new();
    // Later copies (same bytes) of a queued image: resolved once its batch is done.
    let mut copies: Vec<(usize, String)> = Vec::new();

    let check_shape = |shape: &[usize], out: &mut Extraction| -> Result<()> {
        match &out.shape {
            None => out.shape = Some(shape.to_vec()),
            Some(s) if s.as_slice() == shape => {}
            Some(s) => bail!("image features of shape {shape:?} differ from earlier ones {s:?}"),
        }
        Ok(())
    };
    let run_batch = |queued: &mut Vec<(usize, String, Vec<u8>)>,
                     out: &mut Extraction,
                     failed: &mut HashMap<String, String>|
     -> Result<()> {
        let decoded: Vec<_> = queued
            .par_iter()
            .map(|(i, _, bytes)| image::preprocess(bytes, &paths[*i].display().to_string(), image_cfg, limits, device))
            .collect();
        let mut pixels = Vec::with_capacity(queued.len());
        let mut encoded = Vec::with_capacity(queued.len());
        for ((i, key, _), px) in queued.drain(..).zip(decoded) {
            match px {
                Ok(px) => {
                    pixels.push(px);
                    encoded.push((i, key));
                }
                Err(e) => {
                    out.skipped.push((paths[i].clone(), e.to_string()));
                    failed.insert(key, e.to_string());
                }
            }
        }
        if pixels.is_empty() {
            return Ok(());
        }
        let feats = encode(&Tensor::stack(&pixels, 0)?).context("running the vision encoder and adapter")?;
        for (j, (i, key)) in encoded.into_iter().enumerate() {
            cache.store(&key, &feats.narrow(0, j, 1)?, &paths[i])?;
            out.keys[i] = Some(key);
            out.computed += 1;
        }
        Ok(())
    };

    for (i, path) in paths.iter().enumerate() {
        bar.inc(1);
        let bytes = match image::read_file(path, limits) {
            Ok(b) => b,
            Err(e) => {
                out.skipped.push((path.clone(), format!("{e:#}")));
                continue;
            }
        };
        let key = image_key(&bytes);
        if seen.contains(&key) {
            copies.push((i, key));
            continue;
        }
        seen.insert(key.clone());
        if let Some(shape) = cache.probe(&key) {
            check_shape(&shape, &mut out)?;
            out.reused += 1;
            out.keys[i] = Some(key);
            continue;
        }
        queued.push((i, key, bytes));
        if queued.len() >= batch.max(1) {
            run_batch(&mut queued, &mut out, &mut failed)?;
        }
    }
    run_batch(&mut queued, &mut out, &mut failed)?;
    for (i, key) in copies {
        match failed.get(&key) {
            Some(reason) => out.skipped.push((paths[i].clone(), reason.clone())),
            None => out.keys[i] = Some(key),
        }
    }
    bar.finish_and_clear();
    // Shapes of what was computed in this run.
    if let Some(key) = out.keys.iter().flatten().next().cloned() {
        if let Some(shape) = cache.probe(&key) {
            check_shape(&shape, &mut out)?;
        }
    }
    Ok(out)
}

/// Features of the training images, in memory when they fit `budget_bytes`, else read from the
/// cache per batch (the OS page cache does the rest).
pub struct FeatureStore {
    cache: FeatureCache,
    keys: Vec<String>,
    memory: Option<Vec<Tensor>>,
    device: Device,
    /// `N` of the `[1, N, d_a]` entries: image tokens per sample.
    tokens: usize,
}

impl FeatureStore {
    pub fn new(
        cache: FeatureCache,
        keys: Vec<String>,
        shape: &[usize],
        device: &Device,
        budget_bytes: usize,
    ) -> Result<Self> {
        let per: usize = shape.iter().product::<usize>() * 4;
        let tokens = shape.get(1).copied().unwrap_or(0);
        let mut s = Self { cache, keys, memory: None, device: device.clone(), tokens };
        if per * s.keys.len() <= budget_bytes {
            let all = s.keys.iter().map(|k| s.cache.load(k, device)).collect::<Result<Vec<_>>>()?;
            s.memory = Some(all);
        }
        Ok(s)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Image tokens per sample.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `[1, N, d_a]` of image `i`.
    pub fn get(&self, i: usize) -> Result<Tensor> {
        match &self.memory {
            Some(m) => Ok(m[i].clone()),
            None => self.cache.load(&self.keys[i], &self.device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key is part of on-disk caches: it must never change for the same bytes.
    #[test]
    fn image_keys_are_stable() {
        assert_eq!(image_key(b""), "e3b0c44298fc1c14-0");
        assert_eq!(image_key(b"abc"), "ba7816bf8f01cfea-3");
        assert_ne!(image_key(b"abd"), image_key(b"abc"));
    }
}
