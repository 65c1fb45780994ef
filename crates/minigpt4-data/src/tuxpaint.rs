//! Tux Paint's default stamps (Debian `tuxpaint-stamps-default`): each stamp is a PNG or SVG
//! with a `.txt` beside it whose first untagged line is the English description, followed by
//! translations tagged `xx.utf8=...`. PNGs are copied as they are (alpha kept); SVGs are
//! rasterised with resvg to about 256 px. Mirrored variants (`*_mirror.png`) are left out.

use std::collections::BTreeMap;
use std::path::Path;

use crate::archive::TarKind;
use crate::manifest::split_for;
use crate::{deb, fetch, put_file, Import, Progress, Record, Result};

pub const SOURCE: &str = "tuxpaint";
pub const HELDOUT: f64 = 0.1;
const ROOT: &str = "usr/share/tuxpaint/stamps/";
/// The longest side of a rasterised SVG stamp.
pub const SVG_SIZE: u32 = 256;

/// The English description in a stamp's `.txt`: the first non-empty line that is not a
/// translation (`lang.utf8=...`).
pub fn description(txt: &str) -> Option<String> {
    txt.lines()
        .map(|l| l.trim_start_matches('\u{feff}').trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find(|l| !is_translation(l))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn is_translation(line: &str) -> bool {
    match line.split_once('=') {
        Some((tag, _)) => {
            let tag = tag.trim();
            tag.ends_with(".utf8") && !tag.contains(' ') && tag.len() < 24
        }
        None => false,
    }
}

/// Renders an SVG to a PNG whose longest side is `size` pixels.
pub fn svg_to_png(svg: &[u8], size: u32) -> Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    let tree = usvg::Tree::from_data(svg, &usvg::Options::default()).map_err(|e| format!("bad SVG: {e}"))?;
    let s = tree.size();
    if !(s.width() > 0.0 && s.height() > 0.0) {
        return Err("SVG has no size".into());
    }
    let scale = size as f32 / s.width().max(s.height());
    let w = ((s.width() * scale).round() as u32).max(1);
    let h = ((s.height() * scale).round() as u32).max(1);
    let mut pixmap = tiny_skia::Pixmap::new(w, h).ok_or("cannot allocate the raster")?;
    resvg::render(&tree, tiny_skia::Transform::from_scale(scale, scale), &mut pixmap.as_mut());
    if pixmap.pixels().iter().all(|p| p.alpha() == 0) {
        return Err("SVG renders to nothing".into());
    }
    pixmap.encode_png().map_err(|e| format!("PNG encoding failed: {e}"))
}

#[derive(Default)]
struct Stamp {
    png: Option<Vec<u8>>,
    svg: Option<Vec<u8>>,
    txt: Option<Vec<u8>>,
}

/// Imports from the fetched package in `input` (`$MINIGPT4_HOME/data/tuxpaint`).
pub fn import(input: &Path, out: &Path, heldout: f64, progress: Progress) -> Result<Import> {
    let deb_path = input.join(fetch::spec(SOURCE).expect("spec").packages[0].file);
    let total = std::fs::metadata(&deb_path).map(|m| m.len()).unwrap_or(0);
    let mut stamps: BTreeMap<String, Stamp> = BTreeMap::new();
    let mut read = 0u64;
    deb::walk(&deb_path, |it| {
        if it.kind != TarKind::File {
            return Ok(());
        }
        read += it.data.len() as u64 / 4; // the .deb is roughly a quarter of the data it unpacks to (mostly audio)
        progress(read.min(total), total);
        let Some(rel) = it.path.strip_prefix(ROOT) else { return Ok(()) };
        let Some((stem, ext)) = rel.rsplit_once('.') else { return Ok(()) };
        if !matches!(ext, "png" | "svg" | "txt") {
            return Ok(());
        }
        let stamp = stamps.entry(stem.to_string()).or_default();
        match ext {
            "png" => stamp.png = Some(it.data),
            "svg" => stamp.svg = Some(it.data),
            _ => stamp.txt = Some(it.data),
        }
        Ok(())
    })?;
    build(stamps, out, heldout, progress)
}

fn build(stamps: BTreeMap<String, Stamp>, out: &Path, heldout: f64, progress: Progress) -> Result<Import> {
    let mut import = Import::default();
    let n = stamps.len() as u64;
    for (i, (stem, s)) in stamps.iter().enumerate() {
        progress(i as u64, n);
        if ["_mirror", "_flip"].iter().any(|v| stem.strip_suffix(v).is_some_and(|b| stamps.contains_key(b))) {
            continue; // a mirrored or flipped copy of a stamp that is imported itself
        }
        let Some(txt) = &s.txt else {
            import.skip(stem, "no description (.txt)");
            continue;
        };
        let Some(caption) = description(&String::from_utf8_lossy(txt)) else {
            import.skip(stem, "the .txt has no English line");
            continue;
        };
        // Tux Paint itself prefers SVG; the PNG is the same drawing already rasterised, kept
        // as it is (fewer renderer differences), so a PNG wins when both are there.
        let bytes = match (&s.png, &s.svg) {
            (Some(png), _) => match crate::image_size(png) {
                Ok(_) => png.clone(),
                Err(e) => {
                    import.skip(format!("{stem}.png"), format!("unreadable PNG: {e}"));
                    continue;
                }
            },
            (None, Some(svg)) => match svg_to_png(svg, SVG_SIZE) {
                Ok(png) => png,
                Err(e) => {
                    import.skip(format!("{stem}.svg"), e);
                    continue;
                }
            },
            (None, None) => {
                import.skip(stem, "description without an image");
                continue;
            }
        };
        let rel = format!("images/{}.png", crate::safe_rel(stem));
        put_file(out, &rel, &bytes)?;
        import.records.push(Record {
            image: rel.into(),
            caption,
            turns: vec![],
            source: SOURCE.into(),
            split: split_for(stem, heldout),
        });
    }
    progress(n, n);
    Ok(import)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{png, tmpdir};

    const TXT: &str = "A US 25 cent piece ($.25) called a quarter.\nach.utf8=Ngidingidi cente\nca@valencia.utf8=Una moneda\nen_GB.utf8=A US 25 cent piece.\n";
    const SVG: &[u8] = br#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50"><rect x="10" y="10" width="80" height="30" fill="red"/></svg>"#;

    #[test]
    fn description_is_the_first_untagged_line() {
        assert_eq!(description(TXT).unwrap(), "A US 25 cent piece ($.25) called a quarter.");
        assert_eq!(
            description("\u{feff}\n  A calculator.  6x7=42\nde.utf8=Ein Rechner\n").unwrap(),
            "A calculator. 6x7=42"
        );
        assert_eq!(description("fr.utf8=Un chat\n"), None);
    }

    #[test]
    fn svg_is_rasterised_to_256() {
        let png = svg_to_png(SVG, 256).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgba8();
        assert_eq!(img.dimensions(), (256, 128));
        assert_eq!(img.get_pixel(0, 0)[3], 0, "transparent outside the drawing");
        assert_eq!(img.get_pixel(128, 64).0, [255, 0, 0, 255]);
        assert!(svg_to_png(b"<svg", 256).is_err());
    }

    #[test]
    fn imports_a_tiny_package() {
        let dir = tmpdir("tux");
        let p = png(8, 8);
        let deb = crate::deb::make_deb(
            &[
                ("./usr/share/tuxpaint/stamps/animals/cat.png", &p),
                ("./usr/share/tuxpaint/stamps/animals/cat_mirror.png", &p),
                ("./usr/share/tuxpaint/stamps/animals/cat.txt", b"A cat.\nfr.utf8=Un chat.\n"),
                ("./usr/share/tuxpaint/stamps/animals/cat.ogg", b"OggS"),
                ("./usr/share/tuxpaint/stamps/shapes/box.svg", SVG),
                ("./usr/share/tuxpaint/stamps/shapes/box.txt", b"A red box.\n"),
                ("./usr/share/tuxpaint/stamps/shapes/broken.png", b"not a png"),
                ("./usr/share/tuxpaint/stamps/shapes/broken.txt", b"Broken.\n"),
                ("./usr/share/tuxpaint/stamps/shapes/mute.png", &p),
                ("./usr/share/tuxpaint/stamps/seasonal/gift.txt", b"A gift.\n"),
            ],
            false,
        );
        let input = dir.join("in");
        std::fs::create_dir_all(&input).unwrap();
        std::fs::write(input.join(TUXPAINT_FILE), deb).unwrap();
        let out = dir.join("out");
        let imp = crate::import(SOURCE, &input, &out, &mut crate::no_progress).unwrap();
        let caps: Vec<_> = imp.records.iter().map(|r| (r.image.to_str().unwrap(), r.caption.as_str())).collect();
        assert_eq!(caps, [("images/animals/cat.png", "A cat."), ("images/shapes/box.png", "A red box.")]);
        assert_eq!(std::fs::read(out.join("images/animals/cat.png")).unwrap(), p);
        let reasons: Vec<_> =
            imp.skipped.iter().map(|s| (s.item.as_str(), s.reason.split(':').next().unwrap())).collect();
        assert_eq!(
            reasons,
            [
                ("seasonal/gift", "description without an image"),
                ("shapes/broken.png", "unreadable PNG"),
                ("shapes/mute", "no description (.txt)")
            ]
        );
        // Idempotent: a second run gives the same records.
        let again = crate::import(SOURCE, &input, &out, &mut crate::no_progress).unwrap();
        assert_eq!(again.records, imp.records);
    }

    const TUXPAINT_FILE: &str = "tuxpaint-stamps-default_2022.06.04-1_all.deb";

    #[test]
    #[ignore = "needs the fetched source: `minigpt4 data fetch tuxpaint`, then `cargo test --release -p minigpt4-data -- --ignored`"]
    fn real_package() {
        let input = crate::testutil::fetched(SOURCE);
        let out = tmpdir("tux-real");
        let imp = crate::import(SOURCE, &input, &out, &mut crate::no_progress).unwrap();
        let (train, held) = (imp.count(crate::Split::Train), imp.count(crate::Split::Heldout));
        println!("tuxpaint: {train} train, {held} heldout, {} skipped", imp.skipped.len());
        for s in &imp.skipped {
            println!("  skipped {}: {}", s.item, s.reason);
        }
        assert!(train + held > 900, "{train} + {held}");
        assert!((50..200).contains(&held));
        assert!(imp.records.iter().any(|r| r.caption == "A US 25 cent piece ($.25) called a quarter."));
        let _ = std::fs::remove_dir_all(&out);
    }
}
