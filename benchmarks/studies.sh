#!/usr/bin/env bash
# Every named ablation study (supmim/experiments/studies.py) at its CPU size: the cifar10 preset ViT
# (192 wide, 6 deep, patch 4, GAP), 6 epochs on the shared 5k/1k CIFAR-10 subset, VQ tokens
# of the CIFAR tokenizer of BENCHMARKS 2, seeds 0 1 2. The stage study pre-trains on the
# shared Tiny ImageNet 10-class subset and fine-tunes on CIFAR-10.
#
# The studies run side by side, each running PAR arm-seeds at once (`sweep --parallel`):
# meant for a GPU machine (16 cores); on the 2-core CPU machine run one study at a time with
# PAR=1, e.g. `STUDIES=passes PAR=1 benchmarks/studies.sh runs/studies_cpu`.
# Usage: benchmarks/studies.sh OUT_DIR   (env: STUDIES, SEEDS, PAR, TOKENIZER, SUPMIM,
#        SUPMIM_DATA_DIR, EXTRA = more sweep flags)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/studies}
DATA_DIR=${SUPMIM_DATA_DIR:-../shared/data}
TOK=${TOKENIZER:-runs/bench_cifar10/tokenizer}
SUPMIM=${SUPMIM:-.venv/bin/supmim}
STUDIES=${STUDIES:-decoder-depth mask-ratio-pool lambda loss-target passes mode-masking stages}
mkdir -p "$OUT"
COMMON=(--data "$DATA_DIR/cifar10_small_5k_1k_jpeg_q75.tar.gz" --preset cifar10 --tokenizer "$TOK"
        --size cpu --seeds ${SEEDS:-0 1 2} --quiet ${EXTRA:-})
start=$(date +%s)
pids=()
for s in $STUDIES; do
  par=${PAR:-3}
  # 14 arms: twice the share where several run at once (PAR=1 stays one at a time)
  [ "$s" = mask-ratio-pool ] && [ "$par" -gt 1 ] && par=$(( par * 2 ))
  extra=()
  [ "$s" = stages ] && extra=(--pretrain-data "$DATA_DIR/tiny-imagenet-10class-subset.tar.gz")
  $SUPMIM sweep "${COMMON[@]}" --parallel "$par" --study "$s" "${extra[@]}" --out "$OUT/$s" \
      > "$OUT/$s.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
echo "studies wall time: $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
