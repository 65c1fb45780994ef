//! Open Clip Art Library 0.18 (Debian `openclipart-png`, with `openclipart-svg` for metadata).
//!
//! The PNGs carry no text; their names are `title_author` cut to 24 characters plus `_NN`
//! numbering (`chemistry_flask_matthew__02`, `medicina_dottore_archite_01`). The SVG of the same
//! path has the drawing's `dc:title` and its author (`dc:creator`), so the caption takes the
//! title when it names this drawing (not a collection: "Lemon SVG theme", "card", "Clipart by
//! …"), else the file name with the author's name and the numbering cut off. The category path
//! is added: "a clip-art drawing of a chemistry flask, filed under science".
//! Images that the package links into a second category are imported once, under their real path.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::archive::TarKind;
use crate::caption::{squash, strip_numbering, with_article, words};
use crate::manifest::split_for;
use crate::{deb, fetch, put_file, Import, Progress, Record, Result};

pub const SOURCE: &str = "openclipart";
pub const HELDOUT: f64 = 0.1;
const PNG_ROOT: &str = "usr/share/openclipart/png/";
const SVG_ROOT: &str = "usr/share/openclipart/svg/";

/// What the SVG of a drawing says about it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta {
    pub title: Option<String>,
    pub creator: Option<String>,
}

/// Reads `dc:title` (of the work, not of its publisher/creator/rights agents) and the creator's
/// name from an SVG's RDF metadata. Plain text search: many of these files are not strict XML.
pub fn svg_meta(svg: &str) -> Meta {
    let Some(work) = between(svg, "<cc:Work", "</cc:Work>") else { return Meta::default() };
    let creator = between(work, "<dc:creator>", "</dc:creator>")
        .and_then(|c| between(c, "<dc:title>", "</dc:title>"))
        .map(unescape);
    let mut rest = work.to_string();
    for agent in ["dc:creator", "dc:publisher", "dc:rights", "dc:contributor"] {
        while let Some(s) = rest.find(&format!("<{agent}>")) {
            match rest[s..].find(&format!("</{agent}>")) {
                Some(e) => rest.replace_range(s..s + e + agent.len() + 3, ""),
                None => break,
            }
        }
    }
    let title = between(&rest, "<dc:title>", "</dc:title>").map(unescape);
    let clean = |s: String| Some(squash(&s)).filter(|s| !s.is_empty());
    Meta { title: title.and_then(clean), creator: creator.and_then(clean) }
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let a = s.find(open)? + open.len();
    let a = if open.ends_with('>') { a } else { a + s[a..].find('>')? + 1 };
    let b = s[a..].find(close)?;
    Some(&s[a..a + b])
}

/// XML entities, twice (some titles were escaped twice: `&amp;quot;`).
fn unescape(s: &str) -> String {
    let mut s = s.to_string();
    for _ in 0..2 {
        if !s.contains('&') {
            break;
        }
        s = s
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&#39;", "'")
            .replace("&amp;", "&");
    }
    s
}

/// Whether a `dc:title` names this drawing rather than a collection or a set.
/// `uses` is how many drawings of the package carry the same title.
pub fn title_is_specific(title: &str, uses: usize) -> bool {
    let t = title.to_lowercase();
    const COLLECTION: &[&str] = &[
        "clipart by",
        "collection",
        "theme",
        "icons",
        "iconset",
        "svg",
        "http",
        "sibmission",
        "submission",
        "various",
        "untitled",
        "cliparts",
        "hash(",
    ];
    uses < 5
        && !COLLECTION.iter().any(|c| t.contains(c))
        && t.chars().any(|c| c.is_alphabetic())
        && t.split_whitespace().count() <= 10
}

/// The file name without the author's name (as far as the 24-character cut left it) and
/// without the `_NN` numbering: `chemistry_flask_matthew__02` with creator "Matthew Wardrop"
/// → `chemistry flask`. `authors` are the known authors' names (lower-case, `_`-joined), tried
/// when the creator is unknown.
pub fn name_without_author(stem: &str, creator: Option<&str>, authors: &[String]) -> String {
    // Numbering: `_01`, `_02a`, `_01r` (a revision letter) at the end.
    let mut s = stem.to_lowercase();
    if let Some((head, tail)) = s.rsplit_once('_') {
        let digits = tail.trim_end_matches(|c: char| c.is_ascii_lowercase());
        if !head.is_empty()
            && (1..=3).contains(&digits.len())
            && digits.chars().all(|c| c.is_ascii_digit())
            && tail.len() <= digits.len() + 1
        {
            s = head.to_string();
        }
    }
    let slug = |name: &str| name.to_lowercase().split_whitespace().collect::<Vec<_>>().join("_");
    // The drawing's own creator when known (other authors' names could match title words).
    let candidates: Vec<String> = match creator {
        Some(c) => vec![slug(c)],
        None => authors.to_vec(),
    };
    for author in candidates.iter().filter(|a| a.len() >= 2) {
        // The longest tail `_xyz…` of the name that is a prefix of `_author`, at least 2 letters
        // of the author, or the whole author name.
        let marker = format!("_{author}");
        let mut best: Option<usize> = None;
        for (i, _) in s.match_indices('_') {
            let tail = &s[i..];
            let tail_trim = tail.trim_end_matches('_');
            if i > 0
                && tail_trim.len() >= 3.min(marker.len())
                && marker.starts_with(tail_trim)
                && (s.len() >= 23 || tail_trim == marker)
            {
                best = Some(i);
                break;
            }
        }
        if let Some(i) = best {
            s.truncate(i);
            break;
        }
    }
    words(s.trim_end_matches('_'))
}

