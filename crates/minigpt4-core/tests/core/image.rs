//! Image preprocessing against Pillow / torchvision references.
//!
//! References come from `scripts/make_image_fixtures.py` (see its docstring). Run with
//! `cargo test --release -p minigpt4-core --test core image:: -- --nocapture` to see the measured diffs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use minigpt4_core::image::{
    load_rgb, load_rgb_file, preprocess, resize_bicubic_pil, resize_bicubic_pil_with, to_tensor, ImageConfig, Limits,
    PassOrder, CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, MAX_SIZE,
};
use minigpt4_core::Error;

// ---------------------------------------------------------------------------------------------
// Allocation tracking, per thread so that tests running in parallel do not disturb each other.

struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let out = f();
    TRACK.with(|t| t.set(false));
    (out, LARGEST.with(|l| l.get()))
}

// ---------------------------------------------------------------------------------------------
// Fixtures

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn input(name: &str) -> Vec<u8> {
    let p = fixtures().join("images").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn reference() -> &'static HashMap<String, Tensor> {
    static R: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    R.get_or_init(|| {
        candle_core::safetensors::load(fixtures().join("preprocess/reference.safetensors"), &Device::Cpu)
            .expect("reference.safetensors (run scripts/make_image_fixtures.py)")
    })
}

fn ref_tensor(name: &str) -> &'static Tensor {
    reference().get(name).unwrap_or_else(|| panic!("reference tensor {name} missing"))
}

/// A u8 [H, W, 3] reference tensor as an image.
fn ref_u8(name: &str) -> RgbImage {
    let t = ref_tensor(name);
    let (h, w, c) = t.dims3().unwrap();
    assert_eq!(c, 3, "{name}");
    let data = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    RgbImage::from_raw(w as u32, h as u32, data).unwrap()
}

/// A Pillow reference stored as PNG under preprocess/ (lossless, decoded exactly by any PNG
/// decoder, including ours).
fn ref_png(name: &str) -> RgbImage {
    let p = fixtures().join("preprocess").join(name);
    load_rgb_file(&p, &Limits::default()).unwrap()
}

fn load(name: &str) -> RgbImage {
    load_rgb(&input(name), name, &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
}

struct Diff {
    max: u8,
    mean: f64,
    differing: f64,
}

fn diff(a: &RgbImage, b: &RgbImage, what: &str) -> Diff {
    assert_eq!(a.dimensions(), b.dimensions(), "{what}: dimensions");
    let mut max = 0u8;
    let mut sum = 0u64;
    let mut n = 0usize;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += u64::from(d);
        n += usize::from(d > 0);
    }
    let len = a.as_raw().len().max(1) as f64;
    Diff { max, mean: sum as f64 / len, differing: n as f64 / len }
}

fn assert_exact(ours: &RgbImage, theirs: &RgbImage, what: &str) {
    let d = diff(ours, theirs, what);
    println!("{what}: max |diff| {} ({:.4}% of values differ)", d.max, d.differing * 100.0);
    assert_eq!(d.max, 0, "{what}: not bit-identical to Pillow");
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Resize and normalisation against Pillow / torchvision

#[test]
fn constants_match_torch_float32() {
    for (name, ours) in [
        ("clip.mean", CLIP_MEAN),
        ("clip.std", CLIP_STD),
        ("imagenet.mean", IMAGENET_MEAN),
        ("imagenet.std", IMAGENET_STD),
    ] {
        let theirs = ref_tensor(name).to_vec1::<f32>().unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&ours), bits(&theirs), "{name}");
    }
    assert_eq!(ImageConfig::clip(224), ImageConfig { size: 224, mean: CLIP_MEAN, std: CLIP_STD });
    assert_eq!(ImageConfig::imagenet(518).mean, IMAGENET_MEAN);
}

#[test]
fn resize_is_bit_identical_to_pillow_on_a_photo() {
    // The photo as Pillow/libjpeg-turbo decodes it, so only the resize is under test.
    let src = ref_png("cat.src.png");
    assert_eq!(src.dimensions(), (451, 300));
    for s in [224u32, 56, 448] {
        let ours = resize_bicubic_pil(&src, s, s);
        assert_exact(&ours, &ref_png(&format!("cat.{s}.png")), &format!("cat {s}x{s} resize"));
    }
}

