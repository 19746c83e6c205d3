#!/usr/bin/env bash
# One-GPU converged check (issue 13, item 6), prepared to finish inside 10 minutes on one H200
# (no install: PYTHONPATH=. with the machine's own torch/timm, like gpu_check.sh).
#   1. `supmim bench`, ViT-B/16 at 224, bf16, torch.compile: plain loop vs trainer vs trainer +
#      MIM (VQ target, 14x14 grid of an untrained f16 tokenizer): images/s, the two ratios, MFU,
#      peak memory.
#   2. a VQ tokenizer (f4, 512 codes, the BENCHMARKS 4.1 recipe) on the CIFAR-10 training split,
#      unless TOKENIZER names a folder trained beforehand (e.g. on the CPU with
#      benchmarks/tokenizer_cifar10.sh, carried to the machine).
#   3. full CIFAR-10 (the shared 50k/10k archive): ViT-Tiny/4 at 32 px, 12 deep, baseline and
#      MIM, seeds 0 1 2: six `supmim train` processes side by side on the one GPU, through the
#      device-resident data path; then one `supmim compare --seeds 0 1 2` over the finished runs.
#   4. the summary: OUT/gpu_converged.json and OUT/gpu_converged.md, every number and PASS/MISS
#      per target (printed at the end too).
# Usage: benchmarks/gpu_converged.sh [OUT]          (default runs/gpu_converged)
#        DRY_RUN=1 benchmarks/gpu_converged.sh OUT  the same steps on the CPU at toy sizes, in
#        seconds (tests/test_gpu_converged.py runs it so the script cannot rot; its numbers mean
#        nothing). DATA: an image-folder tree; without one the dry run makes a tiny one in OUT.
# env: DATA (archive or folder), SUPMIM_DATA_DIR, PY (python), DEVICE (auto; cpu in the dry
#      run), LOADER (device), EPOCHS (100), BATCH (512), LR (2e-3), WARMUP (10), SEEDS (0 1 2),
#      TOKENIZER (a trained folder), TOKENIZER_STEPS (4000), BENCH_BATCH (256), BENCH_EAGER (0:
#      also the eager bench), BUDGET_S (570 on the GPU: the six runs get SIGTERM, and checkpoint,
#      where they would run past it, so the summary is always written), EXTRA (more train flags).
#
# Design (the choices, and why):
# - Recipe (the ViT-from-scratch-on-CIFAR recipes, e.g. Lee et al. 2021, 100 epochs, shortened
#   to what the device-resident path augments): the `cifar10` preset's ViT (192 wide, 3 heads,
#   patch 4, GAP) at 12 blocks (--set model.depth=12: ViT-Tiny/4, 5.36 M encoder parameters,
#   65 tokens), 100 epochs, batch 512, AdamW peak lr 2e-3 (the preset's 1e-3 at batch 128,
#   square-root scaled to 512), weight decay 0.05, 10 warm-up epochs then cosine to 1e-5,
#   clip 1.0; pad-4 random crop + flip (the preset's, what the device path does), mixup 0.8 +
#   cutmix 1.0 (train.mixup / train.cutmix, on the device in the trainer: the regularisation
#   that RandAugment would otherwise give; RandAugment is PIL-side, i.e. LOADER=workers, add it
#   with EXTRA="--set data.rand_augment=rand-m9-mstd0.5-inc1"), label smoothing 0.1,
#   drop-path 0.1, bf16 autocast, train.compile=true. MIM: the preset's (mask 0.75, 1-layer
#   128-wide decoder, lambda 1). 10% of train (5,000, stratified) stays the validation split
#   (never tune on test, ../shared/data/README.md); the reported test top-1 is the last epoch's
#   model on the 10,000 test images, one evaluation, no selection.
# - Budget (10 min per device command): bench ~1.5 min (three ViT-B/16 compiles dominate),
#   tokenizer ~1 min (4,000 steps of 32 on the GPU), six runs ~7 min, compare + summary
#   ~0.3 min. FLOPs (`supmim train --dry-run`, forward + backward): 2.07 GFLOP per image for
#   the baseline step (2 x 5.4 M x 65 tokens forward, x3), 2.75 GFLOP with MIM (the second
#   pass over the 16 visible patches + [CLS], the decoder and the 512-way token head: 1.33x).
#   One epoch of all six runs: 3 x 45,000 x (2.07 + 2.75) GFLOP = 651 TFLOP, plus the
#   per-epoch validation forward (6 x 5,000 x 0.69 GFLOP = 21 TFLOP): 672 TFLOP; 100 epochs
#   67 PFLOP. At 35% MFU of the H200's 989 dense bf16 TFLOP/s (346 TFLOP/s) that is 194 s;
#   the 7 minutes minus ~90 s of start-up (six concurrent compiles, decoding 60,000 JPEGs
#   into device memory) leave 330 s, enough down to 21% MFU. 200 epochs would need 39% of a
#   GPU shared by six processes of a 192-wide model: not planned; EPOCHS=200 is there for a
#   longer lease.
# - Evaluation: there is no train.eval_every key, so every epoch evaluates the 5,000
#   validation images (3% of the epoch's FLOPs; more of its wall time, as that forward is
#   uncompiled and short). Every epoch also writes a checkpoint (weights + AdamW state, about
#   65 MB): train.checkpoint_every=0 (no mid-epoch ones), train.keep_checkpoints=1.
# - GPU sharing: six processes at once on the one GPU (CUDA_VISIBLE_DEVICES as it is; each
#   takes a few GiB), 2 CPU threads and 2 loader workers each (16 cores), --quiet, each
#   logging to OUT/logs/<arm>_seed<S>.log; they run in compare's layout
#   (OUT/compare/{baseline,mim}_seed<S>, --resume auto: a rerun continues them) so the final
#   `supmim compare` reuses them (--no-knn: kNN would re-extract features six times).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_converged}
DRY=${DRY_RUN:-0}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/gpu_converged.log") 2>&1
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
start=$(now)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -z "${PY:-}" ]; then
  if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
