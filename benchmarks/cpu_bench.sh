#!/usr/bin/env bash
# Issue-5 CPU targets on this 2-core machine, measured side by side in one process:
#   ViT-Tiny (192 wide, 12 deep) at 32x32, patch 4, mask ratio 0.75, 1-layer decoder, VQ
#   tokenizer (f4, 512 codes) included: trainer+MIM step time / supervised step (target <= 1.5),
#   and the trainer's supervised throughput / a minimal plain PyTorch loop (target >= 0.95);
#   plus the data loader's images/s on the shared CIFAR-10 subset.
# Run it on an otherwise idle machine. Output: $OUT (default runs/cpu_bench.json).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/cpu_bench.json}
DATA=${SUPMIM_DATA_DIR:-../shared/data}/cifar10_small_5k_1k_jpeg_q75.tar.gz
SUPMIM=${SUPMIM:-.venv/bin/supmim}
start=$(date +%s)
OMP_NUM_THREADS=$(nproc) $SUPMIM bench --model vit_tiny_patch16_224 --img-size 32 --patch-size 4 \
    --batch 128 --steps ${STEPS:-6} --warmup 2 --rounds ${ROUNDS:-5} --target vq \
    --mask-ratio 0.75 --decoder-depth 1 --threads "$(nproc)" --data "$DATA" --workers 2 \
    --out "$OUT"
echo "wall time: $(( $(date +%s) - start )) s"
