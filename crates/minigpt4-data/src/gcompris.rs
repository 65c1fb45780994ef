//! GCompris's real photographs (Debian `gcompris-qt-data`): webp files inside the activities'
//! Qt `.rcc` resource archives.
//!
//! Which resources are photographs was checked by eye on version 3.1: the "explore" activities
//! (monuments, world animals, farm animals, world music), `erase` (animals), `categorization`
//! (fishes, monuments, tools, renewable energy, everyday objects) and `clickgame`'s sea
//! backgrounds. Paintings (`paintings`, `details`, `babyshapes`) and drawings are left out.
//! The explore activities' boards (`resource/board/board*.qml`) give each photo a title and a
//! paragraph (`title`, `text`, `image2`): the caption names the title and the paragraph
//! becomes a stage-2 description. The other photos are captioned from their file names.
//! Half of the photos are held out (they are the only real photographs here).

use std::collections::BTreeMap;
use std::path::Path;

use crate::archive::TarKind;
use crate::caption::{sentence, strip_numbering, with_article, words};
use crate::manifest::split_for;
use crate::{deb, fetch, put_file, rcc, Import, Progress, Record, Result, Turn};

pub const SOURCE: &str = "gcompris";
pub const HELDOUT: f64 = 0.5;
const RCC_DIR: &str = "usr/share/gcompris-qt/rcc/";
const ACTIVITIES: &str = "/gcompris/src/activities/";
/// The instruction a described photo's stage-2 turn carries.
pub const DESCRIBE: &str = "Describe this image in detail.";

/// Activities whose boards describe their photos.
const EXPLORE: &[&str] = &["explore_monuments", "explore_world_animals", "explore_farm_animals", "explore_world_music"];

/// Folders (under the activities) whose webp files are photographs, and how to name them.
const PHOTO_DIRS: &[(&str, Naming)] = &[
    ("erase/resource/", Naming::Name),
    ("categorization/resource/images/fishes/", Naming::Fixed("a fish")),
    ("categorization/resource/images/monuments/", Naming::Monument),
    ("categorization/resource/images/tools/", Naming::Name),
    ("categorization/resource/images/renewable/", Naming::Renewable),
    ("categorization/resource/images/others/", Naming::Name),
    ("clickgame/resource/sea", Naming::Fixed("the sea floor, seen underwater")),
];

