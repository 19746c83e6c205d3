#!/usr/bin/env bash
# Baseline vs MIM on CIFAR-10 (the issue-2 benchmark).
#   - data: the full CIFAR-10 JPEG archive from ../shared/data (or $SUPMIM_DATA_DIR);
#     a class-balanced 10k-image training subset; 10% of train carved out as validation
#     (for choices), the 10k test set reported once at the end;
#   - the `cifar10` preset ViT (192 wide, 6 deep, 3 heads, patch 4, GAP), AdamW, cosine, 25 epochs;
#   - MIM: VQ tokens (f4 tokenizer trained on the same 10k images), 75% of patches dropped,
#     1-layer decoder, lambda 1.
# Usage: benchmarks/cifar10_compare.sh OUT_DIR [SEEDS...]   (env: EPOCHS, TRAIN_SAMPLES, EXTRA)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench_cifar10}; shift || true
SEEDS=${*:-0 1 2}
DATA_DIR=${SUPMIM_DATA_DIR:-../shared/data}
DATA=$DATA_DIR/cifar10_jpeg_q75.tar.gz
EPOCHS=${EPOCHS:-25}
TRAIN_SAMPLES=${TRAIN_SAMPLES:-10000}
SUPMIM=${SUPMIM:-.venv/bin/supmim}
COMMON=(--data "$DATA" --preset cifar10 --set data.train_samples=$TRAIN_SAMPLES ${EXTRA:-})
mkdir -p "$OUT"
start=$(date +%s)
if [ ! -f "$OUT/tokenizer/tokenizer.json" ]; then
  $SUPMIM tokenizer train "${COMMON[@]}" --out "$OUT/tokenizer" --steps ${TOKENIZER_STEPS:-4000} --quiet
fi
$SUPMIM compare "${COMMON[@]}" --epochs "$EPOCHS" --tokenizer "$OUT/tokenizer" \
  --out "$OUT/compare" --seeds $SEEDS --quiet
echo "wall time: $(( $(date +%s) - start )) s"
