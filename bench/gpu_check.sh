#!/usr/bin/env bash
# GPU check (see bench/gpu_check.py): correctness, VGG-16 CIFAR-10 epoch vs the plain loop, MFU,
# similarity on GPU vs CPU. Writes gpu_check.md/.json to $OUT when set, else results/bench/.
# Exit: 0 ran, 1 a correctness check failed, 2 no CUDA device (nothing measured).
# On the device machine (no .venv there) the system python3 holds PyTorch; closerlook runs from src/.
# To time on real CIFAR-10 there, put the zip inside the checkout first:
#   mkdir -p shared/data && cp ../shared/data/cifar10-jpeg.zip shared/data/
# Extra arguments are passed on, e.g. `bash bench/gpu_check.sh --device cpu --tiny` (CPU smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then PY=.venv/bin/python
elif command -v python3 >/dev/null && python3 -c 'import torch' 2>/dev/null; then PY=python3
else PY=.venv/bin/python
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" -m bench.gpu_check "$@"