const SUITS: &[(&str, &str)] = &[("c", "clubs"), ("d", "diamonds"), ("h", "hearts"), ("s", "spades")];
const RANKS: &[(&str, &str)] = &[("a", "ace"), ("j", "jack"), ("q", "queen"), ("k", "king")];

/// Names that follow a pattern of their own: playing cards, gramastar stars, jigsaw pieces,
/// flowchart shapes. `None` for the rest.
fn family_name(dir: &str, stem: &str) -> Option<String> {
    let s = stem.to_lowercase();
    if dir.starts_with("recreation/games/cards") {
        let parts: Vec<&str> = s.split('_').collect();
        if let [_, suit, rank] = parts.as_slice() {
            if *suit == "jk" {
                return Some(format!("a {} joker playing card", if *rank == "r" { "red" } else { "black" }));
            }
            let suit = SUITS.iter().find(|(k, _)| k == suit)?.1;
            let rank =
                RANKS.iter().find(|(k, _)| k == rank).map(|(_, v)| v.to_string()).unwrap_or_else(|| rank.to_string());
            return Some(format!("the {rank} of {suit} playing card"));
        }
        if s.starts_with("back") {
            return Some("the back of a playing card".into());
        }
    }
    if dir == "shapes/stars" {
        if let Some(rest) = s.strip_prefix("star_") {
            if let Some((n, _)) = rest.split_once("pt") {
                if let Ok(n) = n.parse::<u32>() {
                    return Some(format!("a {n}-pointed star"));
                }
            }
        }
    }
    if dir == "shapes/jigsaw" {
        if let [_, color, ..] = s.split('_').collect::<Vec<_>>().as_slice() {
            return Some(format!("a {color} jigsaw puzzle piece"));
        }
    }
    if dir == "shapes/flowchart" && s.starts_with("fc") {
        return Some("a flowchart symbol".into());
    }
    None
}

/// The caption of one drawing. `rel` is its path under the PNG root, `title` the metadata
/// title when specific (see [`title_is_specific`]).
pub fn caption_for(rel: &str, title: Option<&str>, creator: Option<&str>, authors: &[String]) -> String {
    let (dir, file) = rel.rsplit_once('/').unwrap_or(("", rel));
    let stem = file.strip_suffix(".png").unwrap_or(file);
    let thing = match family_name(dir, stem) {
        Some(t) => t,
        None => {
            let mut t = match title {
                Some(t) => strip_numbering(&words(&t.replace(['(', ')', '"'], " "))),
                None => strip_numbering(&name_without_author(stem, creator, authors)),
            };
            if t.is_empty() {
                t = words(stem);
            }
            if dir.contains("/flags") || dir.ends_with("flags") {
                if !t.contains("flag") {
                    t = format!("the flag of {t}");
                }
            } else if dir.starts_with("computer/icons") && !t.contains("icon") {
                t = format!("{t} icon");
            }
            with_article(&t)
        }
    };
    let category: Vec<String> = dir.split('/').filter(|d| !d.is_empty() && *d != "unsorted").map(words).collect();
    if category.is_empty() {
        format!("a clip-art drawing of {thing}")
    } else {
        format!("a clip-art drawing of {thing}, filed under {}", category.join(", "))
    }
}

