#!/usr/bin/env bash
# The long-context smoothing study (benchmarks/studies/smoothing_tradeoff.md, "Beyond 200K tokens"):
# two lanes of one-thread runs on a 2-core machine. Rows go to benchmarks/results/long-context/rows.jsonl;
# rerunning skips the runs already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/long-context
QUEUE=${QUEUE:-/tmp/restkv-long-context-queue.txt}
COMMON=(--out "$OUT" --dtype bfloat16 --threads 1 --budget 1024 --chunk-size 4096)
settings() {  # the 12 smoothing settings of one temporal rule, kernel 15 for the pooled ones
  for pooling in adaptive avgpool maxpool none; do printf 'restkv[temporal=%s;pooling=%s;kernel_size=15],' "$1" "$pooling"; done
}
lane() {  # one lane: every task for the given methods at the given lengths and prompts
  local lengths=$1 methods=$2 first=$3 count=$4
  for task in niah bbh; do
    $PY benchmarks/studies/long_context.py run "${COMMON[@]}" --task "$task" --lengths "$lengths" --methods "$methods" \
      --first-needle "$first" --needles "$count"
  done
}
worker() {  # take jobs ("task length method prompt") from a shared queue file until it is empty
  local queue=$1 job
  while true; do
    job=$(flock "$queue.lock" sh -c 'head -n 1 "$0" && sed -i 1d "$0"' "$queue")
    [ -z "$job" ] && return 0
    read -r task length method prompt <<<"$job"
    $PY benchmarks/studies/long_context.py run "${COMMON[@]}" --task "$task" --lengths "$length" --methods "$method" \
      --first-needle "$prompt" --needles 1
  done
}
long_jobs() {  # 256K on prompts the 32K ranking did not see (needles and BBH prompts 3-5), prompt by prompt
  for prompt in 3 4 5; do
    for task in niah bbh; do
      for method in "$@"; do echo "$task 262144 $method $prompt"; done
    done
  done
}
case "${1:-}" in
  32k-a) lane 32768 "$(settings ema)$(settings mean)snapkv[kernel_size=15],streamingllm" 0 3 ;;
  32k-b) lane 32768 "$(settings last)restkv,tova,snapkv,full" 0 3 ;;
  # the full cache at 4K on the 256K needles (the reference the found rate is set against)
  4k-full) $PY benchmarks/studies/long_context.py run "${COMMON[@]}" --task niah --lengths 4096 --methods full --first-needle 3 --needles 3 ;;
  # queue the 256K jobs for the given methods (the paper setting, then the two best at 32K), then run two workers
  256k-queue) shift; long_jobs "$@" >> "$QUEUE" ;;
  worker) worker "$QUEUE" ;;
  *) echo "usage: $0 32k-a|32k-b|4k-full|256k-queue METHOD...|worker" >&2; exit 2 ;;
esac
