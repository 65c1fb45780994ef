#!/usr/bin/env python3
"""Build the random-weight reference fixtures for minigpt4-rs parity tests.

Everything is built from configs with fixed seeds (no model hub), written from
scratch into crates/minigpt4-core/tests/fixtures/{blip2,llama,minigpt4}/ and then
re-checked (every file is reloaded and the references are recomputed from it).

Environment (run by hand, not by CI). The fixtures in the repository were made
with exactly these versions, on CPU:

    python3.11 -m venv /opt/fx
    # PyPI's Linux torch wheel is the CUDA build; it runs on CPU but needs its
    # CUDA runtime wheels to import. Either take the CPU wheel (not tried here:
    # download.pytorch.org was unreachable):
    /opt/fx/bin/pip install --no-deps torch==2.15.0 --index-url https://download.pytorch.org/whl/cpu
    # ... or the PyPI wheel plus its runtime libraries (what was used here):
    /opt/fx/bin/pip install --no-deps torch==2.15.0
    /opt/fx/bin/pip install "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.2.2" \
        nvidia-cudnn-cu13==9.26.0.51 nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.30.7 nvidia-nvshmem-cu13==3.7.2
    # then the rest:
    /opt/fx/bin/pip install filelock typing-extensions sympy networkx jinja2 fsspec \
        transformers==5.23.0 tokenizers==0.23.3 safetensors==0.8.0 numpy==2.4.6 pillow==13.0.0 \
        gguf==0.19.0 sentencepiece==0.2.3

Run (from the repository root):

    /opt/fx/bin/python scripts/make_fixtures.py

It prints the sizes of the files written, the key naming transformers uses,
the quantization errors and the greedy margins. Other torch / transformers
versions should give the same tensors to ~1e-6 but are not guaranteed to give
bit-identical files.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

import gguf
import tokenizers
import transformers
from gguf import GGMLQuantizationType as QT
from gguf import quants
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Blip2Config,
    Blip2Model,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

torch.set_num_threads(1)  # bit-stable CPU results
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "crates" / "minigpt4-core" / "tests" / "fixtures"
IMAGES = FIX / "images"
BLIP2 = FIX / "blip2"
LLAMA = FIX / "llama"
MGPT = FIX / "minigpt4"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 56

SYSTEM = (
    "Give the following image: <Img>ImageContent</Img>. "
    "You will be able to see the image once I provide it to you. Please answer my questions."
)
QUESTION = "Describe this image in detail."
PROMPTS = {
    "vicuna_v0": f"{SYSTEM}###Human: <Img><ImageHere></Img> {QUESTION}###Assistant: ",
    "llama2": f"{SYSTEM}<s>[INST] <Img><ImageHere></Img> {QUESTION} [/INST] ",
}
LLAMA_SENTENCE = "A small cat sat by the window and watched the birds."

BLIP2_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=IMAGE_SIZE,
    patch_size=14,
    layer_norm_eps=1e-6,
    qkv_bias=True,
    hidden_act="gelu",
)
BLIP2_QFORMER = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    layer_norm_eps=1e-12,
    cross_attention_frequency=2,
    encoder_hidden_size=32,
    hidden_act="gelu",
)
NUM_QUERY_TOKENS = 8
LLAMA_KW = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    hidden_act="silu",
)

SIZES: list[tuple[str, int]] = []
REPORT: dict[str, object] = {}


def log(*a):
    print(*a, flush=True)


def rel(p: Path) -> str:
    return str(p.relative_to(FIX))


def c(t: torch.Tensor) -> torch.Tensor:
    """Own, contiguous f32/i64 copy (no shared storage in saved files)."""
    return t.detach().clone().contiguous()


def save_st(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: c(v) for k, v in tensors.items()}, str(path), metadata=metadata)


def save_json(obj, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2)
    # keep lists of ints on one line
    text = re.sub(
        r"\[\n[-\d,\s]*\]",  # only multi-line lists of ints
        lambda m: "[" + ", ".join(x.strip() for x in m.group(0)[1:-1].split(",") if x.strip()) + "]",
        text,
    )
    assert json.loads(text) == obj
    path.write_text(text + "\n")


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# ---------------------------------------------------------------------------
# random perturbation of every parameter
# ---------------------------------------------------------------------------


def perturb(module: torch.nn.Module, seed: int, std_for) -> None:
    """Overwrite every parameter with seeded random values.

    1-D `*norm*.weight`  -> 1 + 0.1 * randn
    other 1-D (biases)   -> 0.1 * randn
    everything else      -> std_for(name, p) * randn
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            n = torch.randn(p.shape, generator=g, dtype=torch.float32)
            lname = name.lower()
            if p.ndim == 1 and "norm" in lname and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * n)
            elif p.ndim == 1:
                p.copy_(0.1 * n)
            else:
                p.copy_(std_for(name, p) * n)


# ---------------------------------------------------------------------------
# image preprocessing (MiniGPT-4 Blip2ImageEvalProcessor)
# ---------------------------------------------------------------------------


def preprocess(path: Path, size: int) -> torch.Tensor:
    img = Image.open(path).convert("RGB")
    # torchvision Resize((s, s), BICUBIC) on a PIL image == PIL resize
    img = img.resize((size, size), Image.BICUBIC)
    # ToTensor
    x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
    x = x.view(size, size, 3).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    # Normalize
    mean = torch.as_tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    x = x.sub(mean).div(std)
    return x.unsqueeze(0)


# ---------------------------------------------------------------------------
# BLIP-2
# ---------------------------------------------------------------------------


def blip2_std(name: str, p: torch.Tensor) -> float:
    if "patch_embedding" in name:
        return 0.03
    if "class_embedding" in name or "position_embedding" in name:
        return 0.2
    if name == "query_tokens":
        return 0.5
    return 0.1


