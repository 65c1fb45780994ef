//! Emoji pictures named by code point, with names and categories from `emoji-datasource`'s
//! `emoji.json`: npm `@lobehub/fluent-emoji-3d` (Microsoft Fluent 3D renders, 256 px webp, MIT)
//! and npm `emoji-datasource-google` (Noto, 64 px PNG, Apache-2.0).
//!
//! Caption: "a 3D rendering of a grinning face emoji, from the smileys and emotion category".
//! The split is by emoji (all skin tones together), so an emoji held out in one set is held out
//! in the other too, in every tone.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use crate::archive::{decompressor, walk_tar, TarKind};
use crate::caption::article;
use crate::manifest::split_for;
use crate::{fetch, put_file, DataError, Import, Progress, Record, Result};

pub const HELDOUT: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    Fluent3d,
    Google,
}

impl Set {
    pub fn source(self) -> &'static str {
        match self {
            Set::Fluent3d => "fluent-emoji-3d",
            Set::Google => "emoji-google",
        }
    }
    fn style(self) -> &'static str {
        match self {
            Set::Fluent3d => "a 3D rendering",
            Set::Google => "a flat Noto-style drawing",
        }
    }
    /// Where the pictures are inside the package, and their extension.
    fn images(self) -> (&'static str, &'static str) {
        match self {
            Set::Fluent3d => ("package/assets/", ".webp"),
            Set::Google => ("package/img/google/64/", ".png"),
        }
    }
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    name: Option<String>,
    unified: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    skin_variations: Option<BTreeMap<String, Variation>>,
}

#[derive(Deserialize)]
struct Variation {
    unified: String,
}

/// One emoji as named in `emoji.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Named {
    pub name: String,
    pub category: String,
    /// e.g. "medium skin tone"
    pub skin: Option<String>,
    /// The code of the emoji without skin tone: all tones of one emoji share a split.
    pub base: String,
}

/// The code point sequence as lower-case hex without leading zeros, without the emoji
/// presentation selector U+FE0F and the tag terminator U+E007F, `-`-joined: `0023-FE0F-20E3`
/// and `23-fe0f-20e3` → `23-20e3`; tag sequences written with `_` are split too.
pub fn normalize_code(code: &str) -> Option<String> {
    let parts: Option<Vec<u32>> =
        code.split(['-', '_']).filter(|p| !p.is_empty()).map(|p| u32::from_str_radix(p, 16).ok()).collect();
    let parts: Vec<String> =
        parts?.into_iter().filter(|&c| c != 0xfe0f && c != 0xe007f).map(|c| format!("{c:x}")).collect();
    (!parts.is_empty()).then(|| parts.join("-"))
}

fn skin_tone(code: &str) -> Option<&'static str> {
    Some(match code.to_ascii_uppercase().as_str() {
        "1F3FB" => "light",
        "1F3FC" => "medium-light",
        "1F3FD" => "medium",
        "1F3FE" => "medium-dark",
        "1F3FF" => "dark",
        _ => return None,
    })
}

fn skin_phrase(key: &str) -> Option<String> {
    let tones: Option<Vec<&str>> = key.split('-').map(skin_tone).collect();
    let mut tones = tones?;
    tones.dedup();
    Some(match tones.as_slice() {
        [one] => format!("{one} skin tone"),
        [a, b] => format!("{a} and {b} skin tones"),
        _ => return None,
    })
}

/// Reads `emoji.json` into a map from normalized code to name, category and skin tone.
pub fn read_names(json: &[u8]) -> Result<HashMap<String, Named>, String> {
    let entries: Vec<Entry> = serde_json::from_slice(json).map_err(|e| format!("emoji.json: {e}"))?;
    let mut out = HashMap::new();
    for e in entries {
        let Some(name) = e.name.filter(|n| !n.trim().is_empty()) else { continue };
        let category = e.category.unwrap_or_default();
        if category == "Component" {
            continue;
        }
        let Some(base) = normalize_code(&e.unified) else { continue };
        out.insert(
            base.clone(),
            Named { name: name.clone(), category: category.clone(), skin: None, base: base.clone() },
        );
        for (key, v) in e.skin_variations.unwrap_or_default() {
            if let Some(code) = normalize_code(&v.unified) {
                out.insert(
                    code,
                    Named {
                        name: name.clone(),
                        category: category.clone(),
                        skin: skin_phrase(&key),
                        base: base.clone(),
                    },
                );
            }
        }
    }
    Ok(out)
}