#[test]
fn resize_is_bit_identical_to_pillow_on_synthetic_sizes() {
    let mut checked = 0;
    for (stem, src) in [("noise", load("noise.png")), ("tiny", load("tiny.png"))] {
        for name in reference().keys().filter(|k| k.starts_with(&format!("{stem}.")) && k.ends_with(".u8")) {
            let theirs = ref_u8(name);
            let order = if name.ends_with(".legacy.u8") { PassOrder::HorizontalFirst } else { PassOrder::Pillow13 };
            let ours = resize_bicubic_pil_with(&src, theirs.width(), theirs.height(), order);
            assert_exact(&ours, &theirs, &format!("{name} ({order:?})"));
            checked += 1;
        }
    }
    assert!(checked >= 16, "only {checked} synthetic references found");
}

#[test]
fn portrait_photos_follow_pillow_13_pass_order() {
    // Pillow 13 resizes vertically first when the height loses much more than the width; a
    // portrait photo squashed to a square is exactly that case.
    let portrait = image::imageops::rotate270(&ref_png("cat.src.png"));
    assert_eq!(portrait.dimensions(), (300, 451));
    let new = resize_bicubic_pil(&portrait, 224, 224);
    assert_exact(&new, &ref_png("cat_portrait.224.png"), "portrait 224 (Pillow 13)");
    let old = resize_bicubic_pil_with(&portrait, 224, 224, PassOrder::HorizontalFirst);
    assert_exact(&old, &ref_png("cat_portrait.224.legacy.png"), "portrait 224 (Pillow <= 12)");
    let d = diff(&new, &old, "order");
    println!("portrait 224: Pillow 13 vs <= 12 order differ by max {} on {:.2}% of values", d.max, d.differing * 100.0);
    // The default is the Pillow 13 order.
    assert_eq!(PassOrder::default(), PassOrder::Pillow13);
}

#[test]
fn lossless_inputs_match_pillow_end_to_end() {
    // PNG decoding is exact, so load + resize must equal Pillow's pipeline exactly; the RGBA logo
    // also exercises compositing on white.
    for (file, reference) in [("logo_rgba.png", "logo_rgba.224.png"), ("camera_gray.png", "camera_gray.224.png")] {
        let ours = resize_bicubic_pil(&load(file), 224, 224);
        assert_exact(&ours, &ref_png(reference), &format!("{file} -> 224"));
    }
}

/// JPEG is decoded with libjpeg-turbo's arithmetic (Pillow's decoder), so photos match Pillow
/// exactly, decode and end to end (the `image` crate's zune-jpeg was up to 4 levels off).
#[test]
fn jpeg_photos_match_pillow_exactly() {
    let decoded = load("cat.jpg");
    assert_exact(&decoded, &ref_png("cat.src.png"), "cat.jpg decode");
    for (file, s) in [
        ("cat.jpg", 224u32),
        ("cat.jpg", 56),
        ("cat.jpg", 448),
        ("coffee.jpg", 224),
        ("rocket.jpg", 224),
        ("cat_exif6.jpg", 224),
    ] {
        let stem = file.trim_end_matches(".jpg");
        let ours = resize_bicubic_pil(&load(file), s, s);
        assert_exact(&ours, &ref_png(&format!("{stem}.{s}.png")), &format!("{file} -> {s}x{s} end to end"));
    }
}

