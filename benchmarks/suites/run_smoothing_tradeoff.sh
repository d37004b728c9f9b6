#!/usr/bin/env bash
# The smoothing trade-off (benchmarks/studies/smoothing_tradeoff.md): twelve ReST-KV settings
# (temporal ema/mean/last x pooling adaptive/avgpool/maxpool/none), as run for the committed
# results (benchmarks/results/smoothing/).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
RESTKV=${RESTKV:-.venv/bin/restkv}
OUT=${OUT:-runs/smoothing}
SETTINGS=$($PY -c "import sys; sys.path.insert(0, 'benchmarks/studies'); import smoothing_tradeoff as s; print(','.join(s.SETTINGS))")
mkdir -p "$OUT"
$PY benchmarks/studies/smoothing_tradeoff.py latency --lengths 4096,8192,32768 --budget 512 --out "$OUT/latency.json"
$RESTKV eval fidelity --methods "full,$SETTINGS" --budgets 256 --length 4096 --samples 2 --out "$OUT/fidelity"
$RESTKV eval ruler-handwritten --methods "full,$SETTINGS" --budgets 128 --length 1024 --samples 2 --out "$OUT/ruler"
# about 4, 12 and 25 minutes per setting at 32K, 128K and 256K on this machine
$PY benchmarks/studies/smoothing_tradeoff.py niah --lengths 32768,131072,262144 --budget 512 \
  --settings "restkv[temporal=ema;pooling=adaptive],restkv[temporal=ema;pooling=none]" --out "$OUT/niah.jsonl"
# the 8K check of what eviction keeps when the question is (one pass) or is not (chunked) in the window
check() { $PY benchmarks/studies/smoothing_tradeoff.py niah-one "$@" | tail -1 >> "$OUT/niah_8k_check.jsonl"; }
for chunk in 0 1024; do
  for setting in "restkv[temporal=ema;pooling=adaptive]" "restkv[kernel_size=15;window_size=auto]"; do
    check "$setting" 8192 --chunk-size $chunk --depth 0.5
  done
done
check "restkv[temporal=ema;pooling=adaptive]" 8192 --chunk-size 1024 --depth 0.95
check restkv 8192 --budget 9000 --chunk-size 0 --depth 0.5  # nothing evicted
$PY benchmarks/studies/smoothing_tradeoff.py report --runs "$OUT" --out benchmarks/results/smoothing
# the raw rows beside the report
cp "$OUT/latency.json" "$OUT/niah.jsonl" "$OUT/niah_8k_check.jsonl" benchmarks/results/smoothing/
for run in fidelity ruler; do
  $RESTKV report "$OUT/$run" >/dev/null
  mkdir -p "benchmarks/results/smoothing/$run"
  cp "$OUT/$run"/report.md "$OUT/$run"/*.png "$OUT/$run"/results.sqlite "$OUT/$run"/runs.jsonl "benchmarks/results/smoothing/$run/"
done
