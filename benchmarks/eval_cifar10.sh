#!/usr/bin/env bash
# The evaluation suite on the CIFAR-10 benchmark's encoders (baseline vs MIM, issue 4).
#   encoders: the run directories of benchmarks/cifar10_compare.sh (COMPARE/{baseline,mim}_seedN);
#   CIFAR-10 (the 5k/1k archive): top-1 with the trained head, linear probe, weighted kNN
#     (k 10/20/100/200, T 0.07), retrieval test -> train (R@1/5/10, mAP);
#   ORL faces: identity retrieval, leave-one-out over all 400 images;
#   CamVid (48x64 input) and Oxford Pet (64x64 input): frozen encoder, linear and multilevel
#     heads, 20 epochs each (the fixed head-training budget);
#   robustness: the 15 corruptions x 5 severities on a fixed 500-image class-balanced subset
#     of the CIFAR-10 test split; the MIM arm's mCE uses the same seed's baseline as reference;
#   then one side-by-side report of all seeds.
# Runs one process at a time with one thread (leaves a core to others on 2-core machines).
# A result file that already exists is kept (delete it to re-measure), so a stopped run
# continues where it was, and a second call with the same seeds only rewrites the report.
# Usage: benchmarks/eval_cifar10.sh [COMPARE_DIR] [OUT_DIR] [SEEDS...]
#   defaults: runs/bench_cifar10/compare runs/bench_eval_cifar10 0 1 2
#   env: SUPMIM_DATA_DIR (default ../shared/data), SUPMIM (the CLI), ROBUST_SUBSET (500)
set -euo pipefail
cd "$(dirname "$0")/.."
CMP=${1:-runs/bench_cifar10/compare}
OUT=${2:-runs/bench_eval_cifar10}
shift $(( $# < 2 ? $# : 2 ))
SEEDS=${*:-0 1 2}
DATA=${SUPMIM_DATA_DIR:-../shared/data}
SUPMIM=${SUPMIM:-.venv/bin/supmim}
CIFAR=$DATA/cifar10_small_5k_1k_jpeg_q75.tar.gz
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(--threads "$OMP_NUM_THREADS" --quiet)
mkdir -p "$OUT"
start=$(date +%s)

once() {  # RESULT_JSON COMMAND...: run the command unless its result exists
  local out=$1; shift
  [ -f "$out" ] || "$@" --out "$out" "${COMMON[@]}"
}

evaluate() {  # MODEL RESULT_DIR [--baseline JSON]
  local m=$1 r=$2; shift 2
  mkdir -p "$r"
  cp "$m/summary.json" "$r/summary.json"  # the run's own test top-1, as a report row
  local t0=$(date +%s)
  once "$r/classify.json" $SUPMIM eval classify "$m" --data "$CIFAR"
  once "$r/linear.json" $SUPMIM eval linear "$m" --data "$CIFAR"
  once "$r/knn.json" $SUPMIM eval knn "$m" --data "$CIFAR"
  once "$r/retrieval-cifar10.json" $SUPMIM eval retrieval "$m" --data "$CIFAR"
  once "$r/retrieval-orl.json" $SUPMIM eval retrieval "$m" --data "$DATA/orl_faces_112x92_uint8.npz" \
      --leave-one-out
  for head in linear multilevel; do
    once "$r/segment-camvid-$head.json" $SUPMIM eval segment "$m" --data "$DATA/camvid_120x160_uint8.npz" \
        --size 48 64 --head $head --epochs 20
    once "$r/segment-pets-$head.json" $SUPMIM eval segment "$m" \
        --data "$DATA/oxford_pet_sample3_128x128_uint8.npz" --size 64 64 --head $head --epochs 20
  done
  once "$r/robustness.json" $SUPMIM eval robustness "$m" --data "$CIFAR" --subset "${ROBUST_SUBSET:-500}" "$@"
  echo "$m: $(( $(date +%s) - t0 )) s"
}

base_groups=() mim_groups=()
for s in $SEEDS; do
  evaluate "$CMP/baseline_seed$s" "$OUT/baseline_seed$s"
  evaluate "$CMP/mim_seed$s" "$OUT/mim_seed$s" --baseline "$OUT/baseline_seed$s/robustness.json"
  base_groups+=("$OUT/baseline_seed$s")
  mim_groups+=("$OUT/mim_seed$s")
done
join() { local IFS=,; echo "$*"; }
$SUPMIM report "baseline=$(join "${base_groups[@]}")" "mim=$(join "${mim_groups[@]}")" \
    --out "$OUT/report.md" --title "CIFAR-10 encoders: baseline vs MIM (seeds $SEEDS)"
echo "wall time: $(( $(date +%s) - start )) s"
