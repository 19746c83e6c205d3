#!/usr/bin/env bash
# Token views (issue 13, item 4): the MIM arm of the CIFAR-10 benchmark (cifar10_compare.sh's
# recipe) trained on view caches of K = 4, 8, 16 views per image against fresh tokens.
#   tokenizer: the benchmark's f4 tokenizer, OUT/tokenizer (trained here as cifar10_compare.sh
#              trains it when it is not there yet);
#   caches:    `supmim tokenizer cache --views K --seed SEED` per seed, in OUT/cache_k{K}_seed{S};
#   arms:      fresh (the tokenizer in every step), k4, k8, k16 (--set mim.token_cache=...), per
#              seed, all with the same loader (data.loader=$LOADER, default workers), two
#              one-thread processes at a time, each resumable (--resume auto);
#   table:     benchmarks/token_views_table.py: test top-1 and kNN top-1 (k = 20,
#              supmim.experiments.verdict.knn_top1) per arm, mean +- std over seeds and the
#              paired difference to fresh tokens (it also reports a partial ablation).
# Usage: benchmarks/token_views_ablation.sh OUT SEEDS...   (e.g. runs/token_views 0 1)
#   env: ARCHIVE (cifar10_small_5k_1k_jpeg_q75.tar.gz), EPOCHS (15), VIEWS ("4 8 16"),
#        JOBS (2), LOADER (workers), EXTRA (more flags for every `supmim` call)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: $0 OUT SEEDS...}; shift
SEEDS=${*:-0 1}
DATA=${SUPMIM_DATA_DIR:-../shared/data}/${ARCHIVE:-cifar10_small_5k_1k_jpeg_q75.tar.gz}
EPOCHS=${EPOCHS:-15}
VIEWS=${VIEWS:-4 8 16}
JOBS=${JOBS:-2}
SUPMIM=${SUPMIM:-.venv/bin/supmim}
PY=${PY:-.venv/bin/python}
COMMON=(--data "$DATA" --preset cifar10 ${EXTRA:-})
mkdir -p "$OUT/runs" "$OUT/logs"
start=$(date +%s)
if [ ! -f "$OUT/tokenizer/tokenizer.json" ]; then
  OMP_NUM_THREADS=$JOBS $SUPMIM tokenizer train "${COMMON[@]}" --out "$OUT/tokenizer" \
    --steps ${TOKENIZER_STEPS:-4000} --quiet
fi

# run "name" cmd...: in the background, at most $JOBS at a time, output in OUT/logs/name.log
running=0
run() {
  local name=$1; shift
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || echo "$(date +%T) a job failed: see $OUT/logs"
    running=$((running - 1))
  fi
  echo "$(date +%T) start $name"
  OMP_NUM_THREADS=1 "$@" > "$OUT/logs/$name.log" 2>&1 &
  running=$((running + 1))
}
drain() { wait; running=0; }

for s in $SEEDS; do
  for k in $VIEWS; do
    cache="$OUT/cache_k${k}_seed$s"
    [ -f "$cache/views.safetensors" ] || run "cache_k${k}_seed$s" $SUPMIM tokenizer cache \
      "${COMMON[@]}" --tokenizer "$OUT/tokenizer" --views "$k" --seed "$s" --out "$cache" \
      --quiet
  done
done
drain
for s in $SEEDS; do
  for arm in fresh $(for k in $VIEWS; do echo "k$k"; done); do
    flag=(); [ "$arm" != fresh ] && flag=(--set "mim.token_cache=$OUT/cache_${arm}_seed$s")
    run "${arm}_seed$s" $SUPMIM train "${COMMON[@]}" --epochs "$EPOCHS" \
      --tokenizer "$OUT/tokenizer" --seed "$s" --out "$OUT/runs/${arm}_seed$s" \
      --set train.threads=1 --set "data.loader=${LOADER:-workers}" "${flag[@]}" \
      --resume auto --quiet
  done
done
drain
echo "training wall time: $(( $(date +%s) - start )) s"

OMP_NUM_THREADS=$JOBS $PY benchmarks/token_views_table.py "$OUT" --views $VIEWS --seeds $SEEDS
echo "wall time: $(( $(date +%s) - start )) s"
