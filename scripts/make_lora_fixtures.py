#!/usr/bin/env python3
"""LoRA parity fixtures (issue 18, MiniGPT-v2): the random-weight test Llama of
make_fixtures.py (fixtures/llama) with a LoRA adapter (r = 8, alpha = 16, on q_proj and
v_proj, random A and B so that it changes the logits) made by PEFT, written twice:

  fixtures/lora/peft/        adapter_config.json + adapter_model.safetensors (PEFT's own save)
  fixtures/lora/minigptv2.pth the MiniGPT-v2 checkpoint layout (torch.save({"model": ...})):
                             llama_proj.{weight,bias} next to
                             llama_model.base_model.model.model.layers.N.self_attn.{q,v}_proj
                             .lora_{A,B}.default.weight (peft 0.2.0's names, which the
                             reference pins)
  fixtures/lora/reference.safetensors  input_ids [1, T], logits [1, T, V] of the adapted model
                             (PEFT, unmerged), logits_merged (merge_and_unload)
  fixtures/lora/greedy.json  12 greedy tokens of the adapted model and their top-1/top-2 margin
  fixtures/lora/vision-112.safetensors  the fixture EVA (fixtures/blip2, trained at 56 px) run at
                             112 px with its position embeddings resized bicubically
                             (transformers' interpolate_pos_encoding, LAVIS's interpolate_pos_embed):
                             MiniGPT-v2's 448 px on a 224 px EVA, at fixture size

Same environment as scripts/make_fixtures.py plus `pip install peft==0.21.2`. Run from the
repository root after make_fixtures.py (it reads fixtures/llama):

    /opt/fx/bin/python scripts/make_lora_fixtures.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import peft
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import Blip2Config, Blip2Model, LlamaForCausalLM

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "crates" / "minigpt4-core" / "tests" / "fixtures"
OUT = FIX / "lora"
R, ALPHA = 8, 16
PROJ_IN = 4 * 32  # merge-4 of the fixture EVA's 32-wide tokens, as MiniGPT-v2's 4 x 1408


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    base = LlamaForCausalLM.from_pretrained(FIX / "llama", torch_dtype=torch.float32).eval()
    ids = json.loads((FIX / "llama" / "greedy.json").read_text())["prompt_ids"]
    input_ids = torch.tensor([ids])

    torch.manual_seed(18)
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                     bias="none", init_lora_weights=False)
    model = get_peft_model(base, cfg).eval()
    # init_lora_weights=False draws A and B at random, but small: scale them up so the adapter
    # moves the logits well above the 1e-4 tolerance.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.mul_(4.0)
    model.save_pretrained(OUT / "peft", safe_serialization=True)
    # Nothing machine-specific in the committed folder.
    (OUT / "peft" / "README.md").unlink(missing_ok=True)
    acfg = json.loads((OUT / "peft" / "adapter_config.json").read_text())
    acfg["base_model_name_or_path"] = "../../llama"
    acfg["target_modules"] = sorted(acfg["target_modules"])  # a set in PEFT: any order
    (OUT / "peft" / "adapter_config.json").write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")

    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
        ids_out, margins = [], []
        seq = input_ids
        for _ in range(12):
            last = model(input_ids=seq).logits[0, -1]
            top = torch.topk(last, 2)
            margins.append(float(top.values[0] - top.values[1]))
            nxt = int(top.indices[0])
            ids_out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], 1)

    # The MiniGPT-v2 checkpoint layout (peft 0.2.0 names, with the adapter name `default`).
    state = {}
    for n, p in model.named_parameters():
        if "lora_" in n:
            # PEFT 0.21: base_model.model.model.layers.N.self_attn.q_proj.lora_A.default.weight
            state["llama_model." + n] = p.detach().clone()
    g = torch.Generator().manual_seed(19)
    state["llama_proj.weight"] = torch.randn(64, PROJ_IN, generator=g) * 0.05
    state["llama_proj.bias"] = torch.randn(64, generator=g) * 0.05
    torch.save({"model": state}, OUT / "minigptv2.pth")

    merged = model.merge_and_unload().eval()
    with torch.no_grad():
        logits_merged = merged(input_ids=input_ids).logits
        plain = LlamaForCausalLM.from_pretrained(FIX / "llama", torch_dtype=torch.float32).eval()
        logits_base = plain(input_ids=input_ids).logits
    save_file({"input_ids": input_ids.to(torch.int64), "logits": logits.contiguous(),
               "logits_merged": logits_merged.contiguous()}, OUT / "reference.safetensors")
    (OUT / "greedy.json").write_text(json.dumps({"prompt_ids": ids, "generated_ids": ids_out,
                                                 "min_margin": min(margins)}, indent=1) + "\n")
    print("peft", peft.__version__, "lora keys", len(state) - 2)
    print("unmerged vs merged logits max abs diff", float((logits - logits_merged).abs().max()))
    print("LoRA moves the logits by", float((logits - logits_base).abs().max()))
    print("greedy", ids_out, "min margin", min(margins))


def vision_112():
    # model.safetensors keeps LAVIS's separate q/v biases, which transformers 5 no longer reads:
    # its fused-bias twin loads without a missing tensor.
    model = Blip2Model(Blip2Config.from_pretrained(FIX / "blip2")).eval()
    state = load_file(FIX / "blip2" / "model_fused_qkv_bias.safetensors")
    vision = {k[len("vision_model."):]: v for k, v in state.items() if k.startswith("vision_model.")}
    model.vision_model.load_state_dict(vision, strict=True)
    vm = model.vision_model
    g = torch.Generator().manual_seed(112)
    pixel_values = torch.randn(1, 3, 112, 112, generator=g)
    with torch.no_grad():
        emb = vm.embeddings(pixel_values, interpolate_pos_encoding=True)
        pre = vm.encoder(inputs_embeds=emb).last_hidden_state
    assert pre.shape == (1, 1 + 8 * 8, 32), pre.shape
    save_file({"pixel_values": pixel_values.contiguous(), "vision_pre_norm": pre.contiguous()},
              OUT / "vision-112.safetensors")
    print("EVA at 112 px:", tuple(pre.shape))


if __name__ == "__main__":
    main()
    vision_112()
