//! MiniGPT-v2's task identifiers and grounded answers (Chen et al., arXiv 2310.09478, §3.2;
//! DESIGN §6). A question may start with a task identifier (`[grounding] describe this image in
//! detail`); answers then carry boxes as `<p>label</p>{<x1><y1><x2><y2>}` (several boxes of one
//! label joined by `<delim>`), integer corners on a 0–100 grid of the squashed image.
//! [`parse_answer`] turns them into boxes in image pixels and plain text; [`draw_boxes`] draws them.

use image::{Rgb, RgbImage};
use serde::Serialize;

/// MiniGPT-v2's task identifiers; none means plain chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Describe with the objects' boxes.
    Grounding,
    /// The box of the object a phrase refers to.
    Refer,
    /// Every object of a kind (or all), with boxes.
    Detection,
    /// What is in a given box.
    Identify,
    /// A short answer.
    Vqa,
}

impl Task {
    /// The identifier as the model saw it in training.
    pub fn tag(self) -> &'static str {
        match self {
            Task::Grounding => "[grounding]",
            Task::Refer => "[refer]",
            Task::Detection => "[detection]",
            Task::Identify => "[identify]",
            Task::Vqa => "[vqa]",
        }
    }

    pub const ALL: [Task; 5] = [Task::Grounding, Task::Refer, Task::Detection, Task::Identify, Task::Vqa];

    /// `question` with this task's identifier in front (MiniGPT-v2's demo: `"[grounding] " + text`).
    pub fn ask(self, question: &str) -> String {
        format!("{} {}", self.tag(), question.trim())
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        Task::ALL
            .into_iter()
            .find(|t| t.tag()[1..t.tag().len() - 1] == s)
            .ok_or_else(|| format!("unknown task `{s}` (expected one of: grounding, refer, detection, identify, vqa)"))
    }
}

/// One box of an answer, in pixels of the image the question was about.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroundedBox {
    /// The `<p>…</p>` phrase before it (empty for a bare box, e.g. a `[refer]` answer).
    pub label: String,
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

/// An answer split into readable text and its boxes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Grounded {
    /// The answer without box markup (`<p>`/`</p>` dropped, boxes removed).
    pub text: String,
    pub boxes: Vec<GroundedBox>,
    /// Box markup that could not be read (left out of `boxes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The grid MiniGPT-v2 writes coordinates on.
pub const GRID: f32 = 100.0;

/// Reads `{<x1><y1><x2><y2>}` starting at `s[0] == '{'`: the four numbers and the length read.
fn read_box(s: &str) -> (Result<[f32; 4], String>, usize) {
    let end = match s.find('}') {
        Some(e) => e,
        None => return (Err(format!("unclosed box `{}`", s.chars().take(40).collect::<String>())), s.len()),
    };
    let inner = &s[1..end];
    let mut nums = Vec::new();
    let mut rest = inner.trim();
    while let Some(r) = rest.strip_prefix('<') {
        let Some(close) = r.find('>') else { break };
        nums.push(r[..close].trim().to_string());
        rest = r[close + 1..].trim_start();
    }
    let box_text = &s[..=end];
    if !rest.is_empty() || nums.len() != 4 {
        return (Err(format!("`{box_text}` is not {{<x1><y1><x2><y2>}}")), end + 1);
    }
    let mut v = [0f32; 4];
    for (slot, n) in v.iter_mut().zip(&nums) {
        match n.parse::<f32>() {
            Ok(x) if x.is_finite() => *slot = x,
            _ => return (Err(format!("`{box_text}`: `{n}` is not a number")), end + 1),
        }
    }
    (Ok(v), end + 1)
}

/// Whether `answer` holds any box markup (`<p>`, `{`, `<delim>`): without it there is nothing to
/// parse, nor an image size to know.
pub fn has_markup(answer: &str) -> bool {
    ["<p>", "{", "<delim>"].iter().any(|m| answer.contains(m))
}

