#!/usr/bin/env bash
# The evaluation runs recorded under benchmarks/results/ (issue: evaluation engine).
# Each command's wall time goes to benchmarks/results/eval_wall_times.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
RESTKV=${RESTKV:-.venv/bin/restkv}
METHODS=full,restkv,snapkv,pyramidkv,h2o,tova,streamingllm
log=benchmarks/results/eval_wall_times.txt
run() {
  local start=$SECONDS
  echo "+ $*" | tee -a "$log"
  "$@"
  echo "  wall $((SECONDS - start)) s" | tee -a "$log"
}
run $RESTKV eval ruler-handwritten --methods full --budgets 128 --length 1024 --samples 20 --out runs/ruler-1k-full-only
run $RESTKV eval ruler-handwritten --methods $METHODS --budgets 128,256,512 --length 1024 --samples 20 --out runs/ruler-1k
run $RESTKV eval niah --haystack synthetic --methods $METHODS --budgets 128,256 --lengths 512,1024 --depths 0,0.25,0.5,0.75,1 --samples 2 --out runs/niah
# the same 1,024-token cells with wider pooling kernels (the digits of a needle sit side by side)
run $RESTKV eval niah --haystack synthetic --methods "full,restkv[kernel_size=15],restkv[pooling=maxpool;kernel_size=15],restkv[pooling=maxpool],restkv[window_size=auto],snapkv[kernel_size=15],snapkv[pooling=maxpool;kernel_size=15]" \
  --budgets 128,256 --lengths 1024 --depths 0,0.25,0.5,0.75,1 --samples 2 --out runs/niah-kernels
# the question-aware window with kernel 15, the tuned profile and SnapKV with the same window and
# kernel, added to copies of the two runs above (same prompts, same full cache)
TUNED="full,restkv[window_size=auto;kernel_size=15],restkv[profile=benchmarks/results/profiles/smollm2-135m-instruct-b128.json],snapkv[window_size=auto;kernel_size=15]"
for pair in ruler-1k:ruler-1k-tuned niah:niah-tuned; do
  mkdir -p "runs/${pair#*:}" && cp "runs/${pair%%:*}/results.sqlite" "runs/${pair#*:}/"
done
run $RESTKV eval ruler-handwritten --methods "$TUNED" --budgets 256,512 --length 1024 --samples 20 --out runs/ruler-1k-tuned
run $RESTKV eval niah --haystack synthetic --methods "$TUNED" --budgets 128,256 --lengths 512,1024 --depths 0,0.25,0.5,0.75,1 --samples 2 --out runs/niah-tuned
run $RESTKV eval fidelity --methods $METHODS --budgets 256,512,1024 --length 4096 --samples 2 --out runs/fidelity
run $RESTKV eval fidelity --methods $METHODS --budgets 256,512,1024 --length 8128 --samples 2 --out runs/fidelity
for d in runs/ruler-1k-full-only runs/ruler-1k runs/ruler-1k-tuned runs/niah runs/niah-kernels runs/niah-tuned runs/fidelity; do $RESTKV report "$d"; done
