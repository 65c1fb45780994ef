#!/usr/bin/env python3
"""Reference data for `crates/minigpt4-core/tests/core/image.rs` (image preprocessing, as LAVIS Blip2ImageEvalProcessor).

Run by hand from the repository root whenever the expectations change:

    /opt/fx/bin/python scripts/make_image_fixtures.py

Needs pillow, numpy and safetensors (torch is not needed: torchvision's ToTensor + Normalize is
plain IEEE float32 arithmetic, reproduced here with numpy in the same order). The output is
deterministic for a given Pillow / libjpeg-turbo build; the versions used are recorded in the
safetensors metadata. Everything the Rust tests compare is pixel data, so a re-run with another
Pillow that re-encodes PNGs differently still gives equivalent fixtures.

What it writes
--------------
`tests/fixtures/images/` (small synthetic inputs, next to the real photos):
  noise.png           97x61 RGB: gradients + noise + hard edges (exercises bicubic overshoot)
  tiny.png            2x3 RGB (extreme upscaling)
  orient{1..8}.png    5x3 RGB with an eXIf chunk carrying EXIF orientation 1..8
  orient6.webp        the same pixels, lossless WebP with orientation 6
  lossy.webp          64x48 crop of the cat, lossy WebP (libwebp and image-webp agree exactly)
  lossy_alpha.webp    64x48 crop of the RGBA logo, lossy WebP with alpha
  alpha_ramp.png      16x16 RGBA, every alpha value 0..255
  la.png              LA (grey + alpha)
  palette_trns.png    paletted PNG whose tRNS gives entries partial / zero alpha
  palette_trns.gif    paletted GIF with a transparent index
  gray16.png          16-bit greyscale (Pillow opens it as I;16 and clamps to 255)
  rgba16.png          16-bit RGBA (Pillow keeps the high byte)
  small.bmp           24-bit BMP
  gray.jpg            greyscale JPEG
  cmyk.jpg            Adobe CMYK JPEG
  huge_header.png     valid PNG whose IHDR claims 100000x100000 (must be refused unread)

`tests/fixtures/preprocess/`:
  reference.safetensors
    {clip,imagenet}.{mean,std}  f32[3]      the constants as torch holds them (float32)
    {clip,imagenet}.lut         f32[3,256]  ToTensor+Normalize of every 8-bit level per channel
    cat.56.{clip,imagenet}      f32[3,56,56] full normalised tensors (cat.jpg as Pillow decodes it)
    noise.{W}x{H}.u8            u8[H,W,3]   Image.resize((W,H), BICUBIC) of noise.png
    tiny.{W}x{H}.u8             u8[H,W,3]   same for tiny.png
    <input>.u8                  u8[H,W,3]   what the Rust loader must return for each small
                                            input above (Pillow convert("RGB") + exif_transpose,
                                            alpha composited on white with integer math)
  cat.src.png         cat.jpg as Pillow/libjpeg-turbo decodes it (lossless), so the resize can be
                      checked bit for bit independently of the JPEG decoder
  {cat,coffee,rocket,cat_exif6,logo_rgba,camera_gray}.224.png, cat.56.png, cat.448.png
                      Pillow's BICUBIC resize of each photo as the reference pipeline loads it.
  cat_portrait.224.png, cat_portrait.224.legacy.png
                      cat.src rotated to portrait, resized by Pillow 13 (vertical pass first)
                      and in the horizontal-first order of Pillow <= 12.
    noise.{W}x{H}.legacy.u8 (in the safetensors) is the same pre-13 order for the sizes where
                      Pillow 13 runs the vertical pass first.
                      Photo-sized references are PNG (lossless) instead of raw safetensors
                      tensors to keep the directory small; f32 tensors at 224 would be 600 KB
                      each, so the normalisation is checked through the LUTs instead (the
                      normalised tensor is a per-channel function of the 8-bit value).
"""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "crates/minigpt4-core/tests/fixtures"
IMAGES = FIX / "images"
OUT = FIX / "preprocess"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

tensors = {}


def over_white(rgb, alpha):
    """The Rust loader's rule: (c*a + 255*(255-a) + 127) // 255 per channel."""
    c = rgb.astype(np.uint32)
    a = alpha.astype(np.uint32)[..., None]
    return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def reference_rgb(path):
    """Pillow's loading as in the reference code, except alpha is composited on white."""
    im = ImageOps.exif_transpose(Image.open(path))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        rgba = np.array(im.convert("RGBA"))
        return over_white(rgba[..., :3], rgba[..., 3])
    return np.array(im.convert("RGB"))


