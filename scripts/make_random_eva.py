#!/usr/bin/env python3
"""MiniGPT-4's vision side at its published shapes with random weights, for measuring time and
memory at real sizes without the real weights (never committed, never in CI):

* `vision.safetensors`: EVA ViT-g/14 at 224 px (39 blocks, width 1408, MLP 6144, 16 heads),
  `ln_vision`, the BLIP-2 Q-Former (12 layers, width 768, cross-attention every 2nd layer,
  32 query tokens) in Hugging Face `Blip2Model` names — the names `minigpt4 convert` writes;
* `projection.safetensors`: MiniGPT-4's `llama_proj` (Linear 768 → 4096);
* `model.toml` next to them, naming an LLM folder given with --llm (e.g. the random LLaMA-7B of
  `make_random_llama.py`).

    python3 scripts/make_random_eva.py --out /big/minigpt4-7b-random --llm /big/llama-7b-random

Needs numpy and safetensors. Weights are N(0, 0.02) (layer norms 1/0), as BLIP-2 initialises them,
so activations stay in range through 39 blocks.
"""
import argparse
import os

import numpy as np
from safetensors.numpy import save_file

EVA = dict(width=1408, mlp=6144, layers=39, patch=14, image=224)
QFORMER = dict(width=768, mlp=3072, layers=12, cross_every=2, queries=32)
LLM_WIDTH = 4096


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--llm", required=True, help="the LLM folder model.toml names")
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    a = ap.parse_args()
    dtype = np.float16 if a.dtype == "f16" else np.float32
    rng = np.random.default_rng(0)
    t = {}

    def rand(name, *shape):
        t[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)

    def norm(name, n):
        t[name + ".weight"] = np.ones(n, dtype)
        t[name + ".bias"] = np.zeros(n, dtype)

    d, p = EVA["width"], EVA["patch"]
    n_pos = (EVA["image"] // p) ** 2 + 1
    e = "vision_model.embeddings."
    rand(e + "class_embedding", 1, 1, d)
    rand(e + "position_embedding", 1, n_pos, d)
    rand(e + "patch_embedding.weight", d, 3, p, p)
    t[e + "patch_embedding.bias"] = np.zeros(d, dtype)
    for i in range(EVA["layers"]):
        b = f"vision_model.encoder.layers.{i}."
        norm(b + "layer_norm1", d)
        norm(b + "layer_norm2", d)
        rand(b + "self_attn.qkv.weight", 3 * d, d)
        t[b + "self_attn.q_bias"] = np.zeros(d, dtype)
        t[b + "self_attn.v_bias"] = np.zeros(d, dtype)
        rand(b + "self_attn.projection.weight", d, d)
        t[b + "self_attn.projection.bias"] = np.zeros(d, dtype)
        rand(b + "mlp.fc1.weight", EVA["mlp"], d)
        t[b + "mlp.fc1.bias"] = np.zeros(EVA["mlp"], dtype)
        rand(b + "mlp.fc2.weight", d, EVA["mlp"])
        t[b + "mlp.fc2.bias"] = np.zeros(d, dtype)
    norm("vision_model.post_layernorm", d)

    q = QFORMER["width"]
    rand("query_tokens", 1, QFORMER["queries"], q)
    norm("qformer.layernorm", q)

    def linear(name, n_out, n_in):
        rand(name + ".weight", n_out, n_in)
        t[name + ".bias"] = np.zeros(n_out, dtype)

    for i in range(QFORMER["layers"]):
        b = f"qformer.encoder.layer.{i}."
        for kind, kv_in in [("attention", q)] + ([("crossattention", d)] if i % QFORMER["cross_every"] == 0 else []):
            linear(b + kind + ".attention.query", q, q)
            linear(b + kind + ".attention.key", q, kv_in)
            linear(b + kind + ".attention.value", q, kv_in)
            linear(b + kind + ".output.dense", q, q)
            norm(b + kind + ".output.LayerNorm", q)
        linear(b + "intermediate_query.dense", QFORMER["mlp"], q)
        linear(b + "output_query.dense", q, QFORMER["mlp"])
        norm(b + "output_query.LayerNorm", q)

    os.makedirs(a.out, exist_ok=True)
    save_file(t, os.path.join(a.out, "vision.safetensors"))
    proj = {"llama_proj.weight": (rng.standard_normal((LLM_WIDTH, q), dtype=np.float32) * 0.02).astype(np.float32),
            "llama_proj.bias": np.zeros(LLM_WIDTH, np.float32)}
    save_file(proj, os.path.join(a.out, "projection.safetensors"))
    with open(os.path.join(a.out, "model.toml"), "w") as f:
        f.write(f'''# Random weights of MiniGPT-4 (Vicuna-7B) shapes: scripts/make_random_eva.py
name = "minigpt4-7b-random"
template = "vicuna_v0"
[vision]
kind = "eva_vit_g"
weights = "vision.safetensors"
[adapter]
kind = "qformer"
weights = "vision.safetensors"
[projection]
weights = "projection.safetensors"
[llm]
weights = "{os.path.abspath(a.llm)}"
''')
    n = sum(v.size for v in t.values())
    print(f"{a.out}: {n / 1e9:.2f} B vision parameters ({a.dtype})")


if __name__ == "__main__":
    main()
