//! Training data: one plain manifest format (JSONL), the importers that write it from the
//! sources that can be had here, and readers for the layouts real users bring.
//!
//! Every importer follows the same rules: an item that cannot be read is reported in
//! [`Import::skipped`] and never stops the import; the records come out sorted by image path;
//! images are copied (or extracted, or rasterised) under `OUT/images/` with stable names, and a
//! file already there with the same bytes is left alone, so running an import twice is a no-op.

pub mod archive;
pub mod caption;
pub mod cc_sbu_align;
pub mod deb;
pub mod easy_vqa;
pub mod emoji;
pub mod fetch;
pub mod gcompris;
pub mod manifest;
pub mod openclipart;
pub mod rcc;
pub mod tuxpaint;
pub mod webdataset;

use std::path::{Path, PathBuf};

pub use manifest::{Manifest, Record, Split, Turn};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.to_path_buf(), source }
    }
    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        DataError::Format { path: path.to_path_buf(), msg: msg.into() }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// One item an importer left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub item: String,
    pub reason: String,
}

/// What an importer produced: the records (sorted by image path) and the items it skipped.
#[derive(Debug, Default)]
pub struct Import {
    pub records: Vec<Record>,
    pub skipped: Vec<Skipped>,
}

impl Import {
    pub fn skip(&mut self, item: impl Into<String>, reason: impl std::fmt::Display) {
        self.skipped.push(Skipped { item: item.into(), reason: reason.to_string() });
    }

    /// Sorts records by image path and skipped items by name; drops duplicate image paths
    /// (the first one wins, the others are reported).
    pub fn finish(mut self) -> Self {
        self.records.sort_by(|a, b| a.image.cmp(&b.image));
        let mut out: Vec<Record> = Vec::with_capacity(self.records.len());
        for r in self.records {
            if out.last().is_some_and(|l| l.image == r.image) {
                self.skipped
                    .push(Skipped { item: r.image.display().to_string(), reason: "duplicate image path".into() });
            } else {
                out.push(r);
            }
        }
        self.records = out;
        self.skipped.sort_by(|a, b| (&a.item, &a.reason).cmp(&(&b.item, &b.reason)));
        self
    }

    pub fn count(&self, split: Split) -> usize {
        self.records.iter().filter(|r| r.split == split).count()
    }
}

/// Progress callback: `(done, total)`; `total` may grow as an archive is read.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A progress callback that does nothing (tests, library callers).
pub fn no_progress(_: u64, _: u64) {}

#[cfg(test)]
use minigpt4_io::files::minigpt4_home;

/// Where the packages of one source are kept: `$MINIGPT4_HOME/data/<source>/`.
pub fn source_dir(home: &Path, source: &str) -> PathBuf {
    home.join("data").join(source)
}

/// Writes `bytes` to `out/rel` unless a file with exactly these bytes is already there (so a
/// second import rewrites nothing). Parent folders are created; the write is atomic.
pub fn put_file(out: &Path, rel: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = out.join(rel);
    if let Ok(meta) = std::fs::metadata(&path) {
        if meta.len() == bytes.len() as u64 && std::fs::read(&path).is_ok_and(|old| old == bytes) {
            return Ok(PathBuf::from(rel));
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    std::fs::write(&tmp, bytes).map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))?;
    Ok(PathBuf::from(rel))
}

/// Checks that `bytes` are an image the `image` crate can open (header and size only) and
/// returns its size.
pub fn image_size(bytes: &[u8]) -> Result<(u32, u32), String> {
    let reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not a known image format".into());
    }
    let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
    if w == 0 || h == 0 {
        return Err("empty image".into());
    }
    Ok((w, h))
}

/// Fully decodes `bytes` (catches truncated or corrupt data that a header check misses).
pub fn check_image(bytes: &[u8]) -> Result<(u32, u32), String> {
    image_size(bytes)?;
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
    Ok((img.width(), img.height()))
}

/// A file-name-safe, stable version of a relative path: lower-case ASCII letters, digits, `-`,
/// `_`, `.` and `/` are kept, everything else becomes `_`.
pub fn safe_rel(rel: &str) -> String {
    rel.trim_start_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/') { c } else { '_' })
        .collect::<String>()
        .replace("..", "_")
}

/// The sources this crate can fetch and import, by name.
pub const SOURCES: &[&str] = &["tuxpaint", "openclipart", "easy-vqa", "fluent-emoji-3d", "emoji-google", "gcompris"];

/// The readers for data a user brings.
pub const USER_FORMATS: &[&str] = &["webdataset", "cc-sbu-align", "manifest"];

/// The share of each source held out for evaluation unless the caller says otherwise.
pub fn default_heldout(source: &str) -> f64 {
    match source {
        "tuxpaint" => tuxpaint::HELDOUT,
        "openclipart" => openclipart::HELDOUT,
        "easy-vqa" => easy_vqa::HELDOUT,
        "fluent-emoji-3d" | "emoji-google" => emoji::HELDOUT,
        "gcompris" => gcompris::HELDOUT,
        _ => 0.0, // user data: all for training unless asked
    }
}

