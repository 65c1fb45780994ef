//! WebDataset tar shards, as the reference training reads them: a brace pattern such as
//! `cc_sbu/{00000..01255}.tar`, each shard holding samples whose members share a key
//! (`000123.jpg` + `000123.json` with `caption`, or `000123.txt`).
//!
//! Images are extracted to `OUT/images/<shard>/<key>.<ext>`. A missing shard, a corrupt tail, an
//! image that does not decode or a sample without a caption is reported and skipped.

use std::collections::BTreeMap;
use std::path::Path;

use crate::archive::{decompressor, walk_tar, TarKind};
use crate::manifest::split_for;
use crate::{put_file, DataError, Import, Progress, Record, Result};

pub const SOURCE: &str = "webdataset";
const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// Expands `{a,b}` lists and `{000..123}` ranges (zero-padded to the width of the first
/// bound when it has leading zeros), left to right, all combinations in order.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else { return Ok(vec![pattern.to_string()]) };
    let close = pattern[open..].find('}').map(|c| c + open).ok_or_else(|| format!("unclosed `{{` in `{pattern}`"))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (lo, hi): (u64, u64) = (
            a.trim().parse().map_err(|_| format!("bad range start `{a}` in `{pattern}`"))?,
            b.trim().parse().map_err(|_| format!("bad range end `{b}` in `{pattern}`"))?,
        );
        if hi < lo {
            return Err(format!("empty range `{{{body}}}` in `{pattern}`"));
        }
        if hi - lo > 10_000_000 {
            return Err(format!("range `{{{body}}}` is too large"));
        }
        let width = if a.trim().starts_with('0') && a.trim().len() > 1 { a.trim().len() } else { 0 };
        (lo..=hi).map(|i| format!("{i:0width$}")).collect()
    } else {
        body.split(',').map(String::from).collect()
    };
    let rest = expand_braces(tail)?;
    Ok(choices.iter().flat_map(|c| rest.iter().map(move |r| format!("{head}{c}{r}"))).collect())
}

/// The sample key and member extension of a tar member: `dir/000123.json` → (`dir/000123`,
/// `json`); everything after the first dot of the file name is the extension.
fn split_key(path: &str) -> Option<(&str, &str)> {
    let slash = path.rfind('/').map_or(0, |s| s + 1);
    let dot = path[slash..].find('.')? + slash;
    Some((&path[..dot], &path[dot + 1..]))
}

#[derive(Default)]
struct Sample {
    image: Option<(String, Vec<u8>)>,
    json: Option<Vec<u8>>,
    txt: Option<Vec<u8>>,
}