#[derive(Clone, Copy, Debug)]
enum Naming {
    /// From the file name: "northern_harrier.webp" → "a northern harrier".
    Name,
    /// From the file name, kept as a proper name: "tajMahal" → "taj mahal".
    Monument,
    /// Renewable energy: "solar4" → "solar panels", "dam2" → "a dam".
    Renewable,
    Fixed(&'static str),
}

/// One `{ "title": qsTr("…"), "text": qsTr("…"), "image2": "qrc:/…" }` entry of a board.
#[derive(Clone, Debug, PartialEq)]
pub struct Described {
    pub title: String,
    pub text: String,
    /// Resource path (`/gcompris/src/...`), without `qrc:`.
    pub image: String,
}

/// Finds the described photos in a board's QML.
pub fn board_entries(qml: &str) -> Vec<Described> {
    let mut out = Vec::new();
    for obj in objects(qml) {
        let (Some(title), Some(image)) = (field(obj, "title"), field(obj, "image2")) else { continue };
        let text = field(obj, "text").unwrap_or_default();
        let image = image.trim_start_matches("qrc:").to_string();
        if image.ends_with(".webp") || image.ends_with(".jpg") || image.ends_with(".png") {
            out.push(Described { title, text, image });
        }
    }
    out
}

/// The innermost `{...}` blocks of a QML/JS text (strings and comments skipped).
fn objects(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut starts: Vec<usize> = Vec::new();
    let mut inner_closed: Vec<bool> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => i = skip_string(b, i),
            b'/' if b.get(i + 1) == Some(&b'/') => i = s[i..].find('\n').map_or(b.len(), |n| i + n),
            b'/' if b.get(i + 1) == Some(&b'*') => i = s[i + 2..].find("*/").map_or(b.len(), |n| i + n + 3),
            b'{' => {
                starts.push(i);
                inner_closed.push(false);
            }
            b'}' => {
                if let (Some(start), Some(had_inner)) = (starts.pop(), inner_closed.pop()) {
                    if !had_inner {
                        out.push(&s[start..=i]);
                    }
                    if let Some(parent) = inner_closed.last_mut() {
                        *parent = true;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Index of the closing quote of the string literal opening at `i`.
fn skip_string(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != q {
        if b[j] == b'\\' {
            j += 1;
        }
        j += 1;
    }
    j
}

/// The string value of `"key": qsTr("…")`, `"key": "…"` or `key: …` in an object's text.
fn field(obj: &str, key: &str) -> Option<String> {
    let b = obj.as_bytes();
    let mut from = 0;
    while let Some(pos) = obj[from..].find(key).map(|p| p + from) {
        from = pos + key.len();
        let before_ok = pos == 0 || matches!(b[pos - 1], b'"' | b'\'' | b' ' | b'\t' | b'\n' | b'{' | b',');
        let mut j = from;
        if matches!(b.get(j), Some(b'"' | b'\'')) {
            j += 1;
        }
        while matches!(b.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        if !before_ok || b.get(j) != Some(&b':') {
            continue;
        }
        j += 1;
        let rest = obj[j..].trim_start();
        let rest = rest.strip_prefix("qsTr(").map(str::trim_start).unwrap_or(rest);
        let rb = rest.as_bytes();
        if !matches!(rb.first(), Some(b'"' | b'\'')) {
            return None;
        }
        let end = skip_string(rb, 0);
        return Some(unescape_js(&rest[1..end.min(rest.len())]));
    }
    None
}

fn unescape_js(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push(' '),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn renewable(stem: &str) -> String {
    let w = strip_numbering(&words(stem));
    match w.as_str() {
        "solar" => "solar panels".into(),
        "windmill" => "a windmill".into(),
        "dam" => "a hydroelectric dam".into(),
        other => with_article(other),
    }
}

/// Caption of a photo named only by its file.
fn caption_from_name(naming: Naming, file: &str) -> String {
    let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
    let thing = match naming {
        Naming::Name => with_article(&strip_numbering(&words(stem))),
        Naming::Monument => format!("the {}", strip_numbering(&words(stem))),
        Naming::Renewable => renewable(stem),
        Naming::Fixed(t) => t.to_string(),
    };
    format!("a photograph of {thing}")
}

/// Caption of a described photo: monuments keep their proper name ("a photograph of the Great
/// Pyramid of Giza"), animals and instruments get an article ("a photograph of a jaguar").
fn caption_from_title(activity: &str, title: &str) -> String {
    let t = title.trim().trim_end_matches('.');
    if activity == "explore_monuments" {
        let lower = t.to_lowercase();
        if lower.starts_with("the ") || lower.split_whitespace().count() == 1 {
            format!("a photograph of {t}")
        } else {
            format!("a photograph of the {t}")
        }
    } else if activity == "explore_world_music" {
        // Titles are regions ("Africa", "Scotland and Ireland") or a genre.
        if t.to_lowercase().contains("music") {
            format!("a photograph illustrating {t}")
        } else {
            format!("a photograph illustrating the music of {t}")
        }
    } else {
        format!("a photograph of {}", with_article(&t.to_lowercase()))
    }
}

/// Imports from the fetched package in `input` (`$MINIGPT4_HOME/data/gcompris`).
pub fn import(input: &Path, out: &Path, heldout: f64, progress: Progress) -> Result<Import> {
    let deb_path = input.join(fetch::spec(SOURCE).expect("spec").packages[0].file);
    let mut import = Import::default();
    let mut images: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut described: BTreeMap<String, (String, Described)> = BTreeMap::new();
    let total = std::fs::metadata(&deb_path).map(|m| m.len()).unwrap_or(0);
    let mut read = 0u64;
    deb::walk(&deb_path, |it| {
        read += it.data.len() as u64;
        progress(read.min(total), total);
        if it.kind != TarKind::File || !it.path.starts_with(RCC_DIR) || !it.path.ends_with(".rcc") {
            return Ok(());
        }
        let files = match rcc::read(&it.data) {
            Ok(f) => f,
            Err(e) => {
                import.skip(it.path.clone(), format!("unreadable resource archive: {e}"));
                return Ok(());
            }
        };
        for f in files {
            let Some(rel) = f.path.strip_prefix(ACTIVITIES) else { continue };
            let activity = rel.split('/').next().unwrap_or("");
            let is_board = EXPLORE.contains(&activity) && rel.contains("/board/") && rel.ends_with(".qml");
            let is_photo_file = rel.ends_with(".webp")
                && (EXPLORE.contains(&activity) || PHOTO_DIRS.iter().any(|(p, _)| rel.starts_with(p)));
            if !is_board && !is_photo_file {
                continue;
            }
            let data = match f.data {
                Ok(d) => d,
                Err(e) => {
                    import.skip(f.path.clone(), e);
                    continue;
                }
            };
            if is_board {
                for d in board_entries(&String::from_utf8_lossy(&data)) {
                    described.insert(d.image.clone(), (activity.to_string(), d));
                }
            } else {
                images.insert(f.path, data);
            }
        }
        Ok(())
    })?;

    let n = images.len() as u64;
    for (i, (path, bytes)) in images.iter().enumerate() {
        progress(i as u64, n);
        let rel = path.strip_prefix(ACTIVITIES).unwrap_or(path);
        let activity = rel.split('/').next().unwrap_or("");
        let file = rel.rsplit('/').next().unwrap_or(rel);
        let (caption, turns) = if let Some((act, d)) = described.get(path.as_str()) {
            let caption = caption_from_title(act, &d.title);
            let mut answer = sentence(&format!("This is {}", caption));
            if !d.text.is_empty() {
                answer = format!("{answer} {}", d.text);
            }
            (caption, vec![Turn { instruction: DESCRIBE.into(), answer }])
        } else if EXPLORE.contains(&activity) {
            continue; // explore activities also hold maps and icons: only described photos count
        } else {
            let naming = PHOTO_DIRS.iter().find(|(p, _)| rel.starts_with(p)).map(|(_, n)| *n).unwrap_or(Naming::Name);
            (caption_from_name(naming, file), vec![])
        };
        match crate::image_size(bytes) {
            Ok((w, h)) if w.min(h) >= 100 && w.max(h) >= 240 => {}
            Ok((w, h)) => {
                import.skip(rel, format!("too small to be one of the photographs: {w}×{h}"));
                continue;
            }
            Err(e) => {
                import.skip(rel, format!("unreadable image: {e}"));
                continue;
            }
        }
        let image = format!("images/{}", crate::safe_rel(rel).replace("/resource", ""));
        put_file(out, &image, bytes)?;
        import.records.push(Record {
            image: image.into(),
            caption,
            turns,
            source: SOURCE.into(),
            split: split_for(rel, heldout),
        });
    }
    for (path, _) in described.iter().filter(|(p, _)| !images.contains_key(p.as_str())) {
        import.skip(path.clone(), "described in a board but not in the archives");
    }
    progress(n, n);
    Ok(import)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOARD: &str = r#"/* GCompris */
import QtQuick 2.12
QtObject {
    property string backgroundImage: "qrc:/gcompris/src/activities/explore_monuments/resource/egypt/egypt.svg"
    property var tab: [
        {
            "image": "qrc:/gcompris/src/activities/explore_monuments/resource/key.svg",
            "title": qsTr("Great Pyramid of Giza"),
            "text": qsTr("The Great Pyramid of Giza is also known as the \"Pyramid of Khufu\". {Braces} in text."),
            "image2": "qrc:/gcompris/src/activities/explore_monuments/resource/egypt/greatPyramidOfGiza.webp",
            "text2": qsTr("Great Pyramid of Giza"),
            "x": "0.627"
        },
        {
            "image": "qrc:/gcompris/src/activities/explore_world_animals/resource/animals/question.svg",
            "title": qsTr("Jaguar"),
            "text": qsTr("The jaguar's jaw is well developed."),
            "image2": "qrc:/gcompris/src/activities/explore_monuments/resource/egypt/jaguar.webp",
            "x": 0.32
        }
    ]
}"#;

    #[test]
    fn board_fields() {
        let e = board_entries(BOARD);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].title, "Great Pyramid of Giza");
        assert_eq!(e[0].text, "The Great Pyramid of Giza is also known as the \"Pyramid of Khufu\". {Braces} in text.");
        assert_eq!(e[0].image, "/gcompris/src/activities/explore_monuments/resource/egypt/greatPyramidOfGiza.webp");
        assert_eq!(e[1].text, "The jaguar's jaw is well developed.");
    }

    #[test]
    fn captions() {
        assert_eq!(
            caption_from_title("explore_monuments", "Great Pyramid of Giza"),
            "a photograph of the Great Pyramid of Giza"
        );
        assert_eq!(caption_from_title("explore_world_animals", "Jaguar"), "a photograph of a jaguar");
        assert_eq!(
            caption_from_title("explore_world_music", "Africa"),
            "a photograph illustrating the music of Africa"
        );
        assert_eq!(
            caption_from_title("explore_world_music", "European Classical Music"),
            "a photograph illustrating European Classical Music"
        );
        assert_eq!(caption_from_name(Naming::Name, "rhinoceros.webp"), "a photograph of a rhinoceros");
        assert_eq!(caption_from_name(Naming::Name, "northern_harrier.webp"), "a photograph of a northern harrier");
        assert_eq!(caption_from_name(Naming::Name, "scissors2.webp"), "a photograph of scissors");
        assert_eq!(caption_from_name(Naming::Name, "screwDriver1.webp"), "a photograph of a screw driver");
        assert_eq!(caption_from_name(Naming::Monument, "tajMahal.webp"), "a photograph of the taj mahal");
        assert_eq!(caption_from_name(Naming::Renewable, "solar8.webp"), "a photograph of solar panels");
    }

    fn webp(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_pixel(w, h, image::Rgba([10, 200, 30, 255]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::WebP).unwrap();
        out.into_inner()
    }

    #[test]
    fn imports_a_tiny_package_with_an_rcc() {
        let dir = crate::testutil::tmpdir("gc");
        let big = webp(320, 240);
        let a = "/gcompris/src/activities/";
        let rcc1 = rcc::write(&[
            (&format!("{a}explore_monuments/resource/board/board6.qml"), BOARD.as_bytes(), rcc::ZLIB),
            (&format!("{a}explore_monuments/resource/egypt/greatPyramidOfGiza.webp"), &big, 0),
            (&format!("{a}explore_monuments/resource/egypt/map.webp"), &big, 0),
            (&format!("{a}erase/resource/northern_harrier.webp"), &big, rcc::ZSTD),
            (&format!("{a}erase/resource/icon.webp"), &webp(32, 32), 0),
            (&format!("{a}paintings/resource/image/monet.webp"), &big, 0),
        ]);
        let deb = crate::deb::make_deb(
            &[
                ("./usr/share/gcompris-qt/rcc/explore.rcc", &rcc1),
                ("./usr/share/gcompris-qt/rcc/broken.rcc", b"qres\0\0\0\x09"),
            ],
            false,
        );
        let input = dir.join("in");
        std::fs::create_dir_all(&input).unwrap();
        std::fs::write(input.join(fetch::spec(SOURCE).unwrap().packages[0].file), deb).unwrap();
        let imp = crate::import(SOURCE, &input, &dir.join("out"), &mut crate::no_progress).unwrap();
        let got: Vec<_> =
            imp.records.iter().map(|r| (r.image.to_str().unwrap(), r.caption.as_str(), r.turns.len())).collect();
        assert_eq!(
            got,
            [
                ("images/erase/northern_harrier.webp", "a photograph of a northern harrier", 0),
                (
                    "images/explore_monuments/egypt/greatPyramidOfGiza.webp",
                    "a photograph of the Great Pyramid of Giza",
                    1
                ),
            ]
        );
        assert!(imp.records[1].turns[0]
            .answer
            .starts_with("This is a photograph of the Great Pyramid of Giza. The Great Pyramid"));
        let skipped: Vec<_> = imp.skipped.iter().map(|s| s.item.as_str()).collect();
        assert_eq!(skipped.len(), 3, "{skipped:?}"); // broken.rcc, the small icon, jaguar.webp (described, absent)
    }

    #[test]
    #[ignore = "needs the fetched source: `minigpt4 data fetch gcompris`, then `cargo test --release -p minigpt4-data -- --ignored`"]
    fn real_package() {
        let input = crate::testutil::fetched(SOURCE);
        let out = crate::testutil::tmpdir("gc-real");
        let imp = crate::import(SOURCE, &input, &out, &mut crate::no_progress).unwrap();
        let (train, held) = (imp.count(crate::Split::Train), imp.count(crate::Split::Heldout));
        let described = imp.records.iter().filter(|r| !r.turns.is_empty()).count();
        println!("gcompris: {train} train, {held} heldout, {described} described, {} skipped", imp.skipped.len());
        for s in &imp.skipped {
            println!("  skipped {}: {}", s.item, s.reason);
        }
        assert!(train + held >= 230, "{train} + {held}");
        assert!(described >= 80, "{described}");
        assert!(held as f64 > 0.35 * (train + held) as f64 && (held as f64) < 0.65 * (train + held) as f64);
        let _ = std::fs::remove_dir_all(&out);
    }
}
