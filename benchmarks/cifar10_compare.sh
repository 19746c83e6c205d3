#!/usr/bin/env bash
# Baseline vs MIM on CIFAR-10 (the issue-2 benchmark).
#   data: a CIFAR-10 archive from ../shared/data (or $SUPMIM_DATA_DIR), 10% of train carved out
#         as validation (for choices), the test split reported once at the end;
#   model: the `cifar10` preset ViT (192 wide, 6 deep, 3 heads, patch 4, GAP, drop-path 0.1),
#          AdamW lr 1e-3 wd 0.05, 10% warm-up + cosine, batch 128, label smoothing 0.1;
#   MIM: VQ tokens of an f4 tokenizer trained on the same training images, 75% of patches
#        dropped, 1-layer decoder, lambda 1.
# Seeds run as parallel processes, one thread each (PARALLEL=1 runs them one after another
# with all threads); a final `compare` call gathers them into one table.
# SPLIT_ARMS=1 runs each seed's two arms side by side instead (one `supmim train` per arm,
# one thread each, in compare's layout, resumable with --resume auto): the way to run one seed
# on two cores.
# Usage: benchmarks/cifar10_compare.sh OUT_DIR [SEEDS...]
#   env: ARCHIVE (default cifar10_small_5k_1k_jpeg_q75.tar.gz), EPOCHS (15), EXTRA (more flags),
#        SPLIT_ARMS (0)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench_cifar10}; shift || true
SEEDS=${*:-0 1}
DATA=${SUPMIM_DATA_DIR:-../shared/data}/${ARCHIVE:-cifar10_small_5k_1k_jpeg_q75.tar.gz}
EPOCHS=${EPOCHS:-15}
SUPMIM=${SUPMIM:-.venv/bin/supmim}
COMMON=(--data "$DATA" --preset cifar10 ${EXTRA:-})
mkdir -p "$OUT"
start=$(date +%s)
if [ ! -f "$OUT/tokenizer/tokenizer.json" ]; then
  $SUPMIM tokenizer train "${COMMON[@]}" --out "$OUT/tokenizer" --steps ${TOKENIZER_STEPS:-4000} --quiet
fi
RUN=(compare "${COMMON[@]}" --epochs "$EPOCHS" --tokenizer "$OUT/tokenizer" --out "$OUT/compare" --quiet)
if [ "${SPLIT_ARMS:-0}" = 1 ]; then
  for s in $SEEDS; do
    pids=()
    for arm in baseline mim; do
      flag=(); [ "$arm" = baseline ] && flag=(--no-mim)
      OMP_NUM_THREADS=1 $SUPMIM train "${COMMON[@]}" --epochs "$EPOCHS" --tokenizer "$OUT/tokenizer" \
        --out "$OUT/compare/${arm}_seed$s" --seed "$s" "${flag[@]}" --set train.threads=1 \
        --resume auto --quiet > "$OUT/${arm}_seed$s.log" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
  done
elif [ "${PARALLEL:-$(nproc)}" -gt 1 ]; then
  pids=()
  for s in $SEEDS; do
    OMP_NUM_THREADS=1 $SUPMIM "${RUN[@]}" --seeds "$s" --set train.threads=1 > "$OUT/seed$s.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
fi
$SUPMIM "${RUN[@]}" --seeds $SEEDS   # reuses the finished runs; writes the combined table
echo "wall time: $(( $(date +%s) - start )) s"