def normalise(u8_hwc, mean, std):
    """torchvision ToTensor + Normalize, float32, same operation order."""
    x = u8_hwc.astype(np.float32) / np.float32(255)
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def resize(u8_hwc, w, h):
    return np.array(Image.fromarray(u8_hwc).resize((w, h), Image.BICUBIC))


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(w, h, depth, color_type, rows):
    """A PNG written by hand, for bit depths and headers Pillow will not write."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    data = b"".join(b"\0" + r for r in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(data, 9))
        + png_chunk(b"IEND", b"")
    )


def save_png(arr, path):
    Image.fromarray(arr).save(path, optimize=True)


def main():
    rng = np.random.default_rng(20240611)
    OUT.mkdir(parents=True, exist_ok=True)

    # --- normalisation constants and per-level lookup tables
    levels = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2)
    for name, mean, std in (("clip", CLIP_MEAN, CLIP_STD), ("imagenet", IMAGENET_MEAN, IMAGENET_STD)):
        tensors[f"{name}.mean"] = np.array(mean, dtype=np.float32)
        tensors[f"{name}.std"] = np.array(std, dtype=np.float32)
        tensors[f"{name}.lut"] = normalise(levels, mean, std)[:, 0, :].copy()

    # --- real photos
    photos = ["cat.jpg", "coffee.jpg", "rocket.jpg", "cat_exif6.jpg", "logo_rgba.png", "camera_gray.png"]
    for p in photos:
        src = reference_rgb(IMAGES / p)
        stem = p.rsplit(".", 1)[0]
        save_png(resize(src, 224, 224), OUT / f"{stem}.224.png")
        if stem == "cat":
            save_png(src, OUT / "cat.src.png")
            save_png(resize(src, 56, 56), OUT / "cat.56.png")
            save_png(resize(src, 448, 448), OUT / "cat.448.png")
            r56 = resize(src, 56, 56)
            tensors["cat.56.clip"] = normalise(r56, CLIP_MEAN, CLIP_STD)
            tensors["cat.56.imagenet"] = normalise(r56, IMAGENET_MEAN, IMAGENET_STD)
            # Portrait (rotated a quarter turn counter-clockwise): squashing it to a square
            # shrinks the height by more than twice what the width loses, so Pillow >= 13 runs
            # the vertical pass first. The pre-13 order is reproduced with two single-axis
            # resizes, each of which has only one pass.
            portrait = np.ascontiguousarray(np.rot90(src))
            save_png(resize(portrait, 224, 224), OUT / "cat_portrait.224.png")
            save_png(resize(resize(portrait, 224, portrait.shape[0]), 224, 224), OUT / "cat_portrait.224.legacy.png")
            # The LUT shortcut the tests use must agree with the full computation.
            lut = tensors["clip.lut"]
            via_lut = np.stack([lut[c][r56[..., c]] for c in range(3)])
            assert np.array_equal(via_lut, tensors["cat.56.clip"])

    # --- synthetic resize inputs
    h, w = 61, 97
    yy, xx = np.mgrid[0:h, 0:w]
    noise = np.stack(
        [
            (xx * 255 // (w - 1)),
            (yy * 255 // (h - 1)),
            rng.integers(0, 256, size=(h, w)),
        ],
        axis=-1,
    ).astype(np.uint8)
    # Hard black/white edges make bicubic overshoot below 0 and above 255 (clipping paths).
    noise[20:30, 10:40] = 255
    noise[25:28, 50:90] = 0
    noise[::7, :, :] = rng.integers(0, 256, size=(len(range(0, h, 7)), w, 3), dtype=np.uint8)
    save_png(noise, IMAGES / "noise.png")
    for tw, th in [(56, 56), (160, 100), (33, 150), (150, 33), (97, 30), (40, 61), (1, 1), (500, 7), (96, 60), (98, 62)]:
        tensors[f"noise.{tw}x{th}.u8"] = resize(noise, tw, th)
        # Horizontal-first order of Pillow <= 12, for the sizes where Pillow 13 differs.
        if th < h and (h - th) > 2 * (w - tw) and tw != w:
            tensors[f"noise.{tw}x{th}.legacy.u8"] = resize(resize(noise, tw, h), tw, th)

    tiny = rng.integers(0, 256, size=(3, 2, 3), dtype=np.uint8)
    save_png(tiny, IMAGES / "tiny.png")
    for tw, th in [(5, 4), (50, 40), (1, 1), (2, 1)]:
        tensors[f"tiny.{tw}x{th}.u8"] = resize(tiny, tw, th)

    # --- EXIF orientation, every value
    base = rng.integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        Image.fromarray(base).save(IMAGES / f"orient{o}.png", exif=exif)
        tensors[f"orient{o}.u8"] = reference_rgb(IMAGES / f"orient{o}.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(base).save(IMAGES / "orient6.webp", lossless=True, exif=exif)
    tensors["orient6_webp.u8"] = reference_rgb(IMAGES / "orient6.webp")
    assert np.array_equal(tensors["orient6_webp.u8"], tensors["orient6.u8"])

    # --- transparency
    ramp = np.zeros((16, 16, 4), dtype=np.uint8)
    ramp[..., 0] = rng.integers(0, 256, size=(16, 16))
    ramp[..., 1] = 255 - ramp[..., 0]
    ramp[..., 2] = np.arange(16)[None, :] * 17
    ramp[..., 3] = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(ramp, "RGBA").save(IMAGES / "alpha_ramp.png")
    tensors["alpha_ramp.u8"] = reference_rgb(IMAGES / "alpha_ramp.png")

    la = np.stack([rng.integers(0, 256, size=(6, 9)), np.linspace(0, 255, 54).reshape(6, 9)], -1).astype(np.uint8)
    Image.fromarray(la, "LA").save(IMAGES / "la.png")
    tensors["la.u8"] = reference_rgb(IMAGES / "la.png")

    idx = rng.integers(0, 4, size=(5, 7), dtype=np.uint8)
    pal_img = Image.fromarray(idx, "P")
    pal_img.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200, 90, 90, 90])
    pal_img.save(IMAGES / "palette_trns.png", transparency=bytes([255, 128, 0, 255]))
    tensors["palette_trns_png.u8"] = reference_rgb(IMAGES / "palette_trns.png")
    pal_img.save(IMAGES / "palette_trns.gif", transparency=2)
    tensors["palette_trns_gif.u8"] = reference_rgb(IMAGES / "palette_trns.gif")

    # --- 16-bit PNGs (Pillow cannot write these modes, so by hand)
    g16 = np.array(
        [[0, 1, 127, 128, 255, 256, 257, 1000], [0x7FFF, 0x8000, 0xFF00, 0xFFFF, 42, 300, 65000, 12]],
        dtype=">u2",
    )
    (IMAGES / "gray16.png").write_bytes(raw_png(8, 2, 16, 0, [r.tobytes() for r in g16]))
    tensors["gray16.u8"] = reference_rgb(IMAGES / "gray16.png")
    assert Image.open(IMAGES / "gray16.png").mode == "I;16"
    r16 = rng.integers(0, 65536, size=(3, 4, 4)).astype(">u2")
    r16[0, :, 3] = [0, 255, 256, 65535]
    (IMAGES / "rgba16.png").write_bytes(raw_png(4, 3, 16, 6, [r.tobytes() for r in r16]))
    tensors["rgba16.u8"] = reference_rgb(IMAGES / "rgba16.png")

    # --- other containers
    Image.fromarray(noise[:9, :13].copy()).save(IMAGES / "small.bmp")
    tensors["small_bmp.u8"] = reference_rgb(IMAGES / "small.bmp")
    cam = Image.open(IMAGES / "camera_gray.png").resize((64, 64), Image.BICUBIC)
    cam.save(IMAGES / "gray.jpg", quality=90)
    tensors["gray_jpg.u8"] = reference_rgb(IMAGES / "gray.jpg")
    cat_crop = Image.open(OUT / "cat.src.png").crop((200, 100, 264, 148))
    cat_crop.save(IMAGES / "lossy.webp", quality=80)
    tensors["lossy_webp.u8"] = reference_rgb(IMAGES / "lossy.webp")
    logo_crop = Image.open(IMAGES / "logo_rgba.png").crop((60, 60, 124, 108))
    logo_crop.save(IMAGES / "lossy_alpha.webp", quality=80)
    tensors["lossy_alpha_webp.u8"] = reference_rgb(IMAGES / "lossy_alpha.webp")
    coffee = Image.open(IMAGES / "coffee.jpg").convert("RGB").resize((64, 43), Image.BICUBIC)
    coffee.convert("CMYK").save(IMAGES / "cmyk.jpg", quality=92)
    assert Image.open(IMAGES / "cmyk.jpg").mode == "CMYK"
    tensors["cmyk.u8"] = reference_rgb(IMAGES / "cmyk.jpg")

    # --- a header that lies: 100000x100000 RGB with one tiny IDAT
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    huge = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )
    (IMAGES / "huge_header.png").write_bytes(huge)

    # One key: safetensors stores metadata in a hash map, so several keys would be written in a
    # different order on every run and the file would never be byte-identical.
    meta = {
        "generator": f"scripts/make_image_fixtures.py; pillow {PIL.__version__}; numpy {np.__version__}; "
        f"libjpeg-turbo {PIL.features.version('libjpeg_turbo')}"
    }
    save_file({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}, OUT / "reference.safetensors", metadata=meta)
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {len(tensors)} tensors; {OUT.relative_to(ROOT)} is {total / 1e6:.2f} MB")


if __name__ == "__main__":
    import PIL.features  # noqa: F401  (for the metadata above)

    main()
