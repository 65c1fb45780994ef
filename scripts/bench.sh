#!/usr/bin/env bash
# Benchmarks of minigpt4-rs against the tools a user would pick instead, on the `tiny-dinov2`
# model (DINOv2-S + merge-4 + projection + SmolLM2-135M GGUF; the default until 2026-12, whose
# peers are set up here; the EfficientNet-Lite0 default has no peer row yet), each row measured in this run next
# to its peer, with the same thread count on both sides:
#
#   llm     prefill and decode tokens/s on the same GGUF        vs llama.cpp (llama-cpp-python)
#   vision  DINOv2-S image encode, 224 px, on the same ONNX     vs onnxruntime
#   e2e     `describe`: time to first token, 64 new tokens, peak RSS, RSS / model size
#           (peer: the same model assembled from onnxruntime + numpy + llama.cpp)
#   train   one stage-2 step, batch 4 × ~130 positions          vs PyTorch (transformers) on CPU
#
# Writes BENCHMARKS.md, benchmarks.png and benchmarks.json (raw measurements) into --out
# (default: the repository root). Not part of `cargo test` or CI. See scripts/README.md.
#
#   scripts/bench.sh [--quick] [--reps N] [--warmup N] [--threads N] [--parts llm,vision,e2e,train]
#                    [--projection FILE] [--out DIR] [--setup-only]
#   scripts/bench.sh --full-size [--threads N] [--out DIR]
#
# --full-size measures MiniGPT-4 at its published 7B shapes with random weights (EVA ViT-g/14,
# Q-Former, Linear 768→4096, LLaMA-7B), generated once by scripts/make_random_llama.py and
# scripts/make_random_eva.py into $MINIGPT4_FULL_SIZE_DIR (default $MINIGPT4_HOME/full-size,
# ~20 GB; never committed, never in CI): `minigpt4 convert` at q8_0 and q4_k; `describe` load time,
# peak RSS, time to first token and total (64 tokens) from the originals and from the converted
# folder; EVA + Q-Former image encode vs PyTorch; prefill 128 / decode 64 vs llama.cpp on the GGUF
# `convert` wrote. It replaces the "Full size" section of BENCHMARKS.md (raw JSON in the run dir).
#
# The peers live in a venv under $MINIGPT4_HOME/bench-venv (override: MINIGPT4_BENCH_VENV),
# created on the first run (pip builds llama.cpp from source: minutes) and reused afterwards.
# MINIGPT4_BIN=path skips `cargo build` and uses that binary.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HERE="$ROOT/scripts/bench"
HOME_MG="${MINIGPT4_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/minigpt4}"
VENV="${MINIGPT4_BENCH_VENV:-$HOME_MG/bench-venv}"
TORCH_VERSION=2.15.0

REPS=5
WARMUP=1
TRAIN_REPS=3
THREADS=2
PARTS=llm,vision,e2e,train
OUT="$ROOT"
PROJECTION=""
SETUP_ONLY=0
QUICK=0
FULL_SIZE=0

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; REPS=2; WARMUP=1; TRAIN_REPS=1 ;;
        --reps) REPS="$2"; TRAIN_REPS="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --threads) THREADS="$2"; shift ;;
        --parts) PARTS="$2"; shift ;;
        --projection) PROJECTION="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --setup-only) SETUP_ONLY=1 ;;
        --full-size) FULL_SIZE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '\n== %s\n' "$*" >&2; }

# ---------------------------------------------------------------- the peers' venv
setup_venv() {
    local stamp="$VENV/.minigpt4-bench" want
    want="$(cat "$HERE/requirements.txt"; echo "torch==$TORCH_VERSION")"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    say "setting up the peers' venv in $VENV (first run: pip builds llama.cpp from source, several minutes)"
    python3 -m venv "$VENV"
    local pip=("$VENV/bin/python" -m pip)
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        # The CPU wheel is small; PyPI's Linux wheel is the CUDA build, which runs on the CPU but
        # needs its CUDA runtime wheels (several GB) to import.
        if ! "${pip[@]}" install --no-deps --timeout 20 --retries 0 "torch==$TORCH_VERSION" \
                --index-url https://download.pytorch.org/whl/cpu; then
            echo "(the CPU wheel index is unreachable; installing PyPI's torch with its runtime wheels)" >&2
            "${pip[@]}" install "torch==$TORCH_VERSION"
        fi
    fi
    "${pip[@]}" install filelock typing-extensions sympy networkx jinja2 fsspec
    # llama.cpp is built for this machine's CPU (GGML_NATIVE), as a user's `pip install` does;
    # without the multimodal (mtmd/llava) library, which nothing here uses (a third less to build).
    CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "${pip[@]}" install -r "$HERE/requirements.txt"
    "$VENV/bin/python" -c "import torch, onnxruntime, llama_cpp, transformers, matplotlib"
    printf '%s' "$want" > "$stamp"
}

