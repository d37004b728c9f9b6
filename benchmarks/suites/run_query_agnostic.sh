#!/usr/bin/env bash
# Query-aware against query-agnostic (issue: compress once, ask many): the same prompts, methods
# and budgets, once with the question inside what is compressed and once compressed without it.
# The two modes run side by side, one thread each; wall times go to
# benchmarks/results/query-agnostic/wall_times.txt, the table to table.md beside it.
set -euo pipefail
cd "$(dirname "$0")/../.."
RESTKV=${RESTKV:-.venv/bin/restkv}
OUT=${OUT:-runs/query-agnostic}
SAMPLES=${SAMPLES:-3}
ARGS=(--methods full,restkv,snapkv,tova,streamingllm --budgets 128,512)
log=benchmarks/results/query-agnostic/wall_times.txt
mkdir -p "$(dirname "$log")"
run() {
  local start=$SECONDS
  "$@" > /dev/null 2>&1
  echo "$* # wall $((SECONDS - start)) s" >> "$log"
}
lane() {  # $1: aware or agnostic; the rest: extra flags
  local mode=$1; shift
  for length in 1024 4096; do
    run env OMP_NUM_THREADS=1 $RESTKV eval passkey "${ARGS[@]}" --length $length --samples $((SAMPLES * 2)) --out "$OUT/$mode" "$@"
    run env OMP_NUM_THREADS=1 $RESTKV eval ruler-handwritten "${ARGS[@]}" --length $length --samples "$SAMPLES" --out "$OUT/$mode" "$@"
  done
}
lane aware & lane agnostic --query-agnostic & wait
.venv/bin/python benchmarks/studies/query_agnostic_table.py "$OUT/aware" "$OUT/agnostic" > benchmarks/results/query-agnostic/table.md
