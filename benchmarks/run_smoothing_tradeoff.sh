#!/usr/bin/env bash
# The smoothing trade-off (benchmarks/smoothing_tradeoff.md): twelve ReST-KV settings
# (temporal ema/mean/last x pooling adaptive/avgpool/maxpool/none), as run for the committed
# results (benchmarks/results/smoothing/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RESTKV=${RESTKV:-.venv/bin/restkv}
OUT=${OUT:-runs/smoothing}
SETTINGS=$($PY -c "import sys; sys.path.insert(0, 'benchmarks'); import smoothing_tradeoff as s; print(','.join(s.SETTINGS))")
mkdir -p "$OUT"
$PY benchmarks/smoothing_tradeoff.py latency --lengths 4096,8192,32768 --budget 512 --out "$OUT/latency.json"
$RESTKV eval fidelity --methods "full,$SETTINGS" --budgets 256 --length 4096 --samples 2 --out "$OUT/fidelity"
$RESTKV eval ruler --methods "full,$SETTINGS" --budgets 128 --length 1024 --samples 2 --out "$OUT/ruler"
$PY benchmarks/smoothing_tradeoff.py niah --lengths 32768 --budget 512 \
  --settings "restkv[temporal=ema;pooling=adaptive],restkv[temporal=ema;pooling=none]" --out "$OUT/niah.jsonl"
# Not run yet (about 10 and 30 minutes per setting on 2 cores):
# $PY benchmarks/smoothing_tradeoff.py niah --lengths 131072,262144 --budget 512 \
#   --settings "restkv[temporal=ema;pooling=adaptive],restkv[temporal=ema;pooling=none]" --out "$OUT/niah.jsonl"
$PY benchmarks/smoothing_tradeoff.py report --runs "$OUT" --out benchmarks/results/smoothing
