#!/usr/bin/env bash
# OpenVINO GenAI beside restkv on the same prompts (benchmarks/results/openvino-peer/README.md).
#   latency:  pass-key prompts of 1K, 4K and 8K tokens, 32 new tokens each (EOS ignored); one
#             process per engine x setting (so each peak RSS is that setting's own), the processes
#             taking turns: OV fp32 full, ours full, OV fp32 evict128, ours snapkv@128, ours
#             restkv@128, OV int8 full, OV int8 evict128; ROUNDS rounds at 1K and 4K, one at 8K.
#   accuracy: pass key at 1K (PK_SAMPLES samples) and RULER (hand-written) at 1K (RULER_SAMPLES
#             per task), OpenVINO with and without eviction, imported into restkv's store beside
#             `restkv eval` of full, snapkv and restkv at budget 128 (kernel 5 and 15); `restkv report`
#             shows both.
# Usage: benchmarks/peers/openvino/run.sh [latency] [accuracy]   (default: both; setup.sh first)
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
RESTKV=${RESTKV:-.venv/bin/restkv}
OVPY=${OVPY:-benchmarks/peers/openvino/.venv/bin/python}
OUT=${OUT:-runs/openvino-peer}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-2}
LENGTHS=${LENGTHS:-1024 4096 8192}
PK_SAMPLES=${PK_SAMPLES:-10}
RULER_TASKS=${RULER_TASKS:-niah_single_1,niah_single_2,niah_multikey_1,vt}
RULER_SAMPLES=${RULER_SAMPLES:-3}
# ours: the paper's defaults, and the 15-wide pooling kernel that SmolLM2's one-digit-per-token
# numbers need (README: "The pooling kernel matters more than anything else on this model")
METHODS=${METHODS:-full,snapkv,restkv,snapkv[kernel_size=15],restkv[kernel_size=15]}
mkdir -p "$OUT"
# torch: threads sleep instead of spinning while waiting (on this shared 2-core machine a spinning
# OpenMP team made a 2-thread decode 10x slower); OpenVINO uses TBB and is not affected
export OMP_WAIT_POLICY=PASSIVE

ov() { $OVPY benchmarks/peers/openvino/measure.py --threads "$THREADS" "$@"; }
ours() { $PY benchmarks/peers/openvino/ours.py --threads "$THREADS" "$@"; }

latency() {
  local rows="$OUT/latency_t$THREADS.jsonl"
  for length in $LENGTHS; do
    local prompts="$OUT/passkey-$length.jsonl"
    [ -s "$prompts" ] || $PY benchmarks/peers/export_prompts.py --task passkey --length "$length" --samples 1 --out "$prompts"
    local rounds=$ROUNDS
    [ "$length" -gt 4096 ] && rounds=1
    for round in $(seq "$rounds"); do
      local args=(--prompts "$prompts" --max-new-tokens 32 --ignore-eos --out "$rows")
      echo "== $length tokens, round $round: $(uptime)"
      ov "${args[@]}" --settings full --precision fp32
      ours "${args[@]}" --settings full
      ov "${args[@]}" --settings evict128 --precision fp32
      ours "${args[@]}" --settings snapkv@128
      ours "${args[@]}" --settings restkv@128
      ov "${args[@]}" --settings full --precision int8
      ov "${args[@]}" --settings evict128 --precision int8
    done
  done
  echo "== done: $(uptime)"
}

accuracy() {
  local pk="$OUT/acc-passkey-1024" ruler="$OUT/acc-ruler-1024"
  mkdir -p "$pk" "$ruler"
  echo "== pass key: $(uptime)"
  $PY benchmarks/peers/export_prompts.py --task passkey --length 1024 --samples "$PK_SAMPLES" --out "$pk/prompts.jsonl"
  ov --prompts "$pk/prompts.jsonl" --settings full,evict128,evict128-w32 --precision fp32 --out "$pk/ov_rows.jsonl"
  $PY benchmarks/peers/import_rows.py "$pk/ov_rows.jsonl" --task passkey --length 1024 --samples "$PK_SAMPLES" --out "$pk"
  $RESTKV eval passkey --length 1024 --samples "$PK_SAMPLES" --budgets 128 --methods "$METHODS" --out "$pk"
  echo "== RULER: $(uptime)"
  $PY benchmarks/peers/export_prompts.py --task ruler-handwritten --tasks "$RULER_TASKS" --length 1024 \
    --samples "$RULER_SAMPLES" --out "$ruler/prompts.jsonl"
  ov --prompts "$ruler/prompts.jsonl" --settings full,evict128,evict128-w32 --precision fp32 --out "$ruler/ov_rows.jsonl"
  $PY benchmarks/peers/import_rows.py "$ruler/ov_rows.jsonl" --task ruler-handwritten --tasks "$RULER_TASKS" \
    --length 1024 --samples "$RULER_SAMPLES" --out "$ruler"
  $RESTKV eval ruler-handwritten --tasks "$RULER_TASKS" --length 1024 --samples "$RULER_SAMPLES" --budgets 128 \
    --methods "$METHODS" --out "$ruler"
  $RESTKV report "$pk"
  $RESTKV report "$ruler"
  echo "== done: $(uptime)"
}

for what in "${@:-latency accuracy}"; do
  for w in $what; do
    case $w in
      latency) latency ;;
      accuracy) accuracy ;;
      *) echo "unknown stage $w (latency or accuracy)" >&2; exit 2 ;;
    esac
  done
done
