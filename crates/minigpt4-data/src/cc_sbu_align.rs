//! The `cc_sbu_align` layout of the reference stage-2 data: `filter_cap.json` =
//! `{"annotations": [{"image_id": "2", "caption": "..."}]}` and `image/{image_id}.jpg`.
//!
//! Images are copied to `OUT/images/{image_id}.jpg`; the caption is the stage-2 description,
//! so it also becomes the record's one turn ("Describe this image in detail." → caption).

use std::path::Path;

use serde::Deserialize;

use crate::manifest::split_for;
use crate::{put_file, DataError, Import, Progress, Record, Result, Turn};

pub const SOURCE: &str = "cc-sbu-align";
pub const DESCRIBE: &str = "Describe this image in detail.";

#[derive(Deserialize)]
struct File {
    annotations: Vec<serde_json::Value>,
}

fn id_of(v: &serde_json::Value) -> Option<String> {
    match v.get("image_id")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn import(dir: &Path, out: &Path, heldout: f64, progress: Progress) -> Result<Import> {
    let json_path = dir.join("filter_cap.json");
    let text = std::fs::read(&json_path).map_err(|e| DataError::io(&json_path, e))?;
    let file: File = serde_json::from_slice(&text)
        .map_err(|e| DataError::format(&json_path, format!("expected {{\"annotations\": [...]}}: {e}")))?;
    let mut import = Import::default();
    let n = file.annotations.len() as u64;
    for (i, a) in file.annotations.iter().enumerate() {
        progress(i as u64, n);
        let Some(id) = id_of(a) else {
            import.skip(format!("annotation {i}"), "no image_id");
            continue;
        };
        let Some(caption) = a.get("caption").and_then(|c| c.as_str()).map(str::trim).filter(|c| !c.is_empty()) else {
            import.skip(id, "no caption");
            continue;
        };
        let safe = crate::safe_rel(&id).replace('/', "_");
        let src = dir.join("image").join(format!("{id}.jpg"));
        let bytes = match std::fs::read(&src) {
            Ok(b) => b,
            Err(e) => {
                import.skip(id, format!("image missing or unreadable: {}: {e}", src.display()));
                continue;
            }
        };
        if let Err(e) = crate::image_size(&bytes) {
            import.skip(id, format!("unreadable image: {e}"));
            continue;
        }
        let image = format!("images/{safe}.jpg");
        put_file(out, &image, &bytes)?;
        import.records.push(Record {
            image: image.into(),
            caption: caption.to_string(),
            turns: vec![Turn { instruction: DESCRIBE.into(), answer: caption.to_string() }],
            source: SOURCE.into(),
            split: split_for(&id, heldout),
        });
    }
    progress(n, n);
    Ok(import)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_layout() {
        let dir = crate::testutil::tmpdir("ccsbu");
        let src = dir.join("cc_sbu_align");
        std::fs::create_dir_all(src.join("image")).unwrap();
        let mut jpg = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).write_to(&mut jpg, image::ImageFormat::Jpeg).unwrap();
        std::fs::write(src.join("image/2.jpg"), jpg.get_ref()).unwrap();
        std::fs::write(src.join("image/10.jpg"), jpg.get_ref()).unwrap();
        std::fs::write(src.join("image/5.jpg"), b"not a jpeg").unwrap();
        std::fs::write(
            src.join("filter_cap.json"),
            r#"{"annotations": [
                {"image_id": "2", "caption": "The image shows a dark square."},
                {"image_id": 10, "caption": "Another square."},
                {"image_id": "5", "caption": "Broken."},
                {"image_id": "7", "caption": "Missing."},
                {"image_id": "8", "caption": "  "}
            ]}"#,
        )
        .unwrap();
        let imp = crate::import(SOURCE, &src, &dir.join("out"), &mut crate::no_progress).unwrap();
        let got: Vec<_> = imp.records.iter().map(|r| (r.image.to_str().unwrap(), r.caption.as_str())).collect();
        assert_eq!(got, [("images/10.jpg", "Another square."), ("images/2.jpg", "The image shows a dark square.")]);
        assert_eq!(imp.records[1].turns[0].answer, "The image shows a dark square.");
        let items: Vec<_> = imp.skipped.iter().map(|s| s.item.as_str()).collect();
        assert_eq!(items, ["5", "7", "8"]);
        assert!(crate::import(SOURCE, &dir, &dir.join("out2"), &mut crate::no_progress).is_err(), "no filter_cap.json");
    }
}
