#!/usr/bin/env bash
# The OpenVINO GenAI peer's own environment and its IR exports of the embedded SmolLM2.
# Creates benchmarks/peers/openvino/.venv (ignored by git) and writes
#   $OV_HOME/smollm2-fp32   fp32 weights (optimum-cli export openvino --weight-format fp32)
#   $OV_HOME/smollm2-int8   int8 weights (--weight-format int8, NNCF weight compression)
# with OV_HOME defaulting to ~/.cache/restkv/openvino. Nothing is fetched from a model hub: the
# export reads the converted HF folder the restkv package already put on disk.
# Usage: benchmarks/peers/openvino/setup.sh   (idempotent; ~3 min on 2 cores)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV=${VENV:-$HERE/.venv}
PY=${PYTHON:-python3}
MODEL_DIR=${MODEL_DIR:-${RESTKV_HOME:-$HOME/.cache/restkv}/models/smollm2-135m-instruct}
OV_HOME=${OV_HOME:-${RESTKV_HOME:-$HOME/.cache/restkv}/openvino}

if [ ! -x "$VENV/bin/optimum-cli" ]; then
  $PY -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch only for the export (optimum-intel traces the PyTorch model): the CPU build on disk.
  # The constraint keeps it there: without it, optimum-intel's torchvision pulls the newest
  # torchvision, which drags in a multi-GB CUDA torch.
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -c "$HERE/torch-pin.txt" -r "$HERE/requirements.txt"
  # optimum-intel lists torchvision, never uses it for text models, and the torchvision wheel's
  # compiled ops do not load against the CPU torch build (transformers then fails to import)
  "$VENV/bin/pip" uninstall -y -q torchvision
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
for fmt in fp32 int8; do
  out="$OV_HOME/smollm2-$fmt"
  if [ ! -f "$out/openvino_model.xml" ]; then
    "$VENV/bin/optimum-cli" export openvino --model "$MODEL_DIR" --task text-generation-with-past \
      --weight-format "$fmt" "$out"
  fi
done
"$VENV/bin/python" - "$OV_HOME" <<'PY'
import sys, openvino, openvino_genai
print("openvino", openvino.__version__, "| openvino_genai", openvino_genai.__version__, "| IR in", sys.argv[1])
PY
