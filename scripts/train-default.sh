#!/usr/bin/env bash
# Trains the `tiny` default's projection from the registry data (DESIGN §4.1), on CPU, in under an
# hour on 2 cores, then evaluates it on the held-out stamps. The result shipped in
# assets/tiny/projection.safetensors came from this script.
#
#   scripts/train-default.sh [WORK_DIR]      (default: ./train-default)
#
# Uses the `minigpt4` binary on PATH, or MINIGPT4=/path/to/minigpt4. Every step can be re-run: data
# is fetched once, features are cached, and an interrupted training run resumes from its checkpoint.
set -euo pipefail

WORK=$(realpath -m "${1:-train-default}")
BIN=${MINIGPT4:-minigpt4}
SEED=${SEED:-42}
# Stage 1: ~1,800 captioned images seen about once; stage 2: instruction tuning on human-written
# stamp descriptions, the photos' descriptions and a few shape Q&As.
STAGE1_STEPS=${STAGE1_STEPS:-400}
STAGE2_STEPS=${STAGE2_STEPS:-80}
BATCH=${BATCH:-4}

mkdir -p "$WORK"
start=$(date +%s)
say() { printf '[%4ds] %s\n' $(($(date +%s) - start)) "$*"; }

say "fetching data packages"
"$BIN" data fetch tuxpaint openclipart easy-vqa fluent-emoji-3d gcompris
for s in tuxpaint openclipart easy-vqa fluent-emoji-3d gcompris; do
  [ -s "$WORK/data/$s/manifest.jsonl" ] || "$BIN" data import "$s" --out "$WORK/data/$s"
done

# Deterministic subsets, written next to each manifest so relative image paths still resolve.
# Skin-tone variants repeat an emoji five times; every 6th openclipart drawing and every 40th shape
# keep those large, repetitive sources from crowding out the human-written stamp descriptions.
pick() { # SOURCE NAME AWK-CONDITION
  awk "$3" "$WORK/data/$1/manifest.jsonl" > "$WORK/data/$1/$2.jsonl"
}
pick tuxpaint recipe '1'
pick gcompris recipe '1'
pick openclipart recipe 'NR % 6 == 0'
pick fluent-emoji-3d recipe '!/skin tone/ && NR % 3 == 0'
pick easy-vqa recipe 'NR % 40 == 0'
STAGE1=()
STAGE2=()
for s in tuxpaint gcompris openclipart fluent-emoji-3d easy-vqa; do STAGE1+=("$WORK/data/$s/recipe.jsonl"); done
for s in tuxpaint gcompris easy-vqa; do STAGE2+=("$WORK/data/$s/recipe.jsonl"); done
for m in "${STAGE1[@]}"; do printf '  %-60s %5d records\n' "$m" "$(wc -l < "$m")"; done

say "stage 1: alignment on image-caption pairs"
"$BIN" train --stage 1 --model tiny --data "${STAGE1[@]}" --out "$WORK/stage1" \
  --steps "$STAGE1_STEPS" --batch "$BATCH" --grad-accum 1 \
  --lr 1e-3 --min-lr 1e-4 --warmup 40 --seed "$SEED" --save-every 50 --resume

say "stage 2: instruction tuning"
"$BIN" train --stage 2 --model tiny --data "${STAGE2[@]}" --out "$WORK/stage2" \
  --init "$WORK/stage1/projection.safetensors" \
  --steps "$STAGE2_STEPS" --batch "$BATCH" --grad-accum 1 \
  --lr 3e-4 --min-lr 3e-5 --warmup 10 --seed "$SEED" --save-every 20 --resume

say "trained: $WORK/stage2/projection.safetensors"

say "evaluating on the held-out stamps: untrained, stage 1, stage 1 + 2"
EVAL=("$WORK/data/tuxpaint/manifest.jsonl")
"$BIN" eval --data "${EVAL[@]}" --out "$WORK/eval" --label random --random-projection "$SEED"
"$BIN" eval --data "${EVAL[@]}" --out "$WORK/eval" --label "stage 1" --projection "$WORK/stage1/projection.safetensors"
"$BIN" eval --data "${EVAL[@]}" --out "$WORK/eval" --label "stage 1+2" --projection "$WORK/stage2/projection.safetensors"
say "done: $WORK/eval/eval.md"
