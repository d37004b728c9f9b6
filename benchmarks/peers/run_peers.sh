#!/usr/bin/env bash
# Side-by-side runs of restkv and NVIDIA kvpress on the same prompts, budgets and decoding loop:
# the pass key task (470 tokens) and RULER's synthetic tasks (512 tokens), at budgets of about a
# quarter and a half of the prompt.
# KVPRESS_PY: a Python with kvpress 0.5.x (e.g. python3 -m venv /tmp/kvpress-venv &&
# /tmp/kvpress-venv/bin/pip install torch==2.13.0 kvpress==0.5.5).
# Usage: benchmarks/peers/run_peers.sh [passkey|ruler ...]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
RESTKV=${RESTKV:-.venv/bin/restkv}
KVPRESS_PY=${KVPRESS_PY:-/tmp/kvpress-venv/bin/python}
MODEL_DIR=${MODEL_DIR:-${RESTKV_HOME:-$HOME/.cache/restkv}/models/smollm2-135m-instruct}
OURS="full,restkv,restkv[window_size=auto],restkv[window_size=auto;kernel_size=15],snapkv[window_size=auto;kernel_size=15],restkv[profile=benchmarks/results/profiles/smollm2-135m-instruct-b128.json],snapkv,snapkv[window_size=auto],pyramidkv,h2o,tova,streamingllm,knorm"

peer_run() {  # task length samples budgets out
  local task=$1 length=$2 samples=$3 budgets=$4 out=$5
  mkdir -p "$out"
  $PY benchmarks/peers/export_prompts.py --task "$task" --length "$length" --samples "$samples" --out "$out/prompts.jsonl"
  $KVPRESS_PY benchmarks/peers/run_kvpress.py "$out/prompts.jsonl" --model-dir "$MODEL_DIR" --budgets "$budgets" --out "$out/kvpress_rows.jsonl"
  $PY benchmarks/peers/import_rows.py "$out/kvpress_rows.jsonl" --task "$task" --length "$length" --samples "$samples" --out "$out"
  $RESTKV eval "$task" --length "$length" --samples "$samples" --budgets "$budgets" --out "$out" --methods "$OURS"
  $RESTKV report "$out"
}

for what in "${@:-passkey ruler}"; do
  for w in $what; do
    case $w in
      passkey) peer_run passkey 470 20 128,256 runs/peers-passkey ;;
      ruler) peer_run ruler-handwritten 512 5 128,256 runs/peers-ruler-512 ;;
      *) echo "unknown run $w (passkey or ruler)" >&2; exit 2 ;;
    esac
  done
done
