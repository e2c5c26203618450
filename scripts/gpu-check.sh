#!/usr/bin/env bash
# The GPU check (issue 21), from the repository root of a machine with a CUDA device:
#     bash scripts/gpu-check.sh [OUT_DIR]          # default OUT_DIR: gpu-check/
# It runs the tests marked `cuda`, then `make demo`'s commands with --device cuda (each timed), then the Kronecker
# featurization over a plain forward+backward at 32 and 224 px, and writes OUT_DIR/gpu-check.json with the logs
# beside it (benchmarks/gpu_check.py). The python3 there must have torch with CUDA. Packages it lacks travel as
# wheels in .whl/ (made here by scripts/gpu-wheels.sh) and are installed under /tmp/site; trakscope itself runs
# from src/ without installing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-gpu-check}
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch sees no CUDA device')"
exec "$PY" benchmarks/gpu_check.py --out "$OUT_DIR/gpu-check.json" "${@:2}"
