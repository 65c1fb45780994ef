//! The manifest: one JSON object per line,
//! `{"image": PATH, "caption": TEXT, "turns": [{"instruction", "answer"}], "source": NAME, "split": "train"|"heldout"}`.
//! Relative image paths are relative to the manifest's directory.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {msg}")]
    BadLine { path: PathBuf, line: usize, msg: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Heldout,
}

/// A stage-2 style exchange about the image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub instruction: String,
    pub answer: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub image: PathBuf,
    pub caption: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<Turn>,
    pub source: String,
    pub split: Split,
}

/// The records of one manifest file, image paths made absolute, plus the lines that could not
/// be read (reported, skipped, never fatal).
#[derive(Debug, Default)]
pub struct Manifest {
    pub records: Vec<Record>,
    pub skipped: Vec<ManifestError>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let io = |source| ManifestError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut out = Manifest::default();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io)?;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |msg: String| ManifestError::BadLine { path: path.to_path_buf(), line: i + 1, msg };
            match serde_json::from_str::<Record>(&line) {
                Ok(mut r) if !r.caption.trim().is_empty() => {
                    if r.image.is_relative() {
                        r.image = base.join(&r.image);
                    }
                    out.records.push(r);
                }
                Ok(_) => out.skipped.push(bad("empty caption".into())),
                Err(e) => out.skipped.push(bad(e.to_string())),
            }
        }
        Ok(out)
    }

    /// Only the records of one split.
    pub fn split(&self, split: Split) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(move |r| r.split == split)
    }
}

/// Writes records as JSONL, atomically (temp file + rename).
pub fn write(path: &Path, records: &[Record]) -> Result<(), ManifestError> {
    let io = |source| ManifestError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        for r in records {
            let line = serde_json::to_string(r).expect("records serialise");
            writeln!(f, "{line}").map_err(io)?;
        }
        f.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Deterministic held-out assignment from a stable hash (FNV-1a 64, then the MurmurHash3 64-bit
/// finalizer so that short, similar keys such as emoji code points spread evenly) of the image's
/// path relative to its source root, so the split never depends on machine, order or run.
pub fn split_for(relative_path: &str, heldout_fraction: f64) -> Split {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in relative_path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    if u < heldout_fraction {
        Split::Heldout
    } else {
        Split::Train
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stable_and_near_the_fraction() {
        assert_eq!(split_for("stamps/animals/cat.png", 0.1), split_for("stamps/animals/cat.png", 0.1));
        let held = (0..10_000).filter(|i| split_for(&format!("img/{i}.png"), 0.1) == Split::Heldout).count();
        assert!((800..1200).contains(&held), "{held}");
        // Short, similar keys (emoji code points, numbered files) too: plain FNV-1a's top bits
        // put ~30% of these in a 10% split.
        let held = (0x1f300..0x1fb00).filter(|c| split_for(&format!("{c:x}"), 0.1) == Split::Heldout).count();
        assert!((160..250).contains(&held), "{held} of 2048");
        let held = (0..2000).filter(|i| split_for(&format!("{i}.png"), 0.5) == Split::Heldout).count();
        assert!((900..1100).contains(&held), "{held} of 2000");
    }

    #[test]
    fn bad_lines_are_skipped_and_reported() {
        let dir = std::env::temp_dir().join(format!("mg4-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.jsonl");
        let good = Record {
            image: "a.png".into(),
            caption: "a cat".into(),
            turns: vec![],
            source: "t".into(),
            split: Split::Train,
        };
        write(&p, std::slice::from_ref(&good)).unwrap();
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("{not json\n{\"image\":\"b.png\",\"caption\":\" \",\"source\":\"t\",\"split\":\"train\"}\n");
        std::fs::write(&p, text).unwrap();
        let m = Manifest::read(&p).unwrap();
        assert_eq!(m.records.len(), 1);
        assert_eq!(m.records[0].image, dir.join("a.png"));
        assert_eq!(m.skipped.len(), 2);
        assert!(m.skipped[0].to_string().contains("m.jsonl:2"));
    }
}
