#!/usr/bin/env bash
# Train a VQ tokenizer on CIFAR-10 and measure it (issue 3, item 2).
#   f4 (8x8 tokens for the `cifar10` preset's ViT/4 at 32 px), 512 codes, 4000 steps of 32;
#   validation: 10% of train carved out (stratified); test: the archive's test split.
#   Aim: test PSNR >= 23 dB and codebook usage >= 80% within 20 minutes on a 2-core CPU.
# Usage: benchmarks/tokenizer_cifar10.sh [OUT_DIR]      (default runs/tokenizer_cifar10/f4_512)
#   env: ARCHIVE (default cifar10_jpeg_q75.tar.gz, all 50k/10k images), STEPS (4000),
#        CODES (512), EXTRA (more `tokenizer train` flags, e.g. "--disc-weight 0.1")
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/tokenizer_cifar10/f4_512}
DATA=${SUPMIM_DATA_DIR:-../shared/data}/${ARCHIVE:-cifar10_jpeg_q75.tar.gz}
SUPMIM=${SUPMIM:-.venv/bin/supmim}
start=$(date +%s)
$SUPMIM tokenizer train --data "$DATA" --preset cifar10 --out "$OUT" --steps "${STEPS:-4000}" \
  --codebook-size "${CODES:-512}" --quiet ${EXTRA:-}
echo "train wall time: $(( $(date +%s) - start )) s"
$SUPMIM tokenizer eval "$OUT" --data "$DATA" --preset cifar10 --split test --json "$OUT/test.json"
echo "total wall time: $(( $(date +%s) - start )) s"
