#!/usr/bin/env bash
# GPU check on a device machine that has torch but not MONAI/kornia: install carried wheels
# (.whl/, see bench/README.md), then run bench/gpu_check.py against the carried real frames.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 bench/gpu_check.py --real-data .gpudata/cimat40_train "$@"