setup_venv
PY="$VENV/bin/python"
if [[ $SETUP_ONLY == 1 ]]; then
    echo "venv ready: $VENV" >&2
    exit 0
fi

# ---------------------------------------------------------------- our binary and the model
if [[ -n "${MINIGPT4_BIN:-}" ]]; then
    BIN="$MINIGPT4_BIN"
else
    say "building minigpt4 (--release)"
    (cd "$ROOT" && cargo build --release -p minigpt4 >&2)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/minigpt4"
fi
"$BIN" fetch >&2
IMAGE="$ROOT/crates/minigpt4-core/tests/fixtures/images/cat.jpg"

RUN="$HOME_MG/cache/bench/run-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"

# ---------------------------------------------------------------- --full-size
full_size() {
    local big="${MINIGPT4_FULL_SIZE_DIR:-$HOME_MG/full-size}"
    local orig="$big/minigpt4-7b/model.toml"
    if [[ ! -f "$big/llama-7b/config.json" ]]; then
        say "generating a random LLaMA-7B (13.5 GB of f16 safetensors) in $big/llama-7b"
        python3 "$ROOT/scripts/make_random_llama.py" --shape llama-7b --out "$big/llama-7b" >&2
    fi
    if [[ ! -f "$orig" ]]; then
        say "generating a random EVA ViT-g + Q-Former + projection in $big/minigpt4-7b"
        python3 "$ROOT/scripts/make_random_eva.py" --out "$big/minigpt4-7b" --llm "$big/llama-7b" >&2
    fi
    local q timed=(/usr/bin/time -f '%e %M')
    for q in q8_0 q4_k; do
        say "full size, $q: convert"
        "${timed[@]}" -o "$RUN/convert-$q.time" "$BIN" convert --model "$orig" --quantize "$q" \
            --out "$big/converted-$q" >&2
        say "full size, $q: describe from the originals (quantized at load)"
        "$BIN" bench --json --parts e2e --model "$orig" --quantize "$q" --threads "$THREADS" --warmup 0 --reps 1 \
            --image "$IMAGE" > "$RUN/e2e-orig-$q.json"
        say "full size, $q: describe from the converted folder"
        "$BIN" bench --json --parts e2e --model "$big/converted-$q/model.toml" --threads "$THREADS" --warmup 0 \
            --reps 1 --image "$IMAGE" > "$RUN/e2e-conv-$q.json"
        say "full size, $q: LLM prefill 128 / decode 64, ours then llama.cpp on the same GGUF"
        "$BIN" bench --json --parts llm --model "$big/converted-$q/model.toml" --threads "$THREADS" --warmup 1 \
            --reps 2 --prefill 128 --decode-prompt 128 --decode-tokens 64 > "$RUN/ours-llm-$q.json"
        "$PY" "$HERE/peers.py" llm --ours "$RUN/ours-llm-$q.json" --threads "$THREADS" --warmup 1 --reps 2 \
            > "$RUN/peer-llm-$q.json"
    done
    say "full size: EVA ViT-g + Q-Former image encode, ours then PyTorch"
    "$BIN" bench --json --parts vision --model "$big/converted-q8_0/model.toml" --threads "$THREADS" --warmup 1 \
        --reps 3 --image "$IMAGE" > "$RUN/ours-vision.json"
    "$PY" "$HERE/peers.py" vision-eva --ours "$RUN/ours-vision.json" --threads "$THREADS" --warmup 1 --reps 3 \
        > "$RUN/peer-vision.json"
    "$PY" "$HERE/report.py" --full-size "$RUN" "$OUT"
    echo "raw results: $RUN" >&2
}
if [[ $FULL_SIZE == 1 ]]; then
    full_size
    exit 0
fi
LOAD_START="$(cut -d' ' -f1 /proc/loadavg)"
"$PY" "$HERE/peers.py" prepare >/dev/null   # the ONNX backbone, cut once and cached

