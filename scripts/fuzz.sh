#!/usr/bin/env bash
# Long fuzz runs of every parser that takes a user's file or request (outside CI; CI runs a few
# seconds of each in `cargo test -p minigpt4-fuzz`). Each target gets INPUTS inputs (default
# 10^6) in chunks; a chunk runs under a memory cap (an allocation bomb aborts it) and a time
# limit (a hang stops it), so a finding is reported with the chunk it happened in and replayed
# with `target/release/minigpt4-fuzz TARGET --seed S --replay INDEX`.
#
#   scripts/fuzz.sh                     # all targets, 10^6 inputs each
#   INPUTS=100000 scripts/fuzz.sh pth   # one target, fewer inputs
#
# Prints a Markdown table (also written to target/fuzz-report.md). Exit status 1 on any finding.
set -uo pipefail
cd "$(dirname "$0")/.."

INPUTS=${INPUTS:-1000000}
SEED=${SEED:-1}
CHUNK=${CHUNK:-100000}
MEM_KB=${MEM_KB:-4000000}
CHUNK_TIMEOUT=${CHUNK_TIMEOUT:-900}
SCRATCH=${SCRATCH:-$( [ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}" )/minigpt4-fuzz}
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(gguf safetensors pth image request)

cargo build --release -p minigpt4-fuzz >&2 || exit 2
bin=target/release/minigpt4-fuzz
report=target/fuzz-report.md
failed=0
{
  echo "| target | inputs | accepted | refused | crashes, hangs, aborts | inputs/s | slowest input |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
} > "$report"

for t in "${TARGETS[@]}"; do
  start=0 accepted=0 refused=0 findings=0 secs=0 slowest=0
  while [ "$start" -lt "$INPUTS" ]; do
    n=$(( INPUTS - start < CHUNK ? INPUTS - start : CHUNK ))
    t0=$(date +%s.%N)
    out=$( (ulimit -v "$MEM_KB"; timeout "$CHUNK_TIMEOUT" "$bin" "$t" --inputs "$n" --start "$start" --seed "$SEED" --scratch "$SCRATCH/$t") 2>/dev/null )
    rc=$?
    secs=$(awk -v s="$secs" -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print s + b - a }')
    line=$(echo "$out" | grep "^$t: " | tail -1)
    case $rc in
      0|1)
        accepted=$(( accepted + $(echo "$line" | sed -E 's/.* ([0-9]+) accepted.*/\1/') ))
        refused=$(( refused + $(echo "$line" | sed -E 's/.* ([0-9]+) refused.*/\1/') ))
        ms=$(echo "$line" | sed -E 's/.*took ([0-9.]+)(ms|µs|s)$/\1 \2/' | awk '{ if ($2=="s") print $1*1000; else if ($2=="µs") print $1/1000; else print $1 }')
        slowest=$(echo "$slowest $ms" | awk '{ print ($2 > $1) ? $2 : $1 }')
        if [ $rc -eq 1 ]; then
          c=$(echo "$out" | grep -c '^crash:'); findings=$(( findings + c )); failed=1
          echo "$out" | grep '^crash:' >&2
        fi ;;
      124) findings=$(( findings + 1 )); failed=1; echo "$t: inputs $start..$((start + n)) hung past ${CHUNK_TIMEOUT}s" >&2 ;;
      *) findings=$(( findings + 1 )); failed=1; echo "$t: inputs $start..$((start + n)) aborted (status $rc: stack overflow, out of memory under ulimit -v $MEM_KB KB, or a signal)" >&2 ;;
    esac
    start=$(( start + n ))
    echo "$t: $start / $INPUTS inputs, $findings findings" >&2
  done
  rate=$(awk -v n="$INPUTS" -v s="$secs" 'BEGIN { printf "%d", n / s }')
  echo "| $t | $INPUTS | $accepted | $refused | $findings | $rate | ${slowest} ms |" >> "$report"
done
echo
echo "Seed $SEED, $(date -u +%Y-%m-%d), $(nproc) cores, memory cap $((MEM_KB / 1000)) MB per chunk:"
cat "$report"
exit $failed