SUPMIM="$PY -m supmim.cli"
SEEDS=${SEEDS:-0 1 2}
LOADER=${LOADER:-device}

# the GPU recipe (see Design above); the dry run checks that every key of it still validates
GPU_RECIPE=(--set model.depth=12 --set data.batch_size=${BATCH:-512}
            --set data.eval_batch_size=1024 --set train.lr=${LR:-2e-3}
            --set train.warmup_epochs=${WARMUP:-10} --set train.weight_decay=0.05
            --set train.min_lr=1e-5 --set train.mixup=0.8 --set train.cutmix=1.0
            --set train.label_smoothing=0.1 --set model.drop_path=0.1 --set train.amp=bf16
            --set train.compile=true --set data.num_workers=2 --set train.threads=2)

if [ "$DRY" = 1 ]; then
  export OMP_NUM_THREADS=1
  DEVICE=${DEVICE:-cpu}
  if [ -z "${DATA:-}" ]; then  # a tiny image-folder tree: 3 classes of 32x32 PNGs
    DATA=$OUT/tiny_data
    "$PY" - "$DATA" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", 24), ("test", 8)):
    for k in range(3):
        folder = Path(sys.argv[1]) / split / f"c{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 80, size=(32, 32, 3)).astype(np.uint8)
            img[..., k] += 120
            Image.fromarray(img).save(folder / f"{i}.png")
EOF
  fi
  BENCH=(--model vit_tiny_patch16_224 --img-size 32 --patch-size 4 --batch 8 --steps 1 --warmup 1
         --rounds 1 --amp off --threads 1)
  TOK_ARGS=(--steps ${TOKENIZER_STEPS:-3} --batch-size 8 --codebook-size 64 --log-every 1
            --set data.num_workers=0)
  EPOCHS=${EPOCHS:-1}
  RECIPE=(--set model.embed_dim=32 --set model.depth=2 --set model.num_heads=2
          --set mim.decoder_dim=32 --set mim.decoder_heads=2 --set data.batch_size=16
          --set data.eval_batch_size=64 --set train.max_steps=2 --set train.warmup_epochs=0
          --set train.mixup=0.8 --set train.cutmix=1.0 --set train.label_smoothing=0.1
          --set model.drop_path=0.1 --set train.amp=off --set train.compile=false
          --set data.num_workers=0 --set train.threads=1 --set train.log_every=1)
  BUDGET_S=${BUDGET_S:-0}