def build_blip2():
    cfg = Blip2Config(
        vision_config=BLIP2_VISION,
        qformer_config=BLIP2_QFORMER,
        text_config=dict(model_type="llama", **LLAMA_KW),
        num_query_tokens=NUM_QUERY_TOKENS,
    )
    cfg._attn_implementation = "eager"
    for sub in (cfg.vision_config, cfg.qformer_config, cfg.text_config):
        sub._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Blip2Model(cfg).eval()
    keep = ("vision_model.", "qformer.", "query_tokens")
    params = {n: p for n, p in model.named_parameters() if n.startswith(keep)}

    class _Sub(torch.nn.Module):
        pass

    holder = _Sub()
    holder.vision_model = model.vision_model
    holder.qformer = model.qformer
    holder.query_tokens = model.query_tokens
    assert sorted(n for n, _ in holder.named_parameters()) == sorted(params)
    perturb(holder, seed=1001, std_for=blip2_std)
    # EVA has no k bias: the fused HF bias must be cat(q_bias, 0, v_bias)
    D = BLIP2_VISION["hidden_size"]
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.qkv.bias[D : 2 * D] = 0.0
    return cfg, model


def blip2_state_dict(model: Blip2Model) -> dict[str, torch.Tensor]:
    keep = ("vision_model.", "qformer.", "query_tokens")
    return {k: c(v) for k, v in model.state_dict().items() if k.startswith(keep)}