fn caption_of(s: &Sample) -> Result<String, String> {
    if let Some(j) = &s.json {
        let v: serde_json::Value = serde_json::from_slice(j).map_err(|e| format!("bad json: {e}"))?;
        for k in ["caption", "text", "txt"] {
            if let Some(c) = v.get(k).and_then(|c| c.as_str()).filter(|c| !c.trim().is_empty()) {
                return Ok(c.trim().to_string());
            }
        }
    }
    if let Some(t) = &s.txt {
        let t = String::from_utf8_lossy(t).trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    Err("no caption (json `caption` or txt)".into())
}

/// Imports every shard the pattern names.
pub fn import(pattern: &str, out: &Path, heldout: f64, progress: Progress) -> Result<Import> {
    let shards = expand_braces(pattern).map_err(DataError::Other)?;
    let mut import = Import::default();
    let n = shards.len() as u64;
    for (i, shard) in shards.iter().enumerate() {
        progress(i as u64, n);
        let path = Path::new(shard);
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                import.skip(shard.clone(), format!("cannot open shard: {e}"));
                continue;
            }
        };
        let shard_name = path.file_name().and_then(|f| f.to_str()).unwrap_or("shard");
        let shard_stem = shard_name.split('.').next().unwrap_or(shard_name).to_string();
        let mut samples: BTreeMap<String, Sample> = BTreeMap::new();
        let walked = decompressor(shard_name, std::io::BufReader::new(file)).and_then(|r| {
            walk_tar(r, path, |it| {
                if it.kind != TarKind::File {
                    return Ok(());
                }
                let Some((key, ext)) = split_key(&it.path) else { return Ok(()) };
                let s = samples.entry(key.to_string()).or_default();
                let ext = ext.to_ascii_lowercase();
                if IMAGE_EXTS.contains(&ext.as_str()) {
                    s.image = Some((ext, it.data));
                } else if ext == "json" {
                    s.json = Some(it.data);
                } else if ext == "txt" {
                    s.txt = Some(it.data);
                }
                Ok(())
            })
        });
        if let Err(e) = walked {
            import.skip(shard.clone(), format!("shard read only in part: {e}"));
        }
        for (key, s) in samples {
            let item = format!("{shard_name}:{key}");
            let Some((ext, bytes)) = &s.image else {
                import.skip(item, "no image member");
                continue;
            };
            let caption = match caption_of(&s) {
                Ok(c) => c,
                Err(e) => {
                    import.skip(item, e);
                    continue;
                }
            };
            if let Err(e) = crate::check_image(bytes) {
                import.skip(item, format!("unreadable image: {e}"));
                continue;
            }
            let rel = format!("{shard_stem}/{key}");
            let image = format!("images/{}.{ext}", crate::safe_rel(&rel));
            put_file(out, &image, bytes)?;
            import.records.push(Record {
                image: image.into(),
                caption,
                turns: vec![],
                source: SOURCE.into(),
                split: split_for(&rel, heldout),
            });
        }
    }
    progress(n, n);
    Ok(import)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tests::make_tar;

    #[test]
    fn braces() {
        assert_eq!(expand_braces("a/{00000..00002}.tar").unwrap(), ["a/00000.tar", "a/00001.tar", "a/00002.tar"]);
        assert_eq!(expand_braces("{a,b}-{8..10}").unwrap(), ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert_eq!(expand_braces("{00000..01255}.tar").unwrap().len(), 1256);
        assert_eq!(expand_braces("{00000..01255}.tar").unwrap()[1255], "01255.tar");
        assert!(expand_braces("{3..1}").is_err());
        assert!(expand_braces("{1..").is_err());
    }

    #[test]
    fn keys() {
        assert_eq!(split_key("000123.jpg"), Some(("000123", "jpg")));
        assert_eq!(split_key("dir.x/000123.seg.json"), Some(("dir.x/000123", "seg.json")));
        assert_eq!(split_key("noext"), None);
    }

    #[test]
    fn shards_with_a_corrupt_member_and_a_missing_shard() {
        let dir = crate::testutil::tmpdir("wds");
        let p = crate::testutil::png(6, 6);
        let mut jpg = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10]))
            .write_to(&mut jpg, image::ImageFormat::Jpeg)
            .unwrap();
        let jpg = jpg.into_inner();
        let shard0 = make_tar(
            &[
                ("000000.jpg", &jpg),
                ("000000.json", br#"{"caption": "a red square", "url": "x"}"#),
                ("000001.png", &p),
                ("000001.txt", b"a gradient\n"),
                ("000002.jpg", &jpg[..jpg.len() / 3]), // truncated image
                ("000002.json", br#"{"caption": "broken"}"#),
                ("000003.jpg", &jpg),
                ("000003.json", br#"{"url": "no caption"}"#),
                ("000004.json", br#"{"caption": "no image"}"#),
            ],
            &[],
        );
        std::fs::write(dir.join("00000.tar"), &shard0).unwrap();
        // Shard 1: a good sample, then garbage instead of the next header.
        let mut shard1 = make_tar(&[("000010.jpg", &jpg), ("000010.txt", b"another red square")], &[]);
        shard1.truncate(shard1.len() - 1024); // drop the end-of-archive blocks
        shard1.extend(vec![0x55u8; 700]);
        std::fs::write(dir.join("00001.tar"), &shard1).unwrap();
        let pattern = format!("{}/{{00000..00002}}.tar", dir.display());
        let out = dir.join("out");
        let imp = crate::import_with(SOURCE, Path::new(&pattern), &out, Some(0.0), &mut crate::no_progress).unwrap();
        let got: Vec<_> = imp.records.iter().map(|r| (r.image.to_str().unwrap(), r.caption.as_str())).collect();
        assert_eq!(
            got,
            [
                ("images/00000/000000.jpg", "a red square"),
                ("images/00000/000001.png", "a gradient"),
                ("images/00001/000010.jpg", "another red square")
            ]
        );
        let reasons: Vec<_> = imp.skipped.iter().map(|s| format!("{}: {}", s.item, s.reason)).collect();
        assert_eq!(reasons.len(), 5, "{reasons:#?}");
        assert!(reasons.iter().any(|r| r.contains("00002.tar") && r.contains("cannot open")));
        assert!(reasons.iter().any(|r| r.contains("00001.tar") && r.contains("in part")));
        assert!(reasons.iter().any(|r| r.contains(":000002") && r.contains("unreadable image")));
        assert!(reasons.iter().any(|r| r.contains(":000003") && r.contains("no caption")));
        assert!(reasons.iter().any(|r| r.contains(":000004") && r.contains("no image")));
        assert!(out.join("images/00000/000000.jpg").exists());
    }
}
