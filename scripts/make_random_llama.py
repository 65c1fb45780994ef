#!/usr/bin/env python3
"""A LLaMA of a published shape with random weights, as a Hugging Face folder (config.json,
model.safetensors or shards + index, tokenizer.json), for measuring load time and memory at real
sizes without the real weights. Never committed, never in CI.

    python3 scripts/make_random_llama.py --shape tinyllama --out /tmp/tinyllama-random
    python3 scripts/make_random_llama.py --shape llama-7b --dtype f16 --out /big/llama-7b-random

Needs numpy and safetensors (pip). The tokenizer is the 512-token test fixture's, grown with
plain added tokens `<r{id}>` to the shape's vocabulary so that every id a random model generates
decodes (`--tokenizer-only` rewrites just that file in an existing folder).
"""
import argparse
import json
import os
import shutil

import numpy as np
from safetensors.numpy import save_file

SHAPES = {
    # TinyLlama-1.1B: 22 layers, width 2048, FFN 5632, 32 heads, 4 KV heads, vocab 32000.
    "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000),
    # LLaMA-7B / Vicuna-7B / Llama-2-7B: 32 layers, width 4096, FFN 11008, 32 heads, vocab 32000.
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000),
}


def write_tokenizer(here, out, vocab_size):
    with open(os.path.join(here, "../crates/minigpt4-core/tests/fixtures/llama/tokenizer.json")) as f:
        tok = json.load(f)
    used = 1 + max([*tok["model"]["vocab"].values(), *(t["id"] for t in tok["added_tokens"])])
    for i in range(used, vocab_size):
        tok["added_tokens"].append({"id": i, "content": f"<r{i}>", "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": False})
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    ap.add_argument("--out", required=True)
    ap.add_argument("--shard-gb", type=float, default=4.0)
    ap.add_argument("--tokenizer-only", action="store_true")
    a = ap.parse_args()
    s = SHAPES[a.shape]
    if a.tokenizer_only:
        write_tokenizer(os.path.dirname(os.path.abspath(__file__)), a.out, s["vocab_size"])
        return
    d, ff, heads, kv = s["hidden_size"], s["intermediate_size"], s["num_attention_heads"], s["num_key_value_heads"]
    hd = d // heads
    dtype = np.float16 if a.dtype == "f16" else np.float32
    rng = np.random.default_rng(0)
    os.makedirs(a.out, exist_ok=True)

    def rand(*shape, std=0.02):
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(dtype)

    def tensors():
        yield "model.embed_tokens.weight", rand(s["vocab_size"], d)
        for i in range(s["num_hidden_layers"]):
            p = f"model.layers.{i}."
            yield p + "input_layernorm.weight", np.ones(d, dtype)
            yield p + "post_attention_layernorm.weight", np.ones(d, dtype)
            yield p + "self_attn.q_proj.weight", rand(heads * hd, d)
            yield p + "self_attn.k_proj.weight", rand(kv * hd, d)
            yield p + "self_attn.v_proj.weight", rand(kv * hd, d)
            yield p + "self_attn.o_proj.weight", rand(d, heads * hd)
            yield p + "mlp.gate_proj.weight", rand(ff, d)
            yield p + "mlp.up_proj.weight", rand(ff, d)
            yield p + "mlp.down_proj.weight", rand(d, ff)
        yield "model.norm.weight", np.ones(d, dtype)
        yield "lm_head.weight", rand(s["vocab_size"], d)

    shard, size, shards, weight_map = {}, 0, [], {}
    limit = a.shard_gb * 1e9

    def flush():
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(shard, os.path.join(a.out, name), metadata={"format": "pt"})
        shards.append(name)
        for k in shard:
            weight_map[k] = name
        shard.clear()

    for k, t in tensors():
        if shard and size + t.nbytes > limit:
            flush()
            size = 0
        shard[k] = t
        size += t.nbytes
    flush()
    if len(shards) == 1:
        os.replace(os.path.join(a.out, shards[0]), os.path.join(a.out, "model.safetensors"))
    else:
        total = sum(os.path.getsize(os.path.join(a.out, n)) for n in shards)
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    cfg = dict(s, model_type="llama", hidden_act="silu", rms_norm_eps=1e-5, max_position_embeddings=2048,
               rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
               torch_dtype="float16" if a.dtype == "f16" else "float32")
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    here = os.path.dirname(os.path.abspath(__file__))
    write_tokenizer(here, a.out, s["vocab_size"])
    print(f"{a.shape} ({a.dtype}) in {a.out}: {len(shards)} file(s)")


if __name__ == "__main__":
    main()
