#!/usr/bin/env bash
# The GPU check, one command (≤ 8 minutes on one GPU): the CUDA-marked tests, then normfree
# against timm for nfnet_f0 and eca_nfnet_l0 (benchmarks/gpu_table.py: training in fp16/bf16,
# eager and compiled, inference at the test size, channels_last and contiguous), one table.
#
#   bash scripts/gpu_check.sh            # with the project's .venv (make install)
#   PYTHON=python3 bash scripts/gpu_check.sh   # any Python with torch, timm and normfree
#
# Its table goes into docs/benchmarks.md with the GPU's name; channels_last's default on CUDA
# (training/resolve.py: channels_last_pays) follows what it shows.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else
    'gpu_check: torch ' + torch.__version__ + ' sees no CUDA GPU here')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 180 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests
timeout 330 "$PYTHON" benchmarks/gpu_table.py --budget 240