/// Imports from the fetched packages in `input` (`$MINIGPT4_HOME/data/openclipart`).
pub fn import(input: &Path, out: &Path, heldout: f64, progress: Progress) -> Result<Import> {
    let spec = fetch::spec(SOURCE).expect("spec");
    let (png_deb, svg_deb) = (input.join(spec.packages[0].file), input.join(spec.packages[1].file));
    let mut import = Import::default();

    // Metadata from the SVG package (optional: without it, captions come from names only).
    let mut meta: HashMap<String, Meta> = HashMap::new();
    if svg_deb.exists() {
        let r = deb::walk(&svg_deb, |it| {
            if it.kind == TarKind::File {
                if let Some(rel) = it.path.strip_prefix(SVG_ROOT).and_then(|r| r.strip_suffix(".svg")) {
                    meta.insert(rel.to_string(), svg_meta(&String::from_utf8_lossy(&it.data)));
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            import.skip(svg_deb.display().to_string(), format!("metadata unreadable, names only: {e}"));
        }
    } else {
        import.skip(svg_deb.display().to_string(), "not fetched: captions from file names only");
    }
    let mut title_uses: HashMap<String, usize> = HashMap::new();
    for m in meta.values() {
        if let Some(t) = &m.title {
            *title_uses.entry(t.to_lowercase()).or_default() += 1;
        }
    }
    let mut authors: Vec<String> = meta
        .values()
        .filter_map(|m| m.creator.as_deref())
        .map(|c| c.to_lowercase().split_whitespace().collect::<Vec<_>>().join("_"))
        .filter(|a| a.len() >= 4)
        .collect();
    authors.sort();
    authors.dedup();

    let total = std::fs::metadata(&png_deb).map(|m| m.len()).unwrap_or(0);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let mut read = 0u64;
    deb::walk(&png_deb, |it| {
        read += it.data.len() as u64;
        progress(read.min(total), total);
        let Some(rel) = it.path.strip_prefix(PNG_ROOT) else { return Ok(()) };
        if !rel.ends_with(".png") {
            return Ok(());
        }
        match it.kind {
            TarKind::File => {
                files.insert(rel.to_string(), it.data);
            }
            TarKind::Link(target) => links.push((rel.to_string(), target)),
            _ => {}
        }
        Ok(())
    })?;
    for (rel, target) in links {
        import.skip(rel, format!("duplicate: same image as {target}"));
    }
    let n = files.len() as u64;
    for (i, (rel, bytes)) in files.iter().enumerate() {
        progress(i as u64, n);
        if let Err(e) = crate::image_size(bytes) {
            import.skip(rel, format!("unreadable PNG: {e}"));
            continue;
        }
        let key = rel.strip_suffix(".png").unwrap_or(rel);
        let m = meta.get(key).cloned().unwrap_or_default();
        let title = m
            .title
            .as_deref()
            .filter(|t| title_is_specific(t, title_uses.get(&t.to_lowercase()).copied().unwrap_or(0)));
        let caption = caption_for(rel, title, m.creator.as_deref(), &authors);
        let image = format!("images/{}", crate::safe_rel(rel));
        put_file(out, &image, bytes)?;
        import.records.push(Record {
            image: image.into(),
            caption,
            turns: vec![],
            source: SOURCE.into(),
            split: split_for(rel, heldout),
        });
    }
    progress(n, n);
    Ok(import)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{png, tmpdir};

    fn authors() -> Vec<String> {
        [
            "architetto_francesco_rollandin",
            "benji_park",
            "nicu_buculei",
            "gerald_g.",
            "jean-victor_balin",
            "dan_gerhards",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn author_and_numbering_are_cut_from_real_names() {
        let a = authors();
        assert_eq!(name_without_author("chemistry_flask_matthew__02", Some("Matthew Wardrop"), &a), "chemistry flask");
        assert_eq!(name_without_author("medicina_dottore_archite_01", None, &a), "medicina dottore");
        assert_eq!(
            name_without_author("mondo_architetto_frances_01", Some("Architetto Francesco Rollandin"), &a),
            "mondo"
        );
        assert_eq!(name_without_author("cfbulb_notlit_benji_park_", Some("Benji Park"), &a), "cfbulb notlit");
        assert_eq!(name_without_author("jupiter_dan_gerhards_01", None, &a), "jupiter");
        assert_eq!(name_without_author("flying_wasp_gerald_g._02", Some("Gerald G."), &a), "flying wasp");
        assert_eq!(name_without_author("glace_2_bw_jean-victor_b_01", Some("Jean-Victor Balin"), &a), "glace 2 bw");
        assert_eq!(name_without_author("rugby_brice_boyer_01", Some("Brice Boyer"), &a), "rugby");
        // Not an author: left alone.
        assert_eq!(name_without_author("stack_of_books_01", None, &a), "stack of books");
        assert_eq!(name_without_author("pancake", None, &a), "pancake");
    }

    #[test]
    fn captions_from_real_looking_paths() {
        let a = authors();
        assert_eq!(
            caption_for(
                "science/chemistry_flask_matthew__02.png",
                Some("Chemistry Flask"),
                Some("Matthew Wardrop"),
                &a
            ),
            "a clip-art drawing of a chemistry flask, filed under science"
        );
        assert_eq!(
            caption_for("animals/mammals/dogs/bored_dog_01.png", None, None, &a),
            "a clip-art drawing of a bored dog, filed under animals, mammals, dogs"
        );
        assert_eq!(
            caption_for("recreation/games/cards/bordered/bordered_c_k.png", Some("card"), None, &a),
            "a clip-art drawing of the king of clubs playing card, filed under recreation, games, cards, bordered"
        );
        assert_eq!(
            caption_for("shapes/stars/star_67pt11step.png", None, None, &a),
            "a clip-art drawing of a 67-pointed star, filed under shapes, stars"
        );
        assert_eq!(
            caption_for("shapes/jigsaw/jigsaw_red_03.png", Some("Clipart by Nicu Buculei - jigsaw_red_10"), None, &a),
            "a clip-art drawing of a red jigsaw puzzle piece, filed under shapes, jigsaw"
        );
        assert_eq!(
            caption_for("signs_and_symbols/flags/africa/algeria.png", Some("algeria"), None, &a),
            "a clip-art drawing of the flag of algeria, filed under signs and symbols, flags, africa"
        );
        assert_eq!(caption_for("unsorted/ape_miele.png", None, None, &a), "a clip-art drawing of an ape miele");
        assert_eq!(
            caption_for(
                "transportation/boating/sailing_capsize5.png",
                Some("Capsized Sailing Illustration 6"),
                None,
                &a
            ),
            "a clip-art drawing of a capsized sailing illustration, filed under transportation, boating"
        );
    }

    #[test]
    fn collection_titles_are_not_used() {
        assert!(title_is_specific("Chemistry Flask", 1));
        assert!(!title_is_specific("Lemon SVG theme", 411));
        assert!(!title_is_specific("Clipart by Nicu Buculei - jigsaw_red_10", 1));
        assert!(!title_is_specific("Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)", 1));
        assert!(!title_is_specific("card", 226));
    }

    #[test]
    fn metadata_from_svg() {
        let svg = r#"<svg><metadata><rdf:RDF><cc:Work rdf:about="">
            <dc:title>Chemistry &amp;amp; Flask</dc:title>
            <dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher>
            <dc:creator><cc:Agent><dc:title>Matthew Wardrop</dc:title></cc:Agent></dc:creator>
            </cc:Work></rdf:RDF></metadata></svg>"#;
        assert_eq!(
            svg_meta(svg),
            Meta { title: Some("Chemistry & Flask".into()), creator: Some("Matthew Wardrop".into()) }
        );
        let svg2 = r#"<cc:Work><dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher></cc:Work>"#;
        assert_eq!(svg_meta(svg2).title, None);
        assert_eq!(svg_meta("<svg/>"), Meta::default());
    }

    #[test]
    fn imports_tiny_packages_with_links() {
        let dir = tmpdir("oc");
        let input = dir.join("in");
        std::fs::create_dir_all(&input).unwrap();
        let p = png(4, 4);
        let data = crate::archive::tests::make_tar(
            &[
                ("./usr/share/openclipart/png/science/chemistry_flask_matthew__02.png", &p),
                ("./usr/share/openclipart/png/food/bad.png", b"xx"),
            ],
            &[(
                "./usr/share/openclipart/png/education/chemistry_flask_matthew__02.png",
                "../science/chemistry_flask_matthew__02.png",
            )],
        );
        let deb = crate::archive::write_ar(&[
            ("debian-binary", b"2.0\n"),
            ("data.tar.xz", &crate::archive::tests::xz(&data)),
        ]);
        let spec = fetch::spec(SOURCE).unwrap();
        std::fs::write(input.join(spec.packages[0].file), deb).unwrap();
        let imp = crate::import(SOURCE, &input, &dir.join("out"), &mut crate::no_progress).unwrap();
        assert_eq!(imp.records.len(), 1);
        assert_eq!(imp.records[0].caption, "a clip-art drawing of a chemistry flask matthew, filed under science");
        let items: Vec<_> = imp.skipped.iter().map(|s| s.item.as_str()).collect();
        assert!(items.contains(&"education/chemistry_flask_matthew__02.png"), "{items:?}");
        assert!(items.contains(&"food/bad.png"), "{items:?}");
    }

    #[test]
    #[ignore = "needs the fetched source: `minigpt4 data fetch openclipart`, then `cargo test --release -p minigpt4-data -- --ignored`"]
    fn real_packages() {
        let input = crate::testutil::fetched(SOURCE);
        let out = tmpdir("oc-real");
        let imp = crate::import(SOURCE, &input, &out, &mut crate::no_progress).unwrap();
        let (train, held) = (imp.count(crate::Split::Train), imp.count(crate::Split::Heldout));
        println!("openclipart: {train} train, {held} heldout, {} skipped", imp.skipped.len());
        assert!(train + held > 6500, "{train} + {held}");
        assert!(imp.records.iter().all(|r| r.caption.starts_with("a clip-art drawing of ")));
        let _ = std::fs::remove_dir_all(&out);
    }
}