#[test]
fn normalisation_matches_torchvision() {
    let src = ref_png("cat.src.png");
    let dev = Device::Cpu;
    for (name, cfg) in [("cat.56.clip", ImageConfig::clip(56)), ("cat.56.imagenet", ImageConfig::imagenet(56))] {
        let ours = to_tensor(&src, &cfg, &dev).unwrap();
        assert_eq!(ours.dims(), &[3, 56, 56]);
        assert_eq!(ours.dtype(), DType::F32);
        let d = max_abs(&ours, ref_tensor(name));
        println!("{name}: max |diff| {d:e}");
        assert!(d <= 1e-6, "{name}: {d}");
    }
    // At 224 the reference is Pillow's resized u8 image pushed through the per-level table that
    // the fixture script computed with torchvision's arithmetic (and checked against the full
    // computation at 56).
    let r224 = ref_png("cat.224.png");
    for (lut, cfg) in [("clip.lut", ImageConfig::clip(224)), ("imagenet.lut", ImageConfig::imagenet(224))] {
        let table = ref_tensor(lut).to_vec2::<f32>().unwrap();
        let plane = 224 * 224;
        let mut expect = vec![0f32; 3 * plane];
        for (i, p) in r224.pixels().enumerate() {
            for c in 0..3 {
                expect[c * plane + i] = table[c][usize::from(p.0[c])];
            }
        }
        let expect = Tensor::from_vec(expect, (3, 224, 224), &dev).unwrap();
        let ours = to_tensor(&src, &cfg, &dev).unwrap();
        let d = max_abs(&ours, &expect);
        println!("cat 224 {lut}: max |diff| {d:e}");
        assert!(d <= 1e-6, "{lut}: {d}");
    }
}

