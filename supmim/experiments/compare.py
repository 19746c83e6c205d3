"""Baseline vs MIM: the same recipe, seeds and number of steps; the only difference is the
MIM branch (``mim.enabled``). Finished runs are reused, interrupted ones resumed."""

from __future__ import annotations

import copy
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from supmim.config import RunConfig, save_config
from supmim.run import RunDir
from supmim.run.lock import RunLock
from supmim.training import train
from supmim.files import atomic_write_text, write_json
from supmim.plots import plot_arm_curves

ARMS = ("baseline", "mim")


def arm_config(cfg: RunConfig, arm: str, seed: int) -> RunConfig:
    arm_cfg = copy.deepcopy(cfg)
    arm_cfg.mim.enabled = arm == "mim"
    arm_cfg.train.seed = seed
    return arm_cfg


def run_arm(cfg: RunConfig, run_dir: Path, progress: bool) -> dict[str, Any]:
    """Train one arm, or reuse / resume what an earlier call left. The arm's directory is
    locked first: RunLocked when another process is training it."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    with RunLock(run_dir):
        if summary.is_file():  # finished by another process meanwhile
            return json.loads(summary.read_text())
        resume = RunDir(run_dir).has_checkpoints()
        if not resume:  # started but never finished an epoch: start over (keep the lock)
            for path in run_dir.iterdir():
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.name != RunLock.NAME:
                    path.unlink()
        return train(cfg, run_dir, resume=resume, progress=progress, lock=False)


def seed_stats(values: list[float]) -> dict[str, float]:
    """Mean, sample std (0 for one value) and n of a metric over seeds."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _metric(summary: dict[str, Any], split: str, key: str = "top1") -> float | None:
    return summary.get(split, {}).get(key)


def compare(cfg: RunConfig, out_dir: str | Path, seeds: list[int], *,
            progress: bool = True) -> dict[str, Any]:
    """Run both arms for every seed; write compare.json, compare.md and compare_curves.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(cfg)
    if cfg.mim.target == "vq" and cfg.mim.tokenizer == "auto":  # one for every arm
        from supmim.training import provision_tokenizer
        cfg = provision_tokenizer(cfg, RunDir(out), progress=progress)
    save_config(cfg, out / "config.yaml")
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for arm in ARMS:
            run_dir = out / f"{arm}_seed{seed}"
            if progress:
                print(f"[compare] {arm}, seed {seed} -> {run_dir}", flush=True)
            summary = run_arm(arm_config(cfg, arm, seed), run_dir, progress)
            runs.append({"arm": arm, "seed": seed, "run": str(run_dir),
                         "test_top1": _metric(summary, "test"),
                         "test_top5": _metric(summary, "test", "top5"),
                         "val_top1": _metric(summary, "val"),
                         "mean_step_seconds": summary["mean_step_seconds"],
                         "train_seconds": summary["train_seconds"], "steps": summary["steps"]})
    result = summarize(runs, cfg)
    write_json(out / "compare.json", result)
    atomic_write_text(out / "compare.md", render_markdown(result))
    plot_arm_curves({arm: [Path(r["run"]) for r in runs if r["arm"] == arm] for arm in ARMS},
                    out / "compare_curves.png")
    return result


def summarize(runs: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    """Per-arm mean and std, the MIM - baseline delta, per-seed deltas, step-time ratio."""
    arms: dict[str, Any] = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        arms[arm] = {key: seed_stats([r[key] for r in mine])
                     for key in ("test_top1", "val_top1", "mean_step_seconds", "train_seconds")
                     if all(r[key] is not None for r in mine) and mine}
    by_seed = {(r["arm"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    paired = [by_seed[("mim", s)]["test_top1"] - by_seed[("baseline", s)]["test_top1"]
              for s in seeds if by_seed[("mim", s)]["test_top1"] is not None]
    delta = {"test_top1": seed_stats(paired)} if paired else {}
    ratio = (arms["mim"]["mean_step_seconds"]["mean"]
             / arms["baseline"]["mean_step_seconds"]["mean"])
    return {"runs": runs, "arms": arms, "delta_mim_minus_baseline": delta,
            "per_seed_delta_test_top1": dict(zip(seeds, paired)),
            "step_time_ratio_mim_over_baseline": ratio,
            "recipe": {"data": cfg.data.data, "model": cfg.model.name,
                       "img_size": cfg.model.img_size, "patch_size": cfg.model.patch_size,
                       "epochs": cfg.train.epochs, "target": cfg.mim.target,
                       "mim_weight": cfg.mim.weight, "mask_ratio": cfg.mim.mask_ratio,
                       "decoder_depth": cfg.mim.decoder_depth, "mode": cfg.mim.mode,
                       "masking": cfg.mim.masking}}


def render_markdown(result: dict[str, Any]) -> str:
    """A small table: one row per arm, then the delta and the step-time ratio."""
    def cell(stats: dict[str, float] | None, fmt: str = "{:.2f}") -> str:
        if not stats:
            return "-"
        return (fmt.format(stats["mean"]) + (" +- " + fmt.format(stats["std"])
                                             if stats["n"] > 1 else ""))
    recipe = result["recipe"]
    lines = [
        "# Baseline vs MIM",
        "",
        f"Data `{recipe['data']}`, {recipe['model']} at {recipe['img_size']} px / patch "
        f"{recipe['patch_size']}, {recipe['epochs']} epochs; MIM target `{recipe['target']}`, "
        f"lambda {recipe['mim_weight']}, mask ratio {recipe['mask_ratio']} ({recipe['masking']}, "
        f"{recipe['mode']}), decoder depth {recipe['decoder_depth']}.",
        "",
        "| arm | seeds | test top-1 (%) | val top-1 (%) | step time (s) | train time (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arm, stats in result["arms"].items():
        seeds = [str(r["seed"]) for r in result["runs"] if r["arm"] == arm]
        lines.append(f"| {arm} | {', '.join(seeds)} | {cell(stats.get('test_top1'))} | "
                     f"{cell(stats.get('val_top1'))} | "
                     f"{cell(stats.get('mean_step_seconds'), '{:.3f}')} | "
                     f"{cell(stats.get('train_seconds'), '{:.0f}')} |")
    delta = result["delta_mim_minus_baseline"].get("test_top1")
    lines += ["", f"MIM - baseline, test top-1 (paired by seed): **{cell(delta)}** points "
              f"(per seed: {', '.join(f'{d:+.2f}' for d in result['per_seed_delta_test_top1'].values())}).",
              f"Step time ratio MIM / baseline: **{result['step_time_ratio_mim_over_baseline']:.2f}x**.",
              "", "![validation curves](compare_curves.png)", ""]
    return "\n".join(lines)
