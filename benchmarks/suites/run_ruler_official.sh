#!/usr/bin/env bash
# RULER from RULER's own generators (nvidia-long-context-eval), kvpress's leaderboard protocol:
# 4K tokens, compression ratios 0.5 and 0.75, on both embedded models (one lane each, one
# thread each); then the official and the hand-written prompts side by side at 1K on SmolLM2, on
# the 11 synthetic tasks (RULER's QA generators cannot build prompts under 2K tokens).
# Wall times go to benchmarks/results/ruler-official-4k/wall_times.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
RESTKV=${RESTKV:-.venv/bin/restkv}
OUT=${OUT:-runs}
SAMPLES=${SAMPLES:-3}
ARGS=(--methods full,restkv,snapkv,streamingllm --ratios 0.5,0.75)
log=benchmarks/results/ruler-official-4k/wall_times.txt
mkdir -p "$(dirname "$log")"
run() {
  local start=$SECONDS
  "$@" > /dev/null 2>&1
  echo "$* # wall $((SECONDS - start)) s" >> "$log"
}
official_4k() {  # $1: model
  run env OMP_NUM_THREADS=1 $RESTKV eval ruler --model "$1" "${ARGS[@]}" --length 4096 --samples "$SAMPLES" \
    --out "$OUT/ruler-official-4k/$1"
}
SYNTHETIC=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery,vt,cwe,fwe
side_by_side() {  # $1: ruler or ruler-handwritten
  run env OMP_NUM_THREADS=1 $RESTKV eval "$1" --tasks $SYNTHETIC "${ARGS[@]}" --length 1024 --samples "$SAMPLES" \
    --out "$OUT/ruler-official-vs-handwritten/$1"
}
if [ "${STAGE:-all}" != "1k" ]; then official_4k smollm2-135m-instruct & official_4k gemma3-270m & wait; fi
if [ "${STAGE:-all}" != "4k" ]; then side_by_side ruler & side_by_side ruler-handwritten & wait; fi