#[test]
fn preprocess_runs_the_whole_pipeline() {
    let dev = Device::Cpu;
    let bytes = input("logo_rgba.png");
    let t = preprocess(&bytes, "logo", &ImageConfig::clip(224), &Limits::default(), &dev).unwrap();
    assert_eq!(t.dims(), &[3, 224, 224]);
    let table = ref_tensor("clip.lut").to_vec2::<f32>().unwrap();
    let r = ref_png("logo_rgba.224.png");
    let got = t.to_vec3::<f32>().unwrap();
    for (i, p) in r.pixels().enumerate() {
        let (y, x) = (i / 224, i % 224);
        for c in 0..3 {
            assert_eq!(got[c][y][x].to_bits(), table[c][usize::from(p.0[c])].to_bits(), "({c},{y},{x})");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Colour conversion, orientation, containers

#[test]
fn exif_orientation_every_value_like_pillow() {
    for o in 1..=8 {
        let ours = load(&format!("orient{o}.png"));
        let theirs = ref_u8(&format!("orient{o}.u8"));
        // Base image is 5x3; orientations 5-8 swap the axes.
        let expect_dims = if o >= 5 { (3, 5) } else { (5, 3) };
        assert_eq!(ours.dimensions(), expect_dims, "orientation {o}");
        assert_exact(&ours, &theirs, &format!("PNG eXIf orientation {o}"));
    }
    assert_exact(&load("orient6.webp"), &ref_u8("orient6_webp.u8"), "WebP EXIF orientation 6");
    // The JPEG is stored 150 wide, 200 high with orientation 6: upright it is 200 x 150.
    assert_eq!(load("cat_exif6.jpg").dimensions(), (200, 150));
}

#[test]
fn alpha_is_composited_on_white() {
    for (file, name) in [
        ("alpha_ramp.png", "alpha_ramp.u8"),
        ("la.png", "la.u8"),
        ("palette_trns.png", "palette_trns_png.u8"),
        ("palette_trns.gif", "palette_trns_gif.u8"),
        ("rgba16.png", "rgba16.u8"),
    ] {
        assert_exact(&load(file), &ref_u8(name), file);
    }
    // Spot-check the rule itself: fully transparent is white, opaque is untouched.
    let ramp = load("alpha_ramp.png");
    assert_eq!(ramp.get_pixel(0, 0).0, [255, 255, 255]);
}

#[test]
fn sixteen_bit_and_other_containers_like_pillow() {
    assert_exact(&load("gray16.png"), &ref_u8("gray16.u8"), "16-bit grey (clamped like I;16)");
    assert_exact(&load("small.bmp"), &ref_u8("small_bmp.u8"), "BMP");
    // image-webp's lossy decoder reproduces libwebp exactly, alpha included.
    assert_exact(&load("lossy.webp"), &ref_u8("lossy_webp.u8"), "lossy WebP");
    assert_exact(&load("lossy_alpha.webp"), &ref_u8("lossy_alpha_webp.u8"), "lossy WebP + alpha");
    for (file, name, tol) in [("gray.jpg", "gray_jpg.u8", 2u8), ("cmyk.jpg", "cmyk.u8", 6)] {
        let d = diff(&load(file), &ref_u8(name), file);
        println!("{file}: max {} mean {:.4} differing {:.2}%", d.max, d.mean, d.differing * 100.0);
        assert!(d.max <= tol, "{file}: max {}", d.max);
    }
    // Greyscale is replicated into all three channels.
    assert!(load("gray.jpg").pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
}

// ---------------------------------------------------------------------------------------------
// Hostile and broken input

fn image_error_msg(r: minigpt4_core::Result<RgbImage>, what: &str) -> String {
    match r {
        Err(e @ Error::Image { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(what), "error does not name the input `{what}`: {msg}");
            msg
        }
        Err(e) => panic!("expected Error::Image, got {e}"),
        Ok(img) => panic!("expected an error, decoded {}x{}", img.width(), img.height()),
    }
}

#[test]
fn huge_header_is_refused_quickly_without_allocating() {
    let bytes = input("huge_header.png");
    let t = Instant::now();
    let (r, largest) = largest_allocation(|| load_rgb(&bytes, "huge_header.png", &Limits::default()));
    let elapsed = t.elapsed();
    let msg = image_error_msg(r, "huge_header.png");
    println!("huge PNG header: {msg} ({elapsed:?}, largest allocation {largest} B)");
    assert!(msg.contains("100000x100000"), "{msg}");
    assert!(elapsed.as_millis() < 100, "{elapsed:?}");
    assert!(largest < 64 * 1024, "allocated {largest} bytes");

    // The same lie in the other containers, built here.
    let mut jpeg = vec![0xff, 0xd8, 0xff, 0xc0, 0, 17, 8, 0xff, 0xff, 0xff, 0xff, 3];
    jpeg.extend([1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    jpeg.extend([0xff, 0xda, 0, 2, 0xff, 0xd9]);
    let mut gif = b"GIF89a".to_vec();
    gif.extend([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0x3b]);
    let mut bmp = b"BM".to_vec();
    bmp.extend([0u8; 12]);
    bmp.extend(40u32.to_le_bytes());
    bmp.extend(100_000i32.to_le_bytes());
    bmp.extend((-100_000i32).to_le_bytes());
    bmp.extend([1, 0, 24, 0]);
    bmp.extend([0u8; 24]);
    let mut webp = b"RIFF\x20\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
    webp.extend([0xff, 0x3f, 0, 0xff, 0x3f, 0]); // 16384 x 16384 canvas
    for (what, bytes) in [("huge.jpg", jpeg), ("huge.gif", gif), ("huge.bmp", bmp), ("huge.webp", webp)] {
        let (r, largest) = largest_allocation(|| load_rgb(&bytes, what, &Limits::default()));
        let msg = image_error_msg(r, what);
        println!("{what}: {msg} (largest allocation {largest} B)");
        assert!(msg.contains("over the limit"), "{msg}");
        assert!(largest < 64 * 1024, "{what}: allocated {largest} bytes");
    }
}

#[test]
fn configurable_limits() {
    let bytes = input("cat.jpg");
    let small = Limits { max_pixels: 451 * 300 - 1, ..Limits::default() };
    let msg = image_error_msg(load_rgb(&bytes, "cat.jpg", &small), "cat.jpg");
    assert!(msg.contains("451x300") && msg.contains("over the limit"), "{msg}");
    assert!(load_rgb(&bytes, "cat.jpg", &Limits { max_pixels: 451 * 300, ..Limits::default() }).is_ok());

    let tiny = Limits { max_bytes: 1000, ..Limits::default() };
    let msg = image_error_msg(load_rgb(&bytes, "cat.jpg", &tiny), "cat.jpg");
    assert!(msg.contains("bytes"), "{msg}");
    let path = fixtures().join("images/cat.jpg");
    let msg = image_error_msg(load_rgb_file(&path, &tiny), "cat.jpg");
    assert!(msg.contains("1000"), "{msg}");

    assert_eq!(Limits::default().max_pixels, 64 * 1024 * 1024);
    let parsed: Limits = serde_json::from_str(r#"{"max_pixels": 10}"#).unwrap();
    assert_eq!(parsed, Limits { max_pixels: 10, ..Limits::default() });
}

#[test]
fn truncated_files_are_errors() {
    // How many trailing bytes a file can lose and still hold every pixel: PNG's IEND chunk
    // (12 bytes); for this GIF the trailer, the block terminator and the last data byte, which
    // holds only the LZW end code (Pillow accepts the first two, the gif crate all three).
    for (file, slack) in [
        ("cat.jpg", 0usize),
        ("logo_rgba.png", 12),
        ("noise.png", 12),
        ("orient6.webp", 0),
        ("palette_trns.gif", 3),
        ("small.bmp", 0),
    ] {
        let bytes = input(file);
        let n = bytes.len();
        let mut cuts: Vec<usize> = (0..24).map(|i| i * n / 24).collect();
        cuts.extend([1, 2, 7, 8, 16, 33, n.saturating_sub(slack + 1), n.saturating_sub(slack + 2)]);
        for cut in cuts {
            if cut >= n - slack {
                continue;
            }
            let what = format!("{file}[..{cut}]");
            let msg = image_error_msg(load_rgb(&bytes[..cut], &what, &Limits::default()), &what);
            if cut == n / 2 {
                println!("{what}: {msg}");
            }
        }
    }
}

#[test]
fn empty_random_and_unsupported_bytes_are_errors() {
    let msg = image_error_msg(load_rgb(&[], "upload #3", &Limits::default()), "upload #3");
    assert!(msg.contains("empty"), "{msg}");

    let msg = image_error_msg(load_rgb(b"hello, world", "note.txt", &Limits::default()), "note.txt");
    assert!(msg.contains("not a recognised image format"), "{msg}");
    let msg = image_error_msg(load_rgb(b"II*\0\x08\0\0\0\0\0", "scan.tif", &Limits::default()), "scan.tif");
    assert!(msg.contains("not supported"), "{msg}");

    let msg = image_error_msg(
        load_rgb(&[0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'], "sig-only.png", &Limits::default()),
        "sig-only.png",
    );
    println!("signature only: {msg}");

    // A zero-sized PNG header.
    let mut zero = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    zero.extend([0u8; 8]);
    zero.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
    let msg = image_error_msg(load_rgb(&zero, "zero.png", &Limits::default()), "zero.png");
    assert!(msg.contains("0x0"), "{msg}");

    // Random bytes, bare and behind every supported signature: always an error, never a panic.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let prefixes: [&[u8]; 6] = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBPVP8 "];
    for prefix in prefixes {
        for i in 0..150 {
            let len = (rng.next() % 3000) as usize;
            let mut bytes = prefix.to_vec();
            bytes.extend((0..len).map(|_| rng.next() as u8));
            let what = format!("random #{i}");
            let _ = image_error_msg(load_rgb(&bytes, &what, &Limits::default()), &what);
        }
    }
}

#[test]
fn corrupted_files_never_panic() {
    // Flip bytes in valid files. Some corruptions still decode (a changed pixel value is a valid
    // image), so only the absence of panics and of over-limit results is checked.
    let mut rng = XorShift(42);
    let limits = Limits::default();
    for file in ["cat.jpg", "noise.png", "orient6.webp", "palette_trns.gif", "small.bmp", "cmyk.jpg", "rgba16.png"] {
        let bytes = input(file);
        let (mut ok, mut err) = (0, 0);
        for _ in 0..120 {
            let mut b = bytes.clone();
            for _ in 0..(1 + rng.next() % 8) {
                let i = (rng.next() as usize) % b.len();
                b[i] = rng.next() as u8;
            }
            match load_rgb(&b, file, &limits) {
                Ok(img) => {
                    ok += 1;
                    assert!(u64::from(img.width()) * u64::from(img.height()) <= limits.max_pixels);
                }
                Err(Error::Image { .. }) => err += 1,
                Err(e) => panic!("{file}: unexpected error kind {e}"),
            }
        }
        println!("{file}: {ok} corrupted copies decoded, {err} refused");
    }
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration and small API contracts

#[test]
fn bad_image_configs_are_rejected() {
    let img = load("tiny.png");
    let dev = Device::Cpu;
    for cfg in [
        ImageConfig::clip(0),
        ImageConfig::clip(MAX_SIZE + 1),
        ImageConfig { std: [0.2, 0.0, 0.2], ..ImageConfig::clip(224) },
        ImageConfig { mean: [f32::NAN, 0.0, 0.0], ..ImageConfig::clip(224) },
    ] {
        match to_tensor(&img, &cfg, &dev) {
            Err(Error::Config(msg)) => println!("{cfg:?}: {msg}"),
            other => panic!("{cfg:?}: expected a config error, got {other:?}"),
        }
        let r = preprocess(&input("tiny.png"), "tiny.png", &cfg, &Limits::default(), &dev);
        assert!(matches!(r, Err(Error::Config(_))), "{cfg:?}");
        assert!(cfg.validate().is_err());
    }
    // A zero size is refused even when the image itself is also broken.
    let r = preprocess(&[], "empty", &ImageConfig::clip(0), &Limits::default(), &dev);
    assert!(matches!(r, Err(Error::Config(_))));

    let json = serde_json::to_string(&ImageConfig::clip(224)).unwrap();
    let back: ImageConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, ImageConfig::clip(224));
    let zero: ImageConfig = serde_json::from_str(&json.replace("224", "0")).unwrap();
    assert!(zero.validate().is_err());
}

#[test]
fn resize_edge_cases() {
    let img = load("noise.png");
    assert_eq!(resize_bicubic_pil(&img, 0, 10).dimensions(), (0, 10));
    assert_eq!(resize_bicubic_pil(&img, 10, 0).dimensions(), (10, 0));
    assert_eq!(resize_bicubic_pil(&img, 97, 61), img, "same size is a copy, like Pillow");
    let empty = RgbImage::new(0, 0);
    assert_eq!(resize_bicubic_pil(&empty, 3, 2), RgbImage::new(3, 2));
    // Tall and thin extremes exercise windows clipped at both borders.
    let tall = resize_bicubic_pil(&img, 1, 500);
    assert_eq!(tall.dimensions(), (1, 500));
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let p = fixtures().join("images/does-not-exist.png");
    match load_rgb_file(&p, &Limits::default()) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("does-not-exist.png")),
        other => panic!("{other:?}"),
    }
}

/// What `describe`, `chat`, `eval` and training read image files with: a FIFO (which would block
/// forever), a device that never ends and a file over the size limit are refused before their
/// bytes are read.
#[test]
fn image_files_that_are_not_regular_or_too_big_are_refused_unread() {
    let dir = std::env::temp_dir().join(format!("minigpt4-read-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("pipe.png");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
    assert!(made, "mkfifo failed");
    let limits = Limits::default();
    let started = Instant::now();
    for p in [fifo.as_path(), Path::new("/dev/zero"), dir.as_path()] {
        let err = minigpt4_core::image::read_file(p, &limits).unwrap_err().to_string();
        assert!(err.contains("not a regular file") && err.contains(&p.display().to_string()), "{err}");
    }
    assert!(started.elapsed().as_secs() < 5, "refusing took {:?}", started.elapsed());
    let big = dir.join("big.png");
    std::fs::write(&big, vec![0u8; 2048]).unwrap();
    let small = Limits { max_bytes: 1024, ..Limits::default() };
    let err = minigpt4_core::image::read_file(&big, &small).unwrap_err().to_string();
    assert!(err.contains("2048 bytes is over the limit of 1024"), "{err}");
    assert_eq!(minigpt4_core::image::read_file(&big, &limits).unwrap().len(), 2048);
    std::fs::remove_dir_all(&dir).unwrap();
}