/// Splits `answer` into text and boxes for an image of `width` × `height` pixels. Corners are
/// clamped to the 0–100 grid and put in order (x1 ≤ x2, y1 ≤ y2); malformed boxes are left out
/// with a warning, never an error.
pub fn parse_answer(answer: &str, width: u32, height: u32) -> Grounded {
    let mut out = Grounded::default();
    if !has_markup(answer) {
        // No markup: the answer as written, line breaks and all.
        out.text = answer.to_string();
        return out;
    }
    let mut text = String::with_capacity(answer.len());
    let mut label = String::new();
    let mut rest = answer;
    let (w, h) = (width as f32, height as f32);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("<p>") {
            // A phrase: its text stays in the answer and labels the boxes that follow.
            let (phrase, after) = match r.find("</p>") {
                Some(i) => (&r[..i], &r[i + 4..]),
                None => (r, ""),
            };
            label = phrase.trim().to_string();
            text.push_str(phrase);
            rest = after;
        } else if rest.starts_with('{') {
            let (parsed, used) = read_box(rest);
            match parsed {
                Ok([a, b, c, d]) => {
                    let clamp = |v: f32| v.clamp(0.0, GRID);
                    let (x1, x2) = (clamp(a.min(c)), clamp(a.max(c)));
                    let (y1, y2) = (clamp(b.min(d)), clamp(b.max(d)));
                    out.boxes.push(GroundedBox {
                        label: label.clone(),
                        x1: x1 * w / GRID,
                        y1: y1 * h / GRID,
                        x2: x2 * w / GRID,
                        y2: y2 * h / GRID,
                    });
                }
                Err(why) => out.warnings.push(why),
            }
            rest = &rest[used..];
            rest = rest.strip_prefix("<delim>").unwrap_or(rest);
        } else {
            let next = rest[1..].find(['<', '{']).map_or(rest.len(), |i| i + 1);
            let chunk = &rest[..next];
            // A stray `<delim>` or tag outside a box is markup, not text.
            if chunk != "<delim>" {
                text.push_str(chunk);
            }
            rest = &rest[next..];
        }
    }
    out.text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    out
}

/// Distinct, readable outline colours, one per label (in order of first appearance).
const COLOURS: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [255, 225, 25],
];

/// `image` with each box outlined (3 px, one colour per label) and its label written in a
/// filled tab above its top-left corner (8×8 bitmap font, ASCII; other characters as `?`).
pub fn draw_boxes(image: &RgbImage, boxes: &[GroundedBox]) -> RgbImage {
    let mut img = image.clone();
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return img;
    }
    let mut labels: Vec<&str> = Vec::new();
    for b in boxes {
        let li = labels.iter().position(|l| *l == b.label).unwrap_or_else(|| {
            labels.push(&b.label);
            labels.len() - 1
        });
        let colour = Rgb(COLOURS[li % COLOURS.len()]);
        let px = |v: f32, max: u32| (v.round().max(0.0) as u32).min(max - 1);
        let (x1, y1, x2, y2) = (px(b.x1, w), px(b.y1, h), px(b.x2, w), px(b.y2, h));
        const THICK: u32 = 3;
        for t in 0..THICK {
            for x in x1..=x2 {
                for y in [y1.saturating_add(t).min(y2), y2.saturating_sub(t).max(y1)] {
                    img.put_pixel(x, y, colour);
                }
            }
            for y in y1..=y2 {
                for x in [x1.saturating_add(t).min(x2), x2.saturating_sub(t).max(x1)] {
                    img.put_pixel(x, y, colour);
                }
            }
        }
        draw_label(&mut img, &b.label, x1, y1, colour);
    }
    img
}