else
  DEVICE=${DEVICE:-auto}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  if [ -z "${DATA:-}" ]; then
    for d in "${SUPMIM_DATA_DIR:-../shared/data}" ../shared/data shared/data; do
      DATA=$d/cifar10_jpeg_q75.tar.gz; [ -f "$DATA" ] && break
    done
  fi
  [ -e "$DATA" ] || { echo "gpu_converged: no CIFAR-10 archive at $DATA (set DATA)"; exit 2; }
  BB=${BENCH_BATCH:-256}
  BENCH=(--model vit_base_patch16_224 --img-size 224 --patch-size 16 --batch "$BB"
         --steps ${BENCH_STEPS:-10} --warmup ${BENCH_WARMUP:-5} --rounds ${BENCH_ROUNDS:-3}
         --amp bf16)
  TOK_ARGS=(--steps ${TOKENIZER_STEPS:-4000} --codebook-size 512 --set data.num_workers=8)
  EPOCHS=${EPOCHS:-100}
  RECIPE=("${GPU_RECIPE[@]}")
  BUDGET_S=${BUDGET_S:-570}
  export OMP_NUM_THREADS=2
fi
"$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, \
'cuda', torch.cuda.is_available())"
echo "gpu_converged: DRY_RUN=$DRY data $DATA, device $DEVICE, loader $LOADER, epochs $EPOCHS"
if [ "$DRY" = 1 ]; then  # the GPU run's recipe must still be a valid configuration
  $SUPMIM config --preset cifar10 --epochs 100 "${GPU_RECIPE[@]}" --set data.loader=device \
      --set data.val_fraction=0.1 --set train.checkpoint_every=0 --set train.keep_checkpoints=1 \
      > "$OUT/gpu_recipe_config.json"
fi

# 1. bench -------------------------------------------------------------------------------
t0=$(now)
# a failed bench is reported (its targets MISS) but does not cost the CIFAR-10 runs
COMPILE_FLAG=(--compile); [ "$DRY" = 1 ] && COMPILE_FLAG=()
$SUPMIM bench "${BENCH[@]}" --device "$DEVICE" "${COMPILE_FLAG[@]}" --out "$OUT/bench.json" \
  || echo "gpu_converged: bench failed (see above)"
if [ "$DRY" != 1 ] && [ "${BENCH_EAGER:-0}" = 1 ]; then
  $SUPMIM bench "${BENCH[@]}" --device "$DEVICE" --no-compile --out "$OUT/bench_eager.json" \
    || echo "gpu_converged: eager bench failed"
fi
bench_s=$(since "$t0")
echo "gpu_converged: bench done in ${bench_s} s"

# 2. tokenizer ---------------------------------------------------------------------------
t0=$(now)
TOK=${TOKENIZER:-$OUT/tokenizer}
if [ ! -f "$TOK/tokenizer.json" ]; then
  $SUPMIM tokenizer train --data "$DATA" --preset cifar10 --device "$DEVICE" --out "$TOK" \
      "${TOK_ARGS[@]}" --quiet > "$OUT/logs/tokenizer.log" 2>&1 \
    || { tail -20 "$OUT/logs/tokenizer.log"; exit 1; }
fi
tokenizer_s=$(since "$t0")
echo "gpu_converged: tokenizer $TOK ready in ${tokenizer_s} s"

# 3. six runs side by side ----------------------------------------------------------------
COMMON=(--data "$DATA" --preset cifar10 --device "$DEVICE" --tokenizer "$TOK" --epochs "$EPOCHS"
        --set data.loader="$LOADER" --set data.val_fraction=0.1 --set train.checkpoint_every=0
        --set train.keep_checkpoints=1 "${RECIPE[@]}" ${EXTRA:-})
LIMIT=()
if [ "$BUDGET_S" -gt 0 ]; then  # leave ~40 s for compare and the summary
  left=$(awk -v a="$start" -v b="$(now)" -v B="$BUDGET_S" 'BEGIN { printf "%d", B - (b - a) - 40 }')
  [ "${left:-0}" -lt 60 ] && left=60
  LIMIT=(timeout -s TERM -k 30 "$left")
  echo "gpu_converged: the six runs get at most $left s"
fi
runs_start=$(now)
pids=(); names=()
for s in $SEEDS; do
  for arm in baseline mim; do
    flag=(); [ "$arm" = baseline ] && flag=(--no-mim)
    "${LIMIT[@]}" $SUPMIM train "${COMMON[@]}" --out "$OUT/compare/${arm}_seed$s" --seed "$s" \
        "${flag[@]}" --resume auto --quiet > "$OUT/logs/${arm}_seed$s.log" 2>&1 &
    pids+=($!); names+=("${arm}_seed$s")
  done