def split_qkv_bias(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fused `self_attn.qkv.bias` -> `self_attn.q_bias` + `self_attn.v_bias`"""
    out = {}
    for k, v in sd.items():
        if k.endswith("self_attn.qkv.bias"):
            D = v.shape[0] // 3
            assert torch.all(v[D : 2 * D] == 0)
            base = k[: -len("qkv.bias")]
            out[base + "q_bias"] = c(v[:D])
            out[base + "v_bias"] = c(v[2 * D :])
        else:
            out[k] = v
    return out


def fuse_qkv_bias(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.endswith("self_attn.q_bias"):
            base = k[: -len("q_bias")]
            vb = sd[base + "v_bias"]
            out[base + "qkv.bias"] = torch.cat([v, torch.zeros_like(v), vb])
        elif k.endswith("self_attn.v_bias"):
            continue
        else:
            out[k] = v
    return out


def hf_to_eva(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF Blip2 vision names -> LAVIS eva_vit_g.pth names (no prefix)."""
    p = "vision_model."
    eva = {
        "cls_token": sd[p + "embeddings.class_embedding"],
        "pos_embed": sd[p + "embeddings.position_embedding"],
        "patch_embed.proj.weight": sd[p + "embeddings.patch_embedding.weight"],
        "patch_embed.proj.bias": sd[p + "embeddings.patch_embedding.bias"],
    }
    for i in range(BLIP2_VISION["num_hidden_layers"]):
        h = f"{p}encoder.layers.{i}."
        b = f"blocks.{i}."
        D = BLIP2_VISION["hidden_size"]
        qkv_b = sd[h + "self_attn.qkv.bias"]
        eva.update(
            {
                b + "norm1.weight": sd[h + "layer_norm1.weight"],
                b + "norm1.bias": sd[h + "layer_norm1.bias"],
                b + "attn.q_bias": qkv_b[:D],
                b + "attn.v_bias": qkv_b[2 * D :],
                b + "attn.qkv.weight": sd[h + "self_attn.qkv.weight"],
                b + "attn.proj.weight": sd[h + "self_attn.projection.weight"],
                b + "attn.proj.bias": sd[h + "self_attn.projection.bias"],
                b + "norm2.weight": sd[h + "layer_norm2.weight"],
                b + "norm2.bias": sd[h + "layer_norm2.bias"],
                b + "mlp.fc1.weight": sd[h + "mlp.fc1.weight"],
                b + "mlp.fc1.bias": sd[h + "mlp.fc1.bias"],
                b + "mlp.fc2.weight": sd[h + "mlp.fc2.weight"],
                b + "mlp.fc2.bias": sd[h + "mlp.fc2.bias"],
            }
        )
    return {k: c(v) for k, v in eva.items()}


def hf_to_lavis_qformer(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF query_tokens / post_layernorm / qformer.* -> LAVIS blip2 checkpoint names."""
    out = {
        "query_tokens": sd["query_tokens"],
        "ln_vision.weight": sd["vision_model.post_layernorm.weight"],
        "ln_vision.bias": sd["vision_model.post_layernorm.bias"],
    }
    for k, v in sd.items():
        if not k.startswith("qformer."):
            continue
        s = k[len("qformer.") :]
        if s.startswith("layernorm."):
            s = "embeddings.LayerNorm." + s[len("layernorm.") :]
        s = s.replace(".attention.attention.", ".attention.self.")
        s = s.replace(".crossattention.attention.", ".crossattention.self.")
        out["Qformer.bert." + s] = v
    return {k: c(v) for k, v in out.items()}


def run_vision(model: Blip2Model, pixel_values: torch.Tensor):
    vm = model.vision_model
    with torch.no_grad():
        emb = vm.embeddings(pixel_values)
        pre = vm.encoder(inputs_embeds=emb).last_hidden_state
        post = vm.post_layernorm(pre)
        full = vm(pixel_values=pixel_values).last_hidden_state
    assert torch.equal(full, post), maxdiff(full, post)
    return pre, post


def run_qformer(model: Blip2Model, image_embeds: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        q = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
        att = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
        return model.qformer(
            query_embeds=q, encoder_hidden_states=image_embeds, encoder_attention_mask=att
        ).last_hidden_state


def make_blip2():
    log("== blip2")
    cfg, model = build_blip2()
    BLIP2.mkdir(parents=True, exist_ok=True)
    cfg.to_json_file(str(BLIP2 / "config.json"))

    sd_hf = blip2_state_dict(model)  # what transformers produces
    native = sorted(k for k in sd_hf if "self_attn" in k and "bias" in k and "projection" not in k)
    REPORT["transformers_vision_qkv_bias_keys"] = native
    REPORT["transformers_qformer_attention_keys"] = sorted(
        k for k in sd_hf if k.startswith("qformer.encoder.layer.0.")
    )
    fused_native = any(k.endswith("self_attn.qkv.bias") for k in sd_hf)
    log("transformers", transformers.__version__, "vision q/v bias naming:",
        "fused self_attn.qkv.bias" if fused_native else "separate q_bias/v_bias")
    if fused_native:
        sd_split = split_qkv_bias(sd_hf)
        sd_fused = sd_hf
    else:
        sd_split = sd_hf
        sd_fused = fuse_qkv_bias(sd_hf)
    # model.safetensors: the naming of the published HF checkpoints (q_bias / v_bias);
    # model_fused_qkv_bias.safetensors: one fused qkv.bias = cat(q_bias, 0, v_bias).
    save_st(sd_split, BLIP2 / "model.safetensors", metadata={"format": "pt"})
    save_st(sd_fused, BLIP2 / "model_fused_qkv_bias.safetensors", metadata={"format": "pt"})
    with open(BLIP2 / "keys.txt", "w") as f:
        for k in sorted(sd_split):
            f.write(f"{k}\t{list(sd_split[k].shape)}\n")

    # LAVIS-named checkpoints
    eva = hf_to_eva(sd_fused)
    torch.save(eva, BLIP2 / "eva_vit_g.pth")
    lavis = hf_to_lavis_qformer(sd_fused)
    g = torch.Generator().manual_seed(1002)
    H = BLIP2_QFORMER["hidden_size"]
    ignored = {
        # text branch and heads of the BLIP-2 stage-1 model: the loader must skip these
        "Qformer.bert.embeddings.word_embeddings.weight": 0.02 * torch.randn(40, H, generator=g),
        "Qformer.bert.embeddings.position_embeddings.weight": 0.02 * torch.randn(16, H, generator=g),
        "Qformer.bert.embeddings.position_ids": torch.arange(16).unsqueeze(0),
        "Qformer.bert.encoder.layer.0.intermediate.dense.weight": 0.02 * torch.randn(64, H, generator=g),
        "Qformer.bert.encoder.layer.0.intermediate.dense.bias": 0.02 * torch.randn(64, generator=g),
        "Qformer.bert.encoder.layer.0.output.dense.weight": 0.02 * torch.randn(H, 64, generator=g),
        "Qformer.cls.predictions.bias": 0.02 * torch.randn(40, generator=g),
        "vision_proj.weight": 0.02 * torch.randn(16, H, generator=g),
        "text_proj.weight": 0.02 * torch.randn(16, H, generator=g),
        "itm_head.weight": 0.02 * torch.randn(2, H, generator=g),
        "temp": torch.tensor(0.07),
    }
    lavis_all = dict(lavis)
    lavis_all.update({k: c(v) for k, v in ignored.items()})
    lavis_all = {k: lavis_all[k] for k in sorted(lavis_all)}
    torch.save(
        {"model": lavis_all, "epoch": 3, "config": {"run": {"init_lr": 1e-4, "arch": "blip2"}}},
        BLIP2 / "blip2_pretrained.pth",
    )

    # reference activations
    pixel_values = preprocess(IMAGES / "cat.jpg", IMAGE_SIZE)
    pre, post = run_vision(model, pixel_values)
    qf = run_qformer(model, post)
    # LAVIS path: ln_vision is LayerNorm(eps=1e-5) (HF post_layernorm uses eps 1e-6)
    lavis_ln = F.layer_norm(pre, (pre.shape[-1],), lavis["ln_vision.weight"], lavis["ln_vision.bias"], eps=1e-5)
    lavis_qf = run_qformer(model, lavis_ln)
    REPORT["ln_vision eps 1e-5 vs 1e-6: max|diff| vision / qformer"] = (
        maxdiff(lavis_ln, post), maxdiff(lavis_qf, qf))
    save_st(
        {
            "pixel_values": pixel_values,
            "vision_pre_norm": pre,
            "vision_last_hidden_state": post,
            "qformer_last_hidden_state": qf,
            "lavis_ln_vision": lavis_ln,
            "lavis_qformer_last_hidden_state": lavis_qf,
        },
        BLIP2 / "reference.safetensors",
    )
    assert pre.shape == (1, 17, 32) and post.shape == (1, 17, 32) and qf.shape == (1, 8, 32)
    return model, pixel_values, pre, post, qf


# ---------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------

CORPUS = """\
Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. Please answer my questions.
###Human: <Img><ImageHere></Img> Describe this image in detail.###Assistant: The image shows a cat sitting on a wooden table.
[INST] <Img><ImageHere></Img> Describe this image in detail. [/INST] The picture shows a small dog playing in the grass.
Take a look at this image and describe what you notice. Please provide a detailed description of the picture.
Could you describe the contents of this image for me? What is in the picture? How many people are there?
A cat is a small animal with soft fur, sharp claws and a long tail. The cat in this photo is sitting near a window,
looking at the birds in the garden. Its fur is grey and white, and its eyes are green. Behind the cat there is a
plant in a brown pot, and the light of the morning sun comes in through the glass.
The dog runs across the field and catches the red ball. A man in a blue shirt is standing next to a bicycle.
Two children are playing on the beach near the sea. The sky is blue and there are a few white clouds.
A bowl of fruit on the kitchen table: apples, oranges, bananas and grapes. A cup of coffee stands beside the bowl.
The rocket lifts off from the launch pad with a bright orange flame and a large cloud of white smoke.
The city street is busy with cars, buses and people walking on the sidewalk under tall buildings.
MiniGPT-4 aligns a frozen visual encoder with a frozen large language model using one projection layer.
The vision encoder turns the image into a sequence of tokens; the Q-Former reads them with a small set of
learned queries, and a linear layer projects the result into the embedding space of the language model.
The language model then reads the image tokens together with the text of the prompt and writes an answer,
one token at a time, until it produces the stop sequence or reaches the maximum number of new tokens.
In the first stage the projection is trained on image and caption pairs; in the second stage it is tuned on
a small set of detailed descriptions so that the model follows instructions and answers in full sentences.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore. It was a bright cold day in April.
There is a red car parked in front of an old house with a green door and white windows. A tree stands in the yard.
The photograph shows a mountain lake at sunset; the water reflects the pink and purple colours of the sky.
A woman is reading a book on a bench in the park while pigeons walk around her feet looking for bread.
On the desk there is a laptop, a lamp, a notebook, two pens and a small plant in a white pot.
Answer: yes. Answer: no. Answer: two. Answer: blue. The answer is a cat. The answer is a dog.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 20 32 64 100 256 1000 2023 2024.
"""


def make_tokenizer() -> Tokenizer:
    def train():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
            min_frequency=1,
        )
        tok.train_from_iterator([CORPUS] * 3, trainer=trainer)
        return tok

    tok = train()
    again = train()
    assert tok.to_str() == again.to_str(), "tokenizer training is not deterministic"
    assert tok.token_to_id("<unk>") == 0 and tok.token_to_id("<s>") == 1 and tok.token_to_id("</s>") == 2
    assert tok.get_vocab_size() == 512, tok.get_vocab_size()
    LLAMA.mkdir(parents=True, exist_ok=True)
    tok.save(str(LLAMA / "tokenizer.json"))
    # round-trip through the file
    tok = Tokenizer.from_file(str(LLAMA / "tokenizer.json"))
    s = "Hello, world! ###Human: <s>[INST] ünïcödé 🐱"
    assert tok.decode(tok.encode(s, add_special_tokens=False).ids, skip_special_tokens=False) == s
    return tok


def encode(tok: Tokenizer, text: str, bos: bool) -> list[int]:
    ids = tok.encode(text, add_special_tokens=False).ids
    return ([1] if bos else []) + ids


# ---------------------------------------------------------------------------
# LLaMA
# ---------------------------------------------------------------------------


def llama_std(name: str, p: torch.Tensor) -> float:
    if "embed_tokens" in name:
        return 0.3
    return 0.1


def build_llama(tied: bool, seed: int) -> tuple[LlamaConfig, LlamaForCausalLM]:
    kw = dict(LLAMA_KW)
    kw["tie_word_embeddings"] = tied
    cfg = LlamaConfig(**kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    perturb(model, seed=seed + 1, std_for=llama_std)
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    else:
        assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    return cfg, model


def llama_state_dict(model: LlamaForCausalLM, tied: bool) -> dict[str, torch.Tensor]:
    sd = {k: c(v).to(torch.float32) for k, v in model.state_dict().items()}
    if tied:
        sd.pop("lm_head.weight", None)
    return sd


def logits_of(model: LlamaForCausalLM, input_ids=None, inputs_embeds=None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False).logits


def greedy_full(model: LlamaForCausalLM, embeds: torch.Tensor, n: int) -> tuple[list[int], float]:
    """Greedy decoding with a full recompute each step; also the smallest top1-top2 margin."""
    out, margin = [], float("inf")
    e = embeds
    emb = model.get_input_embeddings()
    with torch.no_grad():
        for _ in range(n):
            last = model(inputs_embeds=e, use_cache=False).logits[0, -1]
            top2 = torch.topk(last, 2).values
            margin = min(margin, (top2[0] - top2[1]).item())
            nxt = int(torch.argmax(last))
            out.append(nxt)
            e = torch.cat([e, emb(torch.tensor([[nxt]]))], dim=1)
    return out, margin


def hf_greedy(model: LlamaForCausalLM, n: int, input_ids=None, inputs_embeds=None) -> list[int]:
    gc = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=n,
        min_new_tokens=0,
        eos_token_id=None,
        pad_token_id=0,
        bos_token_id=1,
        repetition_penalty=1.0,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        if input_ids is not None:
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 generation_config=gc)
            new = out[0, input_ids.shape[1]:].tolist()
        else:
            att = torch.ones(inputs_embeds.shape[:2], dtype=torch.long)
            out = model.generate(inputs_embeds=inputs_embeds, attention_mask=att, generation_config=gc)
            new = out[0].tolist()  # decoder-only + inputs_embeds: only the new tokens come back
    assert len(new) == n, (len(new), new)
    return new


def make_llama(tok: Tokenizer):
    log("== llama")
    cfg, model = build_llama(tied=False, seed=2000)
    cfg.save_pretrained(str(LLAMA))  # config.json (+ generation_config.json removed below)
    gen = LLAMA / "generation_config.json"
    if gen.exists():
        gen.unlink()
    sd = llama_state_dict(model, tied=False)
    save_st(sd, LLAMA / "model.safetensors", metadata={"format": "pt"})

    ids = encode(tok, LLAMA_SENTENCE, bos=True)
    log("llama sentence:", len(ids), "tokens", ids)
    input_ids = torch.tensor([ids], dtype=torch.int64)
    logits = logits_of(model, input_ids=input_ids)
    save_st({"input_ids": input_ids, "logits": logits}, LLAMA / "reference.safetensors")

    gen_ids = hf_greedy(model, 20, input_ids=input_ids)
    full, margin = greedy_full(model, model.get_input_embeddings()(input_ids).detach(), 20)
    assert gen_ids == full, (gen_ids, full)
    REPORT["llama greedy min top1-top2 margin"] = margin
    save_json({"prompt_ids": ids, "generated_ids": gen_ids}, LLAMA / "greedy.json")

    # tied variant
    tcfg, tmodel = build_llama(tied=True, seed=3000)
    (LLAMA / "tied").mkdir(parents=True, exist_ok=True)
    tcfg.save_pretrained(str(LLAMA / "tied"))
    gen = LLAMA / "tied" / "generation_config.json"
    if gen.exists():
        gen.unlink()
    tsd = llama_state_dict(tmodel, tied=True)
    assert "lm_head.weight" not in tsd
    save_st(tsd, LLAMA / "tied" / "model.safetensors", metadata={"format": "pt"})
    tlogits = logits_of(tmodel, input_ids=input_ids)
    save_st({"input_ids": input_ids, "logits": tlogits}, LLAMA / "tied" / "reference.safetensors")

    make_gguf(tok, cfg, model, input_ids, logits)
    return cfg, model


# ---------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute"""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_tensors(sd: dict[str, torch.Tensor], cfg: LlamaConfig) -> list[tuple[str, str, np.ndarray]]:
    """[(gguf_name, hf_name, f32 array in GGUF layout)] in llama.cpp order."""
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    out = [("token_embd.weight", "model.embed_tokens.weight", sd["model.embed_tokens.weight"].numpy())]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        m = [
            ("attn_norm", "input_layernorm.weight"),
            ("attn_q", "self_attn.q_proj.weight"),
            ("attn_k", "self_attn.k_proj.weight"),
            ("attn_v", "self_attn.v_proj.weight"),
            ("attn_output", "self_attn.o_proj.weight"),
            ("ffn_norm", "post_attention_layernorm.weight"),
            ("ffn_gate", "mlp.gate_proj.weight"),
            ("ffn_up", "mlp.up_proj.weight"),
            ("ffn_down", "mlp.down_proj.weight"),
        ]
        for g, h in m:
            a = sd[p + h].numpy()
            if g == "attn_q":
                a = permute(a, nh, nh)
            elif g == "attn_k":
                a = permute(a, nh, nkv)
            out.append((f"blk.{i}.{g}.weight", p + h, np.ascontiguousarray(a, dtype=np.float32)))
    out.append(("output_norm.weight", "model.norm.weight", sd["model.norm.weight"].numpy()))
    out.append(("output.weight", "lm_head.weight", sd["lm_head.weight"].numpy()))
    return out


def tokenizer_vocab(tok: Tokenizer):
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    for at in j["added_tokens"]:
        vocab[at["content"]] = at["id"]
    n = len(vocab)
    tokens = [None] * n
    for t, i in vocab.items():
        tokens[i] = t
    assert all(t is not None for t in tokens)
    specials = {at["id"] for at in j["added_tokens"] if at["special"]}
    types = [int(gguf.TokenType.CONTROL) if i in specials else int(gguf.TokenType.NORMAL) for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    return tokens, types, merges


def write_gguf(path: Path, cfg: LlamaConfig, tok: Tokenizer, tensors, qtype_for, file_type: int):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("minigpt4-rs tiny llama fixture")
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_file_type(file_type)
    if file_type != int(gguf.LlamaFileType.ALL_F32):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, types, merges = tokenizer_vocab(tok)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    deq = {}
    for name, hf, a in tensors:
        qt = qtype_for(name, a)
        if qt == QT.F32:
            w.add_tensor(name, a)
            deq[name] = a
        else:
            q = quants.quantize(a, qt)
            w.add_tensor(name, q, raw_dtype=qt)
            deq[name] = quants.dequantize(q, qt).reshape(a.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return deq


def check_gguf(path: Path, cfg: LlamaConfig, tok: Tokenizer, tensors, deq, qtype_for):
    r = gguf.GGUFReader(str(path))
    f = r.fields

    def val(k):
        fld = f[k]
        return fld.contents()

    assert val("general.architecture") == "llama"
    assert val("llama.embedding_length") == cfg.hidden_size
    assert val("llama.block_count") == cfg.num_hidden_layers
    assert val("llama.attention.head_count_kv") == cfg.num_key_value_heads
    assert val("llama.rope.dimension_count") == 16
    assert val("tokenizer.ggml.model") == "gpt2"
    assert val("tokenizer.ggml.bos_token_id") == 1
    assert val("tokenizer.ggml.add_bos_token") is False
    tokens, types, merges = tokenizer_vocab(tok)
    assert val("tokenizer.ggml.tokens") == tokens
    assert val("tokenizer.ggml.token_type") == types
    assert val("tokenizer.ggml.merges") == merges
    by_name = {t.name: t for t in r.tensors}
    assert list(by_name) == [n for n, _, _ in tensors]
    for name, _, a in tensors:
        t = by_name[name]
        qt = qtype_for(name, a)
        assert t.tensor_type == qt, (name, t.tensor_type, qt)
        # GGUF dims are reversed (ne0 = innermost)
        assert [int(x) for x in t.shape] == list(a.shape[::-1]), (name, t.shape, a.shape)
        back = quants.dequantize(np.asarray(t.data), qt).reshape(a.shape)
        assert np.array_equal(back, deq[name]), name


def make_gguf(tok: Tokenizer, cfg: LlamaConfig, model: LlamaForCausalLM, input_ids, logits_ref):
    log("== gguf")
    sd = llama_state_dict(model, tied=False)
    tensors = gguf_tensors(sd, cfg)
    for name, hf, a in tensors:  # permute round-trip
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            kv = cfg.num_attention_heads if "attn_q" in name else cfg.num_key_value_heads
            assert np.array_equal(unpermute(a, cfg.num_attention_heads, kv), sd[hf].numpy())

    def f32(name, a):
        return QT.F32

    def q8(name, a):
        return QT.Q8_0 if a.ndim == 2 else QT.F32

    def q4(name, a):
        if a.ndim != 2:
            return QT.F32
        return QT.Q8_0 if name == "token_embd.weight" else QT.Q4_0

    variants = [
        ("f32", f32, int(gguf.LlamaFileType.ALL_F32)),
        ("q8_0", q8, int(gguf.LlamaFileType.MOSTLY_Q8_0)),
        ("q4_0", q4, int(gguf.LlamaFileType.MOSTLY_Q4_0)),
    ]
    out = {"input_ids": input_ids}
    for tag, qf, ft in variants:
        path = LLAMA / f"model-{tag}.gguf"
        deq = write_gguf(path, cfg, tok, tensors, qf, ft)
        check_gguf(path, cfg, tok, tensors, deq, qf)
        # HF model with the dequantized weights (q/k un-permuted back)
        _, m2 = build_llama(tied=False, seed=2000)
        sd2 = {}
        for name, hf, _ in tensors:
            a = deq[name]
            if name.endswith("attn_q.weight"):
                a = unpermute(a, cfg.num_attention_heads, cfg.num_attention_heads)
            elif name.endswith("attn_k.weight"):
                a = unpermute(a, cfg.num_attention_heads, cfg.num_key_value_heads)
            sd2[hf] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        m2.load_state_dict(sd2, strict=True)
        lg = logits_of(m2, input_ids=input_ids)
        out[f"logits_{tag}"] = lg
        d = maxdiff(lg, logits_ref)
        REPORT[f"gguf {tag}: max|logits - f32 logits| (f32 logits std {logits_ref.std().item():.3f})"] = d
        log(f"gguf {tag}: max|logits - f32 logits| = {d:.6g}")
    assert torch.equal(out["logits_f32"], logits_ref)
    save_st(out, LLAMA / "reference-gguf.safetensors")


# ---------------------------------------------------------------------------
# MiniGPT-4
# ---------------------------------------------------------------------------


def save_proj(path: Path, weight: torch.Tensor, bias: torch.Tensor, seed: int):
    g = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": {
                "llama_proj.weight": c(weight),
                "llama_proj.bias": c(bias),
                "some_other.weight": 0.02 * torch.randn(4, 4, generator=g),
            }
        },
        path,
    )


def context_embeds(tok: Tokenizer, llm: LlamaForCausalLM, prompt: str, img_list: list[torch.Tensor]):
    """conversation.py Chat.get_context_emb"""
    segs = prompt.split("<ImageHere>")
    assert len(segs) == len(img_list) + 1
    seg_ids = [encode(tok, s, bos=(i == 0)) for i, s in enumerate(segs)]
    emb = llm.get_input_embeddings()
    with torch.no_grad():
        seg_embs = [emb(torch.tensor([ids], dtype=torch.int64)) for ids in seg_ids]
    mixed = [e for pair in zip(seg_embs[:-1], img_list) for e in pair] + [seg_embs[-1]]
    return seg_ids, torch.cat(mixed, dim=1)


def make_minigpt4(tok, llm, blip, pixel_values, vision_pre, vision_post, qformer_out):
    log("== minigpt4")
    d_llm = LLAMA_KW["hidden_size"]
    g = torch.Generator().manual_seed(4000)

    # --- Q-Former variant, vicuna_v0
    w = 0.1 * torch.randn(d_llm, 32, generator=g)
    b = 0.1 * torch.randn(d_llm, generator=g)
    with torch.no_grad():
        q_img = run_qformer(blip, vision_post)
        assert torch.equal(q_img, qformer_out)
        img_q = F.linear(q_img, w, b)
    save_proj(MGPT / "qformer" / "minigpt4_proj.pth", w, b, seed=4001)

    # --- merge-4 variant, llama2
    w4 = 0.1 * torch.randn(d_llm, 128, generator=g) / 2.0
    b4 = 0.1 * torch.randn(d_llm, generator=g)
    with torch.no_grad():
        ln = F.layer_norm(vision_pre, (32,), torch.ones(32), torch.zeros(32), eps=1e-5)
        x = ln[:, 1:, :]
        bs, pn, hs = x.shape
        x = x.reshape(bs, pn // 4, hs * 4)
        img_m = F.linear(x, w4, b4)
    save_proj(MGPT / "merge4" / "minigpt4_proj.pth", w4, b4, seed=4002)

    for sub, template, img in (("qformer", "vicuna_v0", img_q), ("merge4", "llama2", img_m)):
        prompt = PROMPTS[template]
        seg_ids, embs = context_embeds(tok, llm, prompt, [img])
        logits = logits_of(llm, inputs_embeds=embs)
        greedy = hf_greedy(llm, 16, inputs_embeds=embs)
        full, margin = greedy_full(llm, embs, 16)
        assert greedy == full, (greedy, full)
        REPORT[f"minigpt4/{sub} greedy min top1-top2 margin"] = margin
        REPORT[f"minigpt4/{sub} segment lengths"] = [len(s) for s in seg_ids]
        if template == "llama2":
            REPORT["llama2 '<s>' in text tokenized as id 1"] = 1 in seg_ids[0][1:]
            REPORT["llama2 first segment ids"] = seg_ids[0]
        save_st(
            {"pixel_values": pixel_values, "image_embeds": img, "inputs_embeds": embs, "logits": logits},
            MGPT / sub / "reference.safetensors",
        )
        save_json(
            {
                "template": template,
                "question": QUESTION,
                "prompt": prompt,
                "segment_ids": seg_ids,
                "greedy_ids": greedy,
                "greedy_method": "HF generate(inputs_embeds, do_sample=False, max_new_tokens=16, eos_token_id=None)"
                "; identical to a full-recompute argmax loop",
                "adapter": "qformer (HF post_layernorm eps 1e-6 on vision output)"
                if sub == "qformer"
                else "merge4 (LayerNorm eps 1e-5, weight 1, bias 0 on vision_pre_norm; drop CLS; view [1,4,128])",
            },
            MGPT / sub / "meta.json",
        )


# ---------------------------------------------------------------------------
# self-check: reload every file and recompute
# ---------------------------------------------------------------------------


def self_check(tok_ref: Tokenizer):
    log("== self-check")
    tok = Tokenizer.from_file(str(LLAMA / "tokenizer.json"))
    assert tok.to_str() == tok_ref.to_str()

    # BLIP-2 from model.safetensors (q_bias/v_bias) and from the fused file
    cfg = Blip2Config.from_json_file(str(BLIP2 / "config.json"))
    for sub in (cfg, cfg.vision_config, cfg.qformer_config, cfg.text_config):
        sub._attn_implementation = "eager"
    ref = load_file(str(BLIP2 / "reference.safetensors"))
    assert torch.equal(ref["pixel_values"], preprocess(IMAGES / "cat.jpg", IMAGE_SIZE))
    split = load_file(str(BLIP2 / "model.safetensors"))
    fused = load_file(str(BLIP2 / "model_fused_qkv_bias.safetensors"))
    assert fuse_qkv_bias(split).keys() == fused.keys()
    for k, v in fuse_qkv_bias(split).items():
        assert torch.equal(v, fused[k]), k
    keys = [line.split("\t")[0] for line in (BLIP2 / "keys.txt").read_text().splitlines()]
    assert keys == sorted(split)
    torch.manual_seed(123)
    m = Blip2Model(cfg).eval()
    res = m.load_state_dict(fused, strict=False)
    assert not res.unexpected_keys, res.unexpected_keys
    assert all(k.startswith(("language_model.", "language_projection.")) for k in res.missing_keys)
    pre, post = run_vision(m, ref["pixel_values"])
    qf = run_qformer(m, post)
    assert torch.equal(pre, ref["vision_pre_norm"])
    assert torch.equal(post, ref["vision_last_hidden_state"])
    assert torch.equal(qf, ref["qformer_last_hidden_state"])

    # LAVIS files against an independent EVA / LAVIS-Q-Former forward written here
    eva = torch.load(BLIP2 / "eva_vit_g.pth", weights_only=True)
    ck = torch.load(BLIP2 / "blip2_pretrained.pth", weights_only=True)
    assert ck["epoch"] == 3
    lv = ck["model"]
    assert eva["cls_token"].shape == (1, 1, 32) and eva["pos_embed"].shape == (1, 17, 32)
    eva_pre = eva_forward(eva, ref["pixel_values"])
    d_eva = maxdiff(eva_pre, ref["vision_pre_norm"])
    ln = F.layer_norm(eva_pre, (32,), lv["ln_vision.weight"], lv["ln_vision.bias"], eps=1e-5)
    lq = lavis_qformer_forward(lv, ln)
    d_lq = maxdiff(lq, ref["lavis_qformer_last_hidden_state"])
    log(f"independent EVA forward vs vision_pre_norm: {d_eva:.3g}; LAVIS Q-Former: {d_lq:.3g}")
    assert d_eva < 1e-5 and d_lq < 1e-5

    # LLaMA
    for sub, tied in (("", False), ("tied", True)):
        d = LLAMA / sub if sub else LLAMA
        lcfg = LlamaConfig.from_json_file(str(d / "config.json"))
        lcfg._attn_implementation = "eager"
        assert lcfg.tie_word_embeddings == tied
        torch.manual_seed(99)
        lm = LlamaForCausalLM(lcfg).eval()
        sd = load_file(str(d / "model.safetensors"))
        assert ("lm_head.weight" in sd) == (not tied)
        res = lm.load_state_dict(sd, strict=not tied)
        if tied:
            assert res.missing_keys in ([], ["lm_head.weight"]), res
            lm.tie_weights()
            assert torch.equal(lm.lm_head.weight, sd["model.embed_tokens.weight"])
        r = load_file(str(d / "reference.safetensors"))
        assert torch.equal(logits_of(lm, input_ids=r["input_ids"]), r["logits"]), sub
        if not tied:
            llm = lm
            lref = r
    gj = json.loads((LLAMA / "greedy.json").read_text())
    assert gj["prompt_ids"] == lref["input_ids"][0].tolist()
    assert greedy_full(llm, llm.get_input_embeddings()(lref["input_ids"]).detach(), 20)[0] == gj["generated_ids"]
    rg = load_file(str(LLAMA / "reference-gguf.safetensors"))
    assert torch.equal(rg["input_ids"], lref["input_ids"]) and torch.equal(rg["logits_f32"], lref["logits"])
    # GGUF files -> (dequantize, un-permute) -> HF weights -> logits
    g2h = {g: h for g, h, _ in gguf_tensors(load_file(str(LLAMA / "model.safetensors")), llm.config)}
    for tag in ("f32", "q8_0", "q4_0"):
        r = gguf.GGUFReader(str(LLAMA / f"model-{tag}.gguf"))
        sd = {}
        for t in r.tensors:
            shape = [int(x) for x in t.shape[::-1]]
            a = quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)
            if t.name.endswith("attn_q.weight"):
                a = unpermute(a, 4, 4)
            elif t.name.endswith("attn_k.weight"):
                a = unpermute(a, 4, 2)
            sd[g2h[t.name]] = torch.from_numpy(np.ascontiguousarray(a))
        torch.manual_seed(5)
        lm = LlamaForCausalLM(llm.config).eval()
        lm.load_state_dict(sd, strict=True)
        assert torch.equal(logits_of(lm, input_ids=rg["input_ids"]), rg[f"logits_{tag}"]), tag
    assert tok.encode(LLAMA_SENTENCE, add_special_tokens=False).ids == lref["input_ids"][0, 1:].tolist()

    # MiniGPT-4: recompute from the saved pieces only
    for sub in ("qformer", "merge4"):
        meta = json.loads((MGPT / sub / "meta.json").read_text())
        r = load_file(str(MGPT / sub / "reference.safetensors"))
        pj = torch.load(MGPT / sub / "minigpt4_proj.pth", weights_only=True)["model"]
        if sub == "qformer":
            feats = ref["qformer_last_hidden_state"]
        else:
            x = F.layer_norm(ref["vision_pre_norm"], (32,), eps=1e-5)[:, 1:, :]
            feats = x.reshape(1, 4, 128)
        img = F.linear(feats, pj["llama_proj.weight"], pj["llama_proj.bias"])
        assert torch.equal(img, r["image_embeds"]), sub
        assert torch.equal(r["pixel_values"], ref["pixel_values"])
        segs = meta["prompt"].split("<ImageHere>")
        ids = [encode(tok, s, bos=(i == 0)) for i, s in enumerate(segs)]
        assert ids == meta["segment_ids"]
        e = llm.get_input_embeddings()
        with torch.no_grad():
            embs = torch.cat([e(torch.tensor([ids[0]])), img, e(torch.tensor([ids[1]]))], dim=1)
        assert torch.equal(embs, r["inputs_embeds"]), sub
        assert embs.shape[1] == len(ids[0]) + img.shape[1] + len(ids[1])
        assert torch.equal(logits_of(llm, inputs_embeds=embs), r["logits"]), sub
        assert greedy_full(llm, embs, 16)[0] == meta["greedy_ids"], sub
    log("self-check OK")


def eva_forward(sd, x):
    """LAVIS eva_vit.py VisionTransformer.forward_features (no rel-pos, no layer scale)."""
    D, H = 32, 4
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    for i in range(BLIP2_VISION["num_hidden_layers"]):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv_bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros_like(sd[p + "attn.v_bias"]), sd[p + "attn.v_bias"]])
        B, N, C = h.shape
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], qkv_bias).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * (C // H) ** -0.5
        a = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        h = (a @ v).transpose(1, 2).reshape(B, N, C)
        x = x + F.linear(h, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + h
    return x


def lavis_qformer_forward(sd, image_embeds):
    """LAVIS Qformer.py BertModel(query_embeds=..., encoder_hidden_states=...) query branch."""
    D, H, eps = 32, 4, 1e-12
    P = "Qformer.bert."

    def ln(x, n):
        return F.layer_norm(x, (D,), sd[n + ".weight"], sd[n + ".bias"], eps=eps)

    def lin(x, n):
        return F.linear(x, sd[n + ".weight"], sd[n + ".bias"])

    def attn(x, kv, n):
        B, Nq, _ = x.shape
        Nk = kv.shape[1]
        q = lin(x, n + ".self.query").view(B, Nq, H, D // H).transpose(1, 2)
        k = lin(kv, n + ".self.key").view(B, Nk, H, D // H).transpose(1, 2)
        v = lin(kv, n + ".self.value").view(B, Nk, H, D // H).transpose(1, 2)
        a = (q @ k.transpose(-1, -2) / (D // H) ** 0.5).softmax(-1)
        o = (a @ v).transpose(1, 2).reshape(B, Nq, D)
        return ln(lin(o, n + ".output.dense") + x, n + ".output.LayerNorm")

    x = ln(sd["query_tokens"].expand(image_embeds.shape[0], -1, -1), P + "embeddings.LayerNorm")
    for i in range(BLIP2_QFORMER["num_hidden_layers"]):
        p = f"{P}encoder.layer.{i}"
        x = attn(x, x, p + ".attention")
        if i % BLIP2_QFORMER["cross_attention_frequency"] == 0:
            x = attn(x, image_embeds, p + ".crossattention")
        h = F.gelu(lin(x, p + ".intermediate_query.dense"))
        x = ln(lin(h, p + ".output_query.dense") + x, p + ".output_query.LayerNorm")
    return x


# ---------------------------------------------------------------------------


def main():
    log("torch", torch.__version__, "transformers", transformers.__version__,
        "tokenizers", tokenizers.__version__, "gguf", importlib.metadata.version("gguf"))
    for d in (BLIP2, LLAMA, MGPT):
        if d.exists():
            shutil.rmtree(d)
    blip, pixel_values, pre, post, qf = make_blip2()
    tok = make_tokenizer()
    _, llm = make_llama(tok)
    make_minigpt4(tok, llm, blip, pixel_values, pre, post, qf)
    self_check(tok)

    log("== report")
    for k, v in REPORT.items():
        log(f"{k}: {v}")
    total = 0
    for d in (BLIP2, LLAMA, MGPT):
        for p in sorted(d.rglob("*")):
            if p.is_file():
                total += p.stat().st_size
                log(f"{p.stat().st_size:>10}  {rel(p)}")
    log(f"{total:>10}  total")
    assert total < 4_000_000, total


if __name__ == "__main__":
    main()