/// The label in white on a tab of `colour`, above `(x, y)` (inside the image when there is no
/// room above).
fn draw_label(img: &mut RgbImage, label: &str, x: u32, y: u32, colour: Rgb<u8>) {
    if label.is_empty() {
        return;
    }
    let (w, h) = img.dimensions();
    let glyphs: Vec<[u8; 8]> = label
        .chars()
        .map(|c| font8x8::legacy::BASIC_LEGACY[if c.is_ascii() { c as usize } else { b'?' as usize }])
        .collect();
    let (tab_w, tab_h) = (glyphs.len() as u32 * 8 + 4, 12u32);
    let top = if y >= tab_h { y - tab_h } else { y };
    for ty in top..(top + tab_h).min(h) {
        for tx in x..(x + tab_w).min(w) {
            img.put_pixel(tx, ty, colour);
        }
    }
    for (i, g) in glyphs.iter().enumerate() {
        for (row, bits) in g.iter().enumerate() {
            for col in 0..8u32 {
                if bits >> col & 1 == 1 {
                    let (px, py) = (x + 2 + i as u32 * 8 + col, top + 2 + row as u32);
                    if px < w && py < h {
                        img.put_pixel(px, py, Rgb([255, 255, 255]));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_into_text_and_pixel_boxes() {
        let g = parse_answer(
            "<p>a cat</p> {<10><20><50><80>} sits next to <p>two cups</p> {<60><0><70><10>}<delim>{<80><5><90><15>} on a table.",
            200,
            100,
        );
        assert_eq!(g.text, "a cat sits next to two cups on a table.");
        assert!(g.warnings.is_empty(), "{:?}", g.warnings);
        let b = |label: &str, x1, y1, x2, y2| GroundedBox { label: label.into(), x1, y1, x2, y2 };
        assert_eq!(
            g.boxes,
            vec![
                b("a cat", 20.0, 20.0, 100.0, 80.0),
                b("two cups", 120.0, 0.0, 140.0, 10.0),
                b("two cups", 160.0, 5.0, 180.0, 15.0)
            ]
        );
        // Generated answers: boxes written from random grid corners come back exactly.
        let mut rng = 7u64;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) as u32 % 101
        };
        for _ in 0..200 {
            let c = [next(), next(), next(), next()];
            let g = parse_answer(&format!("<p>thing</p>{{<{}><{}><{}><{}>}}", c[0], c[1], c[2], c[3]), 100, 100);
            let want = (c[0].min(c[2]) as f32, c[1].min(c[3]) as f32, c[0].max(c[2]) as f32, c[1].max(c[3]) as f32);
            let got = &g.boxes[0];
            assert_eq!((got.x1, got.y1, got.x2, got.y2), want);
        }
    }

    #[test]
    fn malformed_boxes_are_left_out_with_a_warning_and_corners_clamped() {
        let g = parse_answer("<p>dog</p>{<10><20><30>} and {<a><1><2><3>} then {<-5><50><140><120>} {<1><2>", 100, 100);
        assert_eq!(g.boxes.len(), 1);
        assert_eq!((g.boxes[0].x1, g.boxes[0].y1, g.boxes[0].x2, g.boxes[0].y2), (0.0, 50.0, 100.0, 100.0));
        assert_eq!(g.warnings.len(), 3, "{:?}", g.warnings);
        assert!(g.warnings[0].contains("is not {<x1><y1><x2><y2>}"));
        assert!(g.warnings[1].contains("`a` is not a number"));
        assert!(g.warnings[2].contains("unclosed"));
        // Plain answers are untouched.
        let g = parse_answer("A red bus on a street.", 10, 10);
        assert_eq!((g.text.as_str(), g.boxes.len()), ("A red bus on a street.", 0));
    }

    #[test]
    fn drawn_boxes_are_where_the_coordinates_say() {
        let img = RgbImage::from_pixel(100, 80, Rgb([0, 0, 0]));
        let boxes = parse_answer("<p>cat</p>{<20><25><60><75>}", 100, 80).boxes;
        let out = draw_boxes(&img, &boxes);
        let red = Rgb(COLOURS[0]);
        // Box (20, 20)–(60, 60) in pixels: its edges are coloured, its inside and outside not.
        for (x, y) in [(20, 40), (60, 40), (40, 20), (40, 60), (21, 40), (59, 40)] {
            assert_eq!(*out.get_pixel(x, y), red, "edge pixel ({x}, {y})");
        }
        for (x, y) in [(40, 40), (10, 40), (70, 40), (40, 70)] {
            assert_eq!(*out.get_pixel(x, y), Rgb([0, 0, 0]), "pixel ({x}, {y})");
        }
        // The label's tab sits above the box, with white glyph pixels in it.
        assert_eq!(*out.get_pixel(21, 9), red);
        let white = (8..20)
            .flat_map(|y| (20..50).map(move |x| (x, y)))
            .filter(|&(x, y)| *out.get_pixel(x, y) == Rgb([255, 255, 255]));
        assert!(white.count() > 10);
    }
}