done
: > "$OUT/runs_rc.txt"
for i in "${!pids[@]}"; do
  rc=0; wait "${pids[$i]}" || rc=$?
  echo "${names[$i]} $rc $(now)" >> "$OUT/runs_rc.txt"
  [ "$rc" = 0 ] || { echo "gpu_converged: ${names[$i]} exited $rc:"; tail -5 "$OUT/logs/${names[$i]}.log"; }
done
runs_end=$(now)
runs_s=$(awk -v a="$runs_start" -v b="$runs_end" 'BEGIN { printf "%.1f", b - a }')
echo "gpu_converged: six runs done in ${runs_s} s"

# 4. compare over the finished runs (never trains: only when all of them have a summary) ---
t0=$(now)
all=1
for n in "${names[@]}"; do [ -f "$OUT/compare/$n/summary.json" ] || all=0; done
if [ "$all" = 1 ]; then
  $SUPMIM compare "${COMMON[@]}" --out "$OUT/compare" --seeds $SEEDS --no-knn --quiet \
      > "$OUT/logs/compare.log" 2>&1 || { echo "gpu_converged: compare failed"; tail -5 "$OUT/logs/compare.log"; }
fi
compare_s=$(since "$t0")

# 5. summary -----------------------------------------------------------------------------
total_s=$(since "$start")
"$PY" - "$OUT" <<EOF
import json, math, statistics, sys
from pathlib import Path
from supmim.experiments.verdict import t_interval

out = Path(sys.argv[1])
seeds = [int(s) for s in "$SEEDS".split()]
bench = json.loads((out / "bench.json").read_text()) if (out / "bench.json").is_file() else {}
step, flops = bench.get("step_seconds", {}), bench.get("flops_per_step", {})
peak = bench.get("peak_tflops")
mfu = dict(bench.get("mfu") or {})
if peak and "plain" in flops and "trainer" in step:  # the trainer runs the plain loop's FLOPs
    mfu["trainer"] = flops["plain"] / step["trainer"] / 1e12 / peak
runs = {}
for s in seeds:
    for arm in ("baseline", "mim"):
        p = out / "compare" / f"{arm}_seed{s}" / "summary.json"
        summ = json.loads(p.read_text()) if p.is_file() else {}
        runs[f"{arm}_seed{s}"] = {
            "arm": arm, "seed": s, "finished": bool(summ),
            "test_top1": summ.get("test", {}).get("top1"),
            "val_top1": summ.get("val", {}).get("top1"), "steps": summ.get("steps"),
            "epochs_done": summ.get("epochs_done"), "train_seconds": summ.get("train_seconds"),
            "mean_step_seconds": summ.get("mean_step_seconds")}
rcs = {}
for line in (out / "runs_rc.txt").read_text().split("\n"):
    if line.strip():
        name, rc, _ = line.split()
        rcs[name] = int(rc)
for name, r in runs.items():
    r["rc"] = rcs.get(name)

def arm_stats(arm, key="test_top1"):
    v = [r[key] for r in runs.values() if r["arm"] == arm and r[key] is not None]
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "n": len(v)} if v else None

paired = {s: runs[f"mim_seed{s}"]["test_top1"] - runs[f"baseline_seed{s}"]["test_top1"]
          for s in seeds if runs[f"mim_seed{s}"]["test_top1"] is not None
          and runs[f"baseline_seed{s}"]["test_top1"] is not None}
vals = list(paired.values())
ci = t_interval(vals) if len(vals) > 1 else None
delta = {"mean": statistics.fmean(vals) if vals else None,
         "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals),
         "ci95": list(ci) if ci else None, "per_seed": paired}
cmp_path = out / "compare" / "compare.json"
cmp = json.loads(cmp_path.read_text()) if cmp_path.is_file() else {}
base = arm_stats("baseline")
runs_s = float("$runs_s")
cond = (f"{bench.get('device', '?')}, amp {bench.get('amp', '?')}, compiled "
        f"{bench.get('config', {}).get('compile')}")

def f(v, fmt="{:.3f}"):
    return fmt.format(v) if isinstance(v, (int, float)) else "-"

def target(name, value, ok, want, note=""):
    good = value is not None and isinstance(value, (int, float)) and math.isfinite(value) and ok
    return {"target": name, "value": value, "want": want, "status": "PASS" if good else "MISS",
            "note": note}

