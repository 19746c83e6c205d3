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
from supmim.errors import ConfigError
from supmim.experiments.verdict import convergence, converged_line, knn_top1, t_interval
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


def format_stat(stat: dict[str, float] | None, digits: int = 2,
                expected: int | None = None) -> str:
    """A :func:`seed_stats` result as ``mean +- std`` (the mean alone for one seed, "-" for
    none), with ``(n=...)`` when it covers fewer seeds than ``expected``."""
    if not stat:
        return "-"
    text = f"{stat['mean']:.{digits}f} +- {stat['std']:.{digits}f}" if stat["n"] > 1 \
        else f"{stat['mean']:.{digits}f}"
    return text if expected is None or stat["n"] == expected else f"{text} (n={stat['n']})"


def _metric(summary: dict[str, Any], split: str, key: str = "top1") -> float | None:
    return summary.get(split, {}).get(key)


def compare(cfg: RunConfig, out_dir: str | Path, seeds: list[int], *,
            progress: bool = True, knn: bool = True) -> dict[str, Any]:
    """Run both arms for every seed; write compare.json, compare.md and compare_curves.png.
    ``knn``: also the weighted kNN top-1 (k = 20) of every arm's encoder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(cfg)
    if cfg.mim.target == "vq" and cfg.mim.tokenizer in (None, "auto"):  # one for all arms
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
            knn_top = _knn(run_dir) if knn else None
            runs.append({"arm": arm, "seed": seed, "run": str(run_dir),
                         "test_top1": _metric(summary, "test"), "knn_top1": knn_top,
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


def _knn(run_dir: Path) -> float | None:
    try:
        return knn_top1(run_dir)
    except ConfigError as err:  # no test split: the comparison stands on top-1 alone
        print(f"supmim: note: no kNN for {run_dir.name} ({err})", flush=True)
        return None


def summarize(runs: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    """Per-arm mean and std; the paired MIM - baseline deltas of test and kNN top-1, with a
    95% t-interval from 2 seeds on; per-seed deltas; step-time ratio; convergence."""
    arms: dict[str, Any] = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        arms[arm] = {key: seed_stats([r[key] for r in mine])
                     for key in ("test_top1", "knn_top1", "val_top1", "mean_step_seconds",
                                 "train_seconds")
                     if mine and all(r.get(key) is not None for r in mine)}
    by_seed = {(r["arm"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    delta: dict[str, Any] = {}
    per_seed: dict[str, dict[int, float]] = {}
    for metric in ("test_top1", "knn_top1"):
        pairs = {s: (by_seed[("mim", s)].get(metric), by_seed[("baseline", s)].get(metric))
                 for s in seeds}
        paired = {s: m - b for s, (m, b) in pairs.items() if m is not None and b is not None}
        if paired:
            values = list(paired.values())
            interval = t_interval(values)
            delta[metric] = {**seed_stats(values),
                             "ci95": list(interval) if interval is not None else None}
            per_seed[metric] = paired
    ratio = (arms["mim"]["mean_step_seconds"]["mean"]
             / arms["baseline"]["mean_step_seconds"]["mean"])
    verdicts = {arm: convergence([Path(r["run"]) for r in runs if r["arm"] == arm],
                                 cfg.train.epochs) for arm in ARMS}
    return {"runs": runs, "arms": arms, "delta_mim_minus_baseline": delta,
            "per_seed_delta_test_top1": per_seed.get("test_top1", {}),
            "per_seed_delta_knn_top1": per_seed.get("knn_top1", {}),
            "convergence": verdicts,
            "converged": all(v.get("converged") is not False for v in verdicts.values()),
            "step_time_ratio_mim_over_baseline": ratio,
            "recipe": {"data": cfg.data.data, "model": cfg.model.name,
                       "img_size": cfg.model.img_size, "patch_size": cfg.model.patch_size,
                       "epochs": cfg.train.epochs, "target": cfg.mim.target,
                       "mim_weight": cfg.mim.weight, "mask_ratio": cfg.mim.mask_ratio,
                       "decoder_depth": cfg.mim.decoder_depth, "mode": cfg.mim.mode,
                       "masking": cfg.mim.masking}}


def render_markdown(result: dict[str, Any]) -> str:
    """A small table (one row per arm), then the paired deltas with their intervals, the
    step-time ratio and each arm's convergence."""
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
        "| arm | seeds | test top-1 (%) | kNN top-1 (%) | val top-1 (%) | step time (s) "
        "| train time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, stats in result["arms"].items():
        seeds = [str(r["seed"]) for r in result["runs"] if r["arm"] == arm]
        lines.append(f"| {arm} | {', '.join(seeds)} | {cell(stats.get('test_top1'))} | "
                     f"{cell(stats.get('knn_top1'))} | {cell(stats.get('val_top1'))} | "
                     f"{cell(stats.get('mean_step_seconds'), '{:.3f}')} | "
                     f"{cell(stats.get('train_seconds'), '{:.0f}')} |")
    lines.append("")
    for metric, name in (("test_top1", "test top-1"), ("knn_top1", "kNN top-1 (k = 20)")):
        lines += [delta_line(result, metric, name)] if metric in \
            result["delta_mim_minus_baseline"] else []
    lines += [f"Step time ratio MIM / baseline: "
              f"**{result['step_time_ratio_mim_over_baseline']:.2f}x**.", ""]
    lines += [f"- {converged_line(arm, v)}" for arm, v in result.get("convergence", {}).items()]
    lines += ["", "![validation curves](compare_curves.png)", ""]
    return "\n".join(lines)


def delta_line(result: dict[str, Any], metric: str, name: str) -> str:
    """``MIM - baseline, NAME (paired by seed): **+x.xx +- s** points, 95% CI [lo, hi] ...``"""
    d = result["delta_mim_minus_baseline"][metric]
    text = f"MIM - baseline, {name} (paired by seed): **{d['mean']:+.2f}"
    text += f" +- {d['std']:.2f}** points" if d["n"] > 1 else "** points"
    if d.get("ci95"):
        lo, hi = d["ci95"]
        side = "above 0" if lo > 0 else "below 0" if hi < 0 else "includes 0"
        text += f", 95% t-interval [{lo:+.2f}, {hi:+.2f}] ({side}, {d['n']} seeds)"
    else:
        text += " (one seed: no interval; pass --seeds 0 1 2 for one)"
    per_seed = result.get(f"per_seed_delta_{metric}", {})
    return text + f"; per seed: {', '.join(f'{v:+.2f}' for v in per_seed.values())}."
