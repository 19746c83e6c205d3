#!/usr/bin/env bash
# One-GPU check, prepared to run in under 8 minutes whenever a GPU machine is available
# (no install: PYTHONPATH=. with the machine's own torch/timm; data from $SUPMIM_DATA_DIR).
#   1. `supmim bench` for ViT-B/16 at 224, bf16: plain loop vs trainer vs trainer + MIM
#      (VQ target with a 16x16 token grid), images/s, ratios, peak memory, MFU.
#   2. the CIFAR-10 baseline-vs-MIM comparison (benchmarks/cifar10_compare.sh), 3 seeds per
#      arm, on the shared 5k/1k archive, seeds one after another with all CPU workers.
# Everything lands in $OUT (default runs/gpu_check): bench_vitb16.json, the compare folder,
# and gpu_check.log. Record the numbers in BENCHMARKS.md with the card's name.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
SUPMIM="python3 -m supmim.cli"
BATCH=${BATCH:-128}
$SUPMIM bench --model vit_base_patch16_224 --img-size 224 --patch-size 16 --batch "$BATCH" \
    --steps ${STEPS:-20} --warmup 5 --rounds 3 --amp bf16 --out "$OUT/bench_vitb16.json"
if [ -n "${COMPILE:-}" ]; then
  $SUPMIM bench --model vit_base_patch16_224 --img-size 224 --patch-size 16 --batch "$BATCH" \
      --steps 20 --warmup 5 --rounds 3 --amp bf16 --compile --out "$OUT/bench_vitb16_compile.json"
fi
echo "bench done after $(( $(date +%s) - start )) s"
PARALLEL=1 SUPMIM="$SUPMIM" EXTRA="--set data.num_workers=8 --set data.eval_batch_size=1024" \
    benchmarks/cifar10_compare.sh "$OUT/cifar10" 0 1 2
echo "gpu_check wall time: $(( $(date +%s) - start )) s"