OURS_FLAGS=(--model tiny-dinov2 --threads "$THREADS" --warmup "$WARMUP" --reps "$REPS" --train-reps "$TRAIN_REPS" --image "$IMAGE")
[[ -n "$PROJECTION" ]] && OURS_FLAGS+=(--projection "$PROJECTION")
PEER_FLAGS=(--threads "$THREADS" --warmup "$WARMUP")
COMMANDS=()

# Each part: ours, then the peer right after, each in a process of its own (so every peak RSS is
# that part's own). The peer reads ours' output for the identical inputs (token ids, files, batch).
IFS=',' read -r -a PART_LIST <<< "$PARTS"
for part in "${PART_LIST[@]}"; do
    reps="$REPS"
    [[ $part == train ]] && reps="$TRAIN_REPS"
    say "$part: minigpt4"
    cmd=(minigpt4 bench --json --parts "$part" "${OURS_FLAGS[@]}")
    "$BIN" "${cmd[@]:1}" > "$RUN/ours-$part.json"
    COMMANDS+=("${cmd[*]/#$ROOT\//}")
    say "$part: peer"
    cmd=(python scripts/bench/peers.py "$part" --ours "ours-$part.json" "${PEER_FLAGS[@]}" --reps "$reps")
    "$PY" "$HERE/peers.py" "$part" --ours "$RUN/ours-$part.json" "${PEER_FLAGS[@]}" --reps "$reps" > "$RUN/peer-$part.json"
    COMMANDS+=("${cmd[*]}")
done
LOAD_END="$(cut -d' ' -f1 /proc/loadavg)"

# ---------------------------------------------------------------- machine, versions, report
ARGS_LINE="scripts/bench.sh"
[[ $QUICK == 1 ]] && ARGS_LINE+=" --quick"
MG_VERSION="$("$BIN" --version | awk '{print $2}')"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
# (The files this script writes do not count as changes.)
git -C "$ROOT" diff --quiet HEAD -- . ':!BENCHMARKS.md' ':!benchmarks.*' ':!README.md' 2>/dev/null || COMMIT+="+changes"
RUSTC="$(rustc --version 2>/dev/null || echo 'rustc ?')"
export RUN THREADS REPS WARMUP TRAIN_REPS MG_VERSION COMMIT RUSTC LOAD_START LOAD_END ARGS_LINE
export BENCH_NOTE="${MINIGPT4_BENCH_NOTE:-}"
printf '%s\n' "${COMMANDS[@]}" > "$RUN/commands.txt"
"$PY" - <<'PY'
import json, os, platform, sys
from pathlib import Path
import importlib.metadata as md

def cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"

def ram_gb():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0

def ver(pkg):
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None

run = Path(os.environ["RUN"])
info = ""
p = run / "peer-llm.json"
if p.exists():
    info = json.loads(p.read_text()).get("system_info", "")
versions = {"minigpt4": os.environ["MG_VERSION"], "commit": os.environ["COMMIT"], "rustc": os.environ["RUSTC"],
            "llama_cpp_python": ver("llama-cpp-python"), "onnxruntime": ver("onnxruntime"), "torch": ver("torch"),
            "transformers": ver("transformers"), "python": platform.python_version(),
            "llama_cpp_system_info": info}
commands = [os.environ["ARGS_LINE"] + "   # runs, per part:"] + ["  " + c for c in (run / "commands.txt").read_text().splitlines()]
def cpu_features():
    """The SIMD features our kernels and llama.cpp dispatch on, as /proc/cpuinfo lists them."""
    want = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"]
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return [f for f in want if f in flags]

doc = {"machine": {"cpu": cpu(), "logical_cpus": os.cpu_count(), "ram_gb": ram_gb(),
                   "os": f"{platform.system()} {platform.release()}", "cpu_features": cpu_features(),
                   "minigpt4_cpu": os.environ.get("MINIGPT4_CPU", "")},
       "versions": {k: v for k, v in versions.items() if v},
       "threads": int(os.environ["THREADS"]), "reps": int(os.environ["REPS"]), "warmup": int(os.environ["WARMUP"]),
       "train_reps": int(os.environ["TRAIN_REPS"]), "loadavg_start": os.environ["LOAD_START"],
       "loadavg_end": os.environ["LOAD_END"], "note": os.environ.get("BENCH_NOTE", ""), "commands": commands}
(run / "run.json").write_text(json.dumps(doc, indent=1))
PY
"$PY" "$HERE/report.py" "$RUN" "$OUT"
echo "raw results: $RUN" >&2
