#!/usr/bin/env bash
# Latency and memory measurements recorded under benchmarks/results/ (issue: efficiency).
# Ratios (ReST-KV vs SnapKV prefill, compressed vs full decode and memory) come from the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
RESTKV=${RESTKV:-.venv/bin/restkv}
log=benchmarks/results/bench_wall_times.txt
run() {
  local start=$SECONDS
  echo "+ $*" | tee -a "$log"
  "$@"
  echo "  wall $((SECONDS - start)) s" | tee -a "$log"
}
# prefill overhead of ReST-KV over SnapKV, and decode ms/token at budget 128 from 1K to 32K
run $RESTKV bench latency --methods full,restkv,snapkv --budgets 128 --lengths 1024,4096,8192 --repeats 3 --decode-tokens 16 --out runs/bench-latency
run $RESTKV bench latency --methods full,restkv --budgets 128 --lengths 1024,4096,16384,32768 --repeats 3 --decode-tokens 16 --no-prefill --out runs/bench-decode
# the prefill-overhead target, re-measured with the presses taking turns in every repeat
run $RESTKV bench latency --methods restkv,snapkv --budgets 128 --lengths 4096,8192 --repeats 3 --decode-tokens 2 --out runs/bench-prefill-interleaved
# peak memory: full cache against layer-wise compression (and chunked prefill) at 8K and 32K
run $RESTKV bench memory --methods full,restkv --budgets 128 --lengths 8192 --decode-tokens 4 --out runs/bench-memory
run $RESTKV bench memory --methods full,restkv --budgets 128 --lengths 32768 --decode-tokens 4 --out runs/bench-memory-32k
run $RESTKV bench memory --methods restkv --budgets 128 --lengths 32768,262144 --chunk-size 4096 --decode-tokens 4 --out runs/bench-memory-chunked
for d in runs/bench-latency runs/bench-decode runs/bench-prefill-interleaved runs/bench-memory runs/bench-memory-32k runs/bench-memory-chunked; do $RESTKV report "$d"; done
