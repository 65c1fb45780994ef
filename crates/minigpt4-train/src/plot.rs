//! The loss curve as a PNG, drawn with the `image` crate alone: axes with "nice" ticks, the raw
//! per-step loss in a light colour and an exponential moving average over it in a dark one. A
//! tiny built-in 5×7 bitmap font writes the labels.

use std::io::Cursor;
use std::path::Path;

use anyhow::Result;
use image::{ImageFormat, Rgb, RgbImage};

const W: u32 = 900;
const H: u32 = 520;
const LEFT: i64 = 90;
const RIGHT: i64 = 24;
const TOP: i64 = 44;
const BOTTOM: i64 = 64;
const SCALE: i64 = 2;

const BG: Rgb<u8> = Rgb([255, 255, 255]);
const AXIS: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([228, 228, 228]);
const RAW: Rgb<u8> = Rgb([160, 190, 235]);
const EMA: Rgb<u8> = Rgb([20, 70, 170]);

/// 5×9 glyphs (7 rows above the baseline, 2 below), one byte per row, bit 4 = leftmost column.
fn glyph(c: char) -> Option<[u8; 9]> {
    match c {
        'g' => return Some([0, 0, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
        'p' => return Some([0, 0, 0b11110, 0b10001, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000]),
        'y' => return Some([0, 0, 0b10001, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
        _ => {}
    }
    let g: [u8; 7] = match c {
        '0' => [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110],
        '1' => [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        '2' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111],
        '3' => [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110],
        '4' => [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010],
        '5' => [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110],
        '6' => [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110],
        '7' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000],
        '8' => [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110],
        '9' => [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100],
        '.' => [0, 0, 0, 0, 0, 0b01100, 0b01100],
        ',' => [0, 0, 0, 0, 0b01100, 0b00100, 0b01000],
        ':' => [0, 0b01100, 0b01100, 0, 0b01100, 0b01100, 0],
        '-' => [0, 0, 0, 0b11111, 0, 0, 0],
        '+' => [0, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0],
        '=' => [0, 0, 0b11111, 0, 0b11111, 0, 0],
        '/' => [0, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0],
        '(' => [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010],
        ')' => [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000],
        'a' => [0, 0, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111],
        'b' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110],
        'c' => [0, 0, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110],
        'd' => [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111],
        'e' => [0, 0, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110],
        'f' => [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000],
        'h' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'i' => [0b00100, 0, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110],
        'k' => [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010],
        'l' => [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        'm' => [0, 0, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001],
        'n' => [0, 0, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'o' => [0, 0, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110],
        'r' => [0, 0, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000],
        's' => [0, 0, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110],
        't' => [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110],
        'u' => [0, 0, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101],
        'v' => [0, 0, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100],
        'w' => [0, 0, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010],
        'x' => [0, 0, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001],
        ' ' => [0; 7],
        _ => return None,
    };
    let mut out = [0u8; 9];
    out[..7].copy_from_slice(&g);
    Some(out)
}

fn text_width(s: &str) -> i64 {
    s.chars().count() as i64 * 6 * SCALE
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, c: Rgb<u8>) {
    for (i, ch) in s.to_lowercase().chars().enumerate() {
        let g = glyph(ch).unwrap_or([0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111, 0, 0]);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (1 << (4 - col)) != 0 {
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            put(img, x + (i as i64 * 6 + col) * SCALE + dx, y + row as i64 * SCALE + dy, c);
                        }
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>, thick: i64) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        for t in 0..thick {
            put(img, x, y + t, c);
            put(img, x + t, y, c);
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Tick positions at 1-2-5 steps covering [lo, hi], about `n` of them.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn label(v: f64, step: f64) -> String {
    if v.abs() >= 10_000.0 && v.fract() == 0.0 {
        return format!("{}k", v / 1000.0);
    }
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{v:.decimals$}")
}

/// Draws `points` (step, loss) to a PNG at `path` (written atomically).
pub fn loss_png(path: &Path, points: &[(usize, f64)], title: &str) -> Result<()> {
    let mut img = RgbImage::from_pixel(W, H, BG);
    let pts: Vec<(f64, f64)> = points.iter().filter(|(_, l)| l.is_finite()).map(|&(s, l)| (s as f64, l)).collect();
    let (pw, ph) = (W as i64 - LEFT - RIGHT, H as i64 - TOP - BOTTOM);
    text(&mut img, LEFT, 12, title, AXIS);
    if !pts.is_empty() {
        let x_lo = pts.first().map(|p| p.0).unwrap_or(0.0).min(pts.iter().map(|p| p.0).fold(f64::MAX, f64::min));
        let x_hi = pts.iter().map(|p| p.0).fold(f64::MIN, f64::max).max(x_lo + 1.0);
        let mut y_lo = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min);
        let mut y_hi = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max);
        let pad = ((y_hi - y_lo) * 0.05).max(1e-3);
        y_lo -= pad;
        y_hi += pad;
        let px = |x: f64| LEFT + ((x - x_lo) / (x_hi - x_lo) * pw as f64).round() as i64;
        let py = |y: f64| TOP + ph - ((y - y_lo) / (y_hi - y_lo) * ph as f64).round() as i64;

        let yt = ticks(y_lo, y_hi, 6);
        let ystep = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
        for &t in &yt {
            let y = py(t);
            line(&mut img, (LEFT, y), (LEFT + pw, y), GRID, 1);
            let s = label(t, ystep);
            text(&mut img, LEFT - 8 - text_width(&s), y - 7, &s, AXIS);
        }
        let xt = ticks(x_lo, x_hi, 8);
        let xstep = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
        for &t in &xt {
            let x = px(t);
            line(&mut img, (x, TOP), (x, TOP + ph), GRID, 1);
            let s = label(t, xstep.max(1.0));
            text(&mut img, x - text_width(&s) / 2, TOP + ph + 10, &s, AXIS);
        }
        // Raw loss, then its moving average on top.
        let span = (pts.len() / 25).max(1) as f64;
        let alpha = 2.0 / (span + 1.0);
        let mut ema = pts[0].1;
        let mut prev_raw = (px(pts[0].0), py(pts[0].1));
        let mut prev_ema = prev_raw;
        let mut smooth = Vec::with_capacity(pts.len());
        for &(x, y) in &pts {
            ema = alpha * y + (1.0 - alpha) * ema;
            let r = (px(x), py(y));
            line(&mut img, prev_raw, r, RAW, 1);
            prev_raw = r;
            smooth.push((px(x), py(ema)));
        }
        for &e in &smooth {
            line(&mut img, prev_ema, e, EMA, 2);
            prev_ema = e;
        }
        let legend_x = LEFT + pw - text_width("moving average") - 40;
        line(&mut img, (legend_x, TOP + 12), (legend_x + 24, TOP + 12), RAW, 2);
        text(&mut img, legend_x + 32, TOP + 5, "loss", AXIS);
        line(&mut img, (legend_x, TOP + 34), (legend_x + 24, TOP + 34), EMA, 2);
        text(&mut img, legend_x + 32, TOP + 27, "moving average", AXIS);
    }
    // Axes.
    line(&mut img, (LEFT, TOP), (LEFT, TOP + ph), AXIS, 1);
    line(&mut img, (LEFT, TOP + ph), (LEFT + pw, TOP + ph), AXIS, 1);
    text(&mut img, LEFT + pw / 2 - text_width("step") / 2, H as i64 - 26, "step", AXIS);

    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)?;
    crate::io::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(2.13, 2.87, 6);
        assert!(t.len() >= 4 && t[0] >= 2.13 && *t.last().unwrap() <= 2.87, "{t:?}");
    }

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        let pts: Vec<(usize, f64)> =
            (1..=200).map(|s| (s, 3.0 * (-(s as f64) / 60.0).exp() + 0.5 + 0.1 * ((s * 7) % 5) as f64)).collect();
        loss_png(&p, &pts, "stage 1 loss").unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (W, H));
        assert!(img.pixels().any(|px| *px == EMA));
        loss_png(&p, &[], "empty").unwrap();
        loss_png(&p, &[(1, 2.0)], "one point").unwrap();
    }
}
