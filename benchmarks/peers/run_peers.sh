#!/usr/bin/env bash
# Side-by-side run of restkv and NVIDIA kvpress on the same prompts, budgets and decoding loop.
# KVPRESS_PY: a Python with kvpress 0.5.x (e.g. python3 -m venv /tmp/kvpress-venv &&
# /tmp/kvpress-venv/bin/pip install torch==2.13.0 kvpress==0.5.5).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
RESTKV=${RESTKV:-.venv/bin/restkv}
KVPRESS_PY=${KVPRESS_PY:-/tmp/kvpress-venv/bin/python}
OUT=${OUT:-runs/peers}
MODEL_DIR=${RESTKV_HOME:-$HOME/.cache/restkv}/models/smollm2-135m-instruct
mkdir -p "$OUT"
$PY benchmarks/peers/export_prompts.py --task passkey --length 470 --samples 20 --out "$OUT/prompts.jsonl"
$KVPRESS_PY benchmarks/peers/run_kvpress.py "$OUT/prompts.jsonl" --model-dir "$MODEL_DIR" --budgets 128,256 --out "$OUT/kvpress_rows.jsonl"
$PY benchmarks/peers/import_rows.py "$OUT/kvpress_rows.jsonl" --task passkey --length 470 --samples 20 --out "$OUT"
$RESTKV eval passkey --length 470 --samples 20 --budgets 128,256 --out "$OUT" \
  --methods "full,restkv,restkv[window_size=auto],restkv[profile=benchmarks/results/profiles/smollm2-135m-instruct-b128.json],snapkv,pyramidkv,h2o,tova,streamingllm,knorm,snapkv[window_size=auto]"
$RESTKV report "$OUT"