/// Imports one source with its default held-out share. For the fetched sources `input` is the
/// folder the packages were fetched into (`$MINIGPT4_HOME/data/<source>`); for the user
/// formats it is the shard pattern (webdataset), the folder (cc-sbu-align) or the manifest file.
pub fn import(source: &str, input: &Path, out: &Path, progress: Progress) -> Result<Import> {
    import_with(source, input, out, None, progress)
}

/// [`import`] with the held-out share chosen by the caller (`None`: the source's default).
/// A manifest keeps the splits it has.
pub fn import_with(source: &str, input: &Path, out: &Path, heldout: Option<f64>, progress: Progress) -> Result<Import> {
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let h = heldout.unwrap_or_else(|| default_heldout(source));
    if !(0.0..=1.0).contains(&h) {
        return Err(DataError::Other(format!("held-out share {h} is not between 0 and 1")));
    }
    let import = match source {
        "tuxpaint" => tuxpaint::import(input, out, h, progress)?,
        "openclipart" => openclipart::import(input, out, h, progress)?,
        "easy-vqa" => easy_vqa::import(input, out, h, progress)?,
        "fluent-emoji-3d" => emoji::import(emoji::Set::Fluent3d, input, out, h, progress)?,
        "emoji-google" => emoji::import(emoji::Set::Google, input, out, h, progress)?,
        "gcompris" => gcompris::import(input, out, h, progress)?,
        "webdataset" => webdataset::import(&input.to_string_lossy(), out, h, progress)?,
        "cc-sbu-align" => cc_sbu_align::import(input, out, h, progress)?,
        "manifest" => import_manifest(input, out)?,
        other => {
            return Err(DataError::Other(format!(
                "unknown source `{other}` (known: {}, {})",
                SOURCES.join(", "),
                USER_FORMATS.join(", ")
            )))
        }
    };
    Ok(import.finish())
}

/// Reads a manifest and re-writes it under `out` (image paths made absolute, bad lines reported).
fn import_manifest(path: &Path, _out: &Path) -> Result<Import> {
    let m = Manifest::read(path)?;
    let mut import = Import::default();
    for r in m.records {
        if !r.image.exists() {
            import.skip(r.image.display().to_string(), "image file not found");
            continue;
        }
        import.records.push(r);
    }
    for s in m.skipped {
        import.skip(path.display().to_string(), s);
    }
    Ok(import)
}

/// Writes `out/manifest.jsonl` from an import.
pub fn write_manifest(out: &Path, import: &Import) -> Result<PathBuf> {
    let path = out.join("manifest.jsonl");
    manifest::write(&path, &import.records)?;
    Ok(path)
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;

    /// A fresh temporary folder for one test.
    pub fn tmpdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mg4-data-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A small valid PNG (RGBA, `w`×`h`).
    pub fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([(x * 40) as u8, (y * 40) as u8, 200, 255]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// The fetched source folder; panics with the command that fetches it when it is not there
    /// (the tests that need it are `#[ignore]`d and say so).
    pub fn fetched(source: &str) -> PathBuf {
        let dir = crate::source_dir(&crate::minigpt4_home(), source);
        let ok =
            crate::fetch::spec(source).is_some_and(|s| s.packages.iter().all(|p| dir.join(p.file_name()).exists()));
        assert!(ok, "{} is not fetched: run `minigpt4 data fetch {source}` first", dir.display());
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_file_is_idempotent() {
        let dir = testutil::tmpdir("put");
        put_file(&dir, "images/a/b.png", b"abc").unwrap();
        let t1 = std::fs::metadata(dir.join("images/a/b.png")).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        put_file(&dir, "images/a/b.png", b"abc").unwrap();
        let t2 = std::fs::metadata(dir.join("images/a/b.png")).unwrap().modified().unwrap();
        assert_eq!(t1, t2);
        put_file(&dir, "images/a/b.png", b"abcd").unwrap();
        assert_eq!(std::fs::read(dir.join("images/a/b.png")).unwrap(), b"abcd");
    }

    #[test]
    fn safe_rel_keeps_paths_stable() {
        assert_eq!(safe_rel("/a b/c:d.png"), "a_b/c_d.png");
        assert_eq!(safe_rel("x/../y.png"), "x/_/y.png");
    }

    #[test]
    fn finish_sorts_and_reports_duplicates() {
        let rec = |p: &str| Record {
            image: p.into(),
            caption: "c".into(),
            turns: vec![],
            source: "s".into(),
            split: Split::Train,
        };
        let imp = Import { records: vec![rec("b"), rec("a"), rec("b")], skipped: vec![] }.finish();
        assert_eq!(imp.records.iter().map(|r| r.image.to_str().unwrap()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(imp.skipped.len(), 1);
    }
}
