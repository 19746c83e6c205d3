#!/usr/bin/env bash
# The CIFAR-10 baseline-vs-MIM benchmark on one GPU (no install: PYTHONPATH=. with the
# machine's own torch/timm). Data: $SUPMIM_DATA_DIR/cifar10_jpeg_q75.tar.gz.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export SUPMIM="python3 -m supmim.cli"
export EXTRA="${EXTRA:-} --set data.num_workers=8 --set data.eval_batch_size=1024"
benchmarks/cifar10_compare.sh "${1:-runs/gpu_cifar10}" ${SEEDS:-0 1 2}