/// The words for an emoji's name: Unicode names are upper-case ("GRINNING FACE" → "grinning
/// face"); flags are named "Georgia Flag" (→ "flag of Georgia"); "FAMILY: WOMAN, GIRL" →
/// "family with woman, girl".
pub fn name_words(name: &str) -> String {
    let n = name.trim();
    if let Some(country) = n.strip_suffix(" Flag") {
        return format!("flag of {country}");
    }
    let n = if n.chars().any(|c| c.is_lowercase()) { n.to_string() } else { n.to_lowercase() };
    n.replace(": ", " with ").split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn caption(set: Set, named: &Named) -> String {
    let words = name_words(&named.name);
    let first = words.split_whitespace().next().unwrap_or("");
    let mut s = format!("{} of {} {words} emoji", set.style(), article(first));
    if let Some(skin) = &named.skin {
        s.push_str(&format!(" with {skin}"));
    }
    if !named.category.is_empty() {
        s.push_str(&format!(", from the {} category", named.category.to_lowercase().replace(" & ", " and ")));
    }
    s
}

/// Imports one emoji set from its fetched packages in `input`.
pub fn import(set: Set, input: &Path, out: &Path, heldout: f64, progress: Progress) -> Result<Import> {
    let spec = fetch::spec(set.source()).expect("spec");
    let pictures = input.join(spec.packages[0].file);
    // The names come from emoji-datasource (fluent) or from the google package itself.
    let names_pkg = input.join(spec.packages.last().expect("a package").file);
    let mut json: Option<Vec<u8>> = None;
    walk_tgz(&names_pkg, |path, data| {
        if path == "package/emoji.json" {
            json = Some(data);
        }
    })?;
    let json = json.ok_or_else(|| DataError::format(&names_pkg, "no package/emoji.json"))?;
    let names = read_names(&json).map_err(|e| DataError::format(&names_pkg, e))?;

    let (prefix, ext) = set.images();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    walk_tgz(&pictures, |path, data| {
        if let Some(file) = path.strip_prefix(prefix).filter(|f| f.ends_with(ext) && !f.contains('/')) {
            files.insert(file.to_string(), data);
        }
    })?;
    let mut import = Import::default();
    let n = files.len() as u64;
    for (i, (file, bytes)) in files.iter().enumerate() {
        progress(i as u64, n);
        let stem = file.strip_suffix(ext).unwrap_or(file);
        let Some(code) = normalize_code(stem) else {
            import.skip(file, "file name is not a code point sequence");
            continue;
        };
        let Some(named) = names.get(&code) else {
            import.skip(file, "not in emoji.json");
            continue;
        };
        if let Err(e) = crate::image_size(bytes) {
            import.skip(file, format!("unreadable image: {e}"));
            continue;
        }
        let image = format!("images/{code}{ext}");
        put_file(out, &image, bytes)?;
        import.records.push(Record {
            image: image.into(),
            caption: caption(set, named),
            turns: vec![],
            source: set.source().into(),
            split: split_for(&named.base, heldout),
        });
    }
    progress(n, n);
    Ok(import)
}

/// Calls `f(path, bytes)` for each regular file of a gzip'd tar (an npm package).
fn walk_tgz(path: &Path, mut f: impl FnMut(&str, Vec<u8>)) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    walk_tar(decompressor(".tgz", std::io::BufReader::new(file))?, path, |it| {
        if it.kind == TarKind::File {
            f(&it.path, it.data);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"[
      {"name":"HASH KEY","unified":"0023-FE0F-20E3","category":"Symbols"},
      {"name":"GRINNING FACE","unified":"1F600","category":"Smileys & Emotion"},
      {"name":"FATHER CHRISTMAS","unified":"1F385","category":"People & Body",
       "skin_variations":{"1F3FD":{"unified":"1F385-1F3FD"}}},
      {"name":"Georgia Flag","unified":"1F1EC-1F1EA","category":"Flags"},
      {"name":"EMOJI MODIFIER FITZPATRICK TYPE-3","unified":"1F3FC","category":"Component"}
    ]"#;

    #[test]
    fn codes_normalize_across_naming_styles() {
        assert_eq!(normalize_code("0023-FE0F-20E3").unwrap(), "23-20e3");
        assert_eq!(normalize_code("23-fe0f-20e3").unwrap(), "23-20e3");
        assert_eq!(normalize_code("1f3f4-e0067_e0062_e0065").unwrap(), "1f3f4-e0067-e0062-e0065");
        assert_eq!(normalize_code("1F3F4-E0067-E0062-E0065-E007F").unwrap(), "1f3f4-e0067-e0062-e0065");
        assert_eq!(normalize_code("readme"), None);
    }

    #[test]
    fn captions_from_names() {
        let names = read_names(JSON.as_bytes()).unwrap();
        assert_eq!(names.len(), 5);
        assert_eq!(
            caption(Set::Fluent3d, &names["1f600"]),
            "a 3D rendering of a grinning face emoji, from the smileys and emotion category"
        );
        assert_eq!(
            caption(Set::Google, &names["1f385-1f3fd"]),
            "a flat Noto-style drawing of a father christmas emoji with medium skin tone, from the people and body category"
        );
        assert_eq!(
            caption(Set::Fluent3d, &names["1f1ec-1f1ea"]),
            "a 3D rendering of a flag of Georgia emoji, from the flags category"
        );
        assert_eq!(name_words("FAMILY: WOMAN, GIRL"), "family with woman, girl");
        assert_eq!(skin_phrase("1F3FB-1F3FC").unwrap(), "light and medium-light skin tones");
    }

    #[test]
    fn imports_a_tiny_npm_package() {
        let dir = crate::testutil::tmpdir("emoji");
        let p = crate::testutil::png(4, 4);
        let tgz = crate::archive::tests::gzip(&crate::archive::tests::make_tar(
            &[
                ("package/emoji.json", JSON.as_bytes()),
                ("package/img/google/64/1f600.png", &p),
                ("package/img/google/64/0023-fe0f-20e3.png", &p),
                ("package/img/google/64/1f999.png", &p),
                ("package/img/google/64/1f385.png", b"broken"),
            ],
            &[],
        ));
        let input = dir.join("in");
        std::fs::create_dir_all(&input).unwrap();
        std::fs::write(input.join(fetch::spec("emoji-google").unwrap().packages[0].file), tgz).unwrap();
        let imp = crate::import("emoji-google", &input, &dir.join("out"), &mut crate::no_progress).unwrap();
        let got: Vec<_> = imp.records.iter().map(|r| r.image.to_str().unwrap()).collect();
        assert_eq!(got, ["images/1f600.png", "images/23-20e3.png"]);
        assert_eq!(imp.skipped.len(), 2);
    }

    fn real(set: Set, min: usize) {
        let input = crate::testutil::fetched(set.source());
        let out = crate::testutil::tmpdir(set.source());
        let imp = crate::import(set.source(), &input, &out, &mut crate::no_progress).unwrap();
        let (train, held) = (imp.count(crate::Split::Train), imp.count(crate::Split::Heldout));
        println!("{}: {train} train, {held} heldout, {} skipped", set.source(), imp.skipped.len());
        for s in imp.skipped.iter().take(20) {
            println!("  skipped {}: {}", s.item, s.reason);
        }
        assert!(train + held >= min, "{train} + {held}");
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    #[ignore = "needs the fetched source: `minigpt4 data fetch fluent-emoji-3d`, then `cargo test --release -p minigpt4-data -- --ignored`"]
    fn real_fluent_3d() {
        real(Set::Fluent3d, 3300);
    }

    #[test]
    #[ignore = "needs the fetched source: `minigpt4 data fetch emoji-google`, then `cargo test --release -p minigpt4-data -- --ignored`"]
    fn real_google() {
        real(Set::Google, 3700);
    }
}