ratio_tp = bench.get("ratio_trainer_over_plain_throughput")
ratio_mim = bench.get("ratio_mim_over_sup_step_time")
no_peak = "" if peak else "no MFU: the device's peak TFLOP/s is unknown (CPU)"
targets = [
    target("bench trainer / plain throughput", ratio_tp, (ratio_tp or 0) >= 0.98, ">= 0.98", cond),
    target("bench plain MFU", mfu.get("plain"), (mfu.get("plain") or 0) >= 0.40, ">= 0.40",
           no_peak or cond),
    target("bench trainer MFU", mfu.get("trainer"), (mfu.get("trainer") or 0) >= 0.40, ">= 0.40",
           no_peak or cond + "; the plain step's FLOPs over the trainer's step time"),
    target("bench MIM / supervised step time", ratio_mim, (ratio_mim or 9) <= 1.35, "<= 1.35",
           cond),
    target("six runs wall time (s)", runs_s,
           runs_s <= 600 and all(r["finished"] for r in runs.values()), "<= 600, all finished",
           f"{sum(r['finished'] for r in runs.values())} of {len(runs)} finished"),
    target("baseline test top-1 (%), mean of seeds", base and base["mean"],
           bool(base) and base["mean"] >= 85.0, ">= 85",
           "seeds " + ", ".join(f(r["test_top1"], "{:.2f}") for r in runs.values()
                                if r["arm"] == "baseline")
           + f"; std {f(base and base['std'], '{:.2f}')}; compare's convergence verdict: "
           + str((cmp.get("convergence") or {}).get("baseline", {}).get("converged", "-"))),
    target("MIM - baseline test top-1 (points), paired", delta["mean"],
           bool(ci) and ci[0] > 0, "95% t-interval above 0",
           "std " + f(delta["std"], "{:.2f}") + ", 95% interval "
           + ("[" + ", ".join(f"{v:+.2f}" for v in ci) + "]" if ci else "-") + ", per seed "
           + ", ".join(f"{s}: {v:+.2f}" for s, v in paired.items())),
]
result = {"dry_run": "$DRY" == "1", "data": "$DATA", "device": "$DEVICE", "loader": "$LOADER",
          "epochs": int("$EPOCHS"), "seeds": seeds,
          "bench": {"device": bench.get("device"), "amp": bench.get("amp"),
                    "compiled": bench.get("config", {}).get("compile"),
                    "batch": bench.get("config", {}).get("batch"),
                    "images_per_s": bench.get("images_per_s"), "step_seconds": step,
                    "ratio_trainer_over_plain_throughput": ratio_tp,
                    "ratio_mim_over_sup_step_time": ratio_mim, "mfu": mfu or None,
                    "achieved_tflops": bench.get("achieved_tflops"),
                    "peak_memory_bytes": bench.get("peak_memory_bytes"),
                    "target_share_of_mim_step": bench.get("target_share_of_mim_step")},
          "runs": runs, "baseline_test_top1": base, "mim_test_top1": arm_stats("mim"),
          "delta_mim_minus_baseline_test_top1": delta,
          "compare_converged": cmp.get("converged"), "compare_convergence": cmp.get("convergence"),
          "compare_step_time_ratio": cmp.get("step_time_ratio_mim_over_baseline"),
          "seconds": {"bench": float("$bench_s"), "tokenizer": float("$tokenizer_s"),
                      "six_runs": runs_s, "compare": float("$compare_s"),
                      "total_before_summary": float("$total_s")},
          "targets": targets}
(out / "gpu_converged.json").write_text(json.dumps(result, indent=2) + "\n")

lines = [f"# gpu_converged ({'DRY RUN, toy sizes: numbers mean nothing' if result['dry_run'] else cond})",
         "", "| target | value | want | status | note |", "| --- | --- | --- | --- | --- |"]
lines += [f"| {t['target']} | {f(t['value'])} | {t['want']} | **{t['status']}** | {t['note']} |"
          for t in targets]
lines += ["", "| run | test top-1 (%) | val top-1 (%) | epochs | train s | rc |",
          "| --- | --- | --- | --- | --- | --- |"]
lines += [f"| {n} | {f(r['test_top1'], '{:.2f}')} | {f(r['val_top1'], '{:.2f}')} | "
          f"{r['epochs_done']} | {f(r['train_seconds'], '{:.0f}')} | {r['rc']} |"
          for n, r in runs.items()]
sec = result["seconds"]
lines += ["", "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in sec.items())]
(out / "gpu_converged.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "gpu_converged wall time: $(since "$start") s"
