#!/usr/bin/env bash
# The long-context smoothing study (benchmarks/smoothing_tradeoff.md, "Beyond 200K tokens"):
# two lanes of one-thread runs on a 2-core machine. Rows go to benchmarks/results/long-context/rows.jsonl;
# rerunning skips the runs already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/long-context
COMMON=(--out "$OUT" --dtype bfloat16 --threads 1 --budget 1024 --chunk-size 4096)
settings() {  # the 12 smoothing settings of one temporal rule, kernel 15 for the pooled ones
  for pooling in adaptive avgpool maxpool none; do printf 'restkv[temporal=%s;pooling=%s;kernel_size=15],' "$1" "$pooling"; done
}
lane() {  # one lane: every task for the given methods at the given lengths and prompts
  local lengths=$1 methods=$2 first=$3 count=$4
  for task in niah bbh; do
    $PY benchmarks/long_context.py run "${COMMON[@]}" --task "$task" --lengths "$lengths" --methods "$methods" \
      --first-needle "$first" --needles "$count"
  done
}
case "${1:-}" in
  32k-a) lane 32768 "$(settings ema)$(settings mean)snapkv[kernel_size=15],streamingllm" 0 3 ;;
  32k-b) lane 32768 "$(settings last)restkv,tova,snapkv,full" 0 3 ;;
  *) echo "usage: $0 32k-a|32k-b|256k-a|256k-b" >&2; exit 2 ;;
esac
