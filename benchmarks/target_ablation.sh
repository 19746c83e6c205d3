#!/usr/bin/env bash
# MIM target ablation on CIFAR-10 (issue 3, item 5): VQ tokens vs normalised pixels vs HOG.
#   Every arm uses exactly the recipe of runs/bench_cifar10/compare/mim_seed{S} (the
#   `cifar10` preset, 15 epochs, 10% validation carved from train, 75% random masking,
#   1-layer decoder, lambda 1, one torch thread) and differs only in `mim.target`.
#   The VQ arm and the baseline are the finished runs of benchmarks/cifar10_compare.sh.
# Arms run one after another, one thread each (so a core stays free on a 2-core machine).
# Usage: benchmarks/target_ablation.sh OUT_DIR [SEEDS...]      (default: runs/ablation_target 0)
#   env: ARCHIVE (default cifar10_small_5k_1k_jpeg_q75.tar.gz), EPOCHS (15), TARGETS ("pixel hog")
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/ablation_target}; shift || true
SEEDS=${*:-0}
DATA=${SUPMIM_DATA_DIR:-../shared/data}/${ARCHIVE:-cifar10_small_5k_1k_jpeg_q75.tar.gz}
EPOCHS=${EPOCHS:-15}
SUPMIM=${SUPMIM:-.venv/bin/supmim}
mkdir -p "$OUT"
start=$(date +%s)
for s in $SEEDS; do
  for t in ${TARGETS:-pixel hog}; do
    run="$OUT/${t}_seed$s"
    if [ -f "$run/summary.json" ]; then echo "skip $run (done)"; continue; fi
    t0=$(date +%s)
    OMP_NUM_THREADS=1 $SUPMIM train --data "$DATA" --preset cifar10 --epochs "$EPOCHS" \
      --target "$t" --seed "$s" --set train.threads=1 --out "$run" --quiet > "$OUT/${t}_seed$s.log" 2>&1
    echo "$run: $(( $(date +%s) - t0 )) s"
  done
done
echo "wall time: $(( $(date +%s) - start )) s"
