#!/usr/bin/env bash
# Quality against bytes (issue: quantized caches): eviction alone, quantization alone, and both,
# on the same pass-key prompts in one store. Wall times go to
# benchmarks/results/quantization/wall_times.txt, the table to table.md beside it.
set -euo pipefail
cd "$(dirname "$0")/../.."
RESTKV=${RESTKV:-.venv/bin/restkv}
OUT=${OUT:-runs/quantization}
ARGS=(--methods full,restkv,snapkv --budgets 128,256 --length 1024 --samples "${SAMPLES:-10}" --out "$OUT")
log=benchmarks/results/quantization/wall_times.txt
mkdir -p "$(dirname "$log")"
run() {
  local start=$SECONDS
  "$@" > /dev/null 2>&1
  echo "$* # wall $((SECONDS - start)) s" >> "$log"
}
run $RESTKV eval passkey "${ARGS[@]}"
for quant in ${QUANTS:-hqq:8 hqq:4 hqq:2 quanto:4 quanto:2}; do
  run $RESTKV eval passkey "${ARGS[@]}" --kv-quant "$quant"
done
.venv/bin/python benchmarks/studies/quantization_table.py "$OUT" > benchmarks/results/quantization/table.md
