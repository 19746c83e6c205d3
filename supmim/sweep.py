"""``supmim sweep``: a cartesian grid of config values, one shared recipe, a table you can trust.

Every arm runs the same recipe (steps, data order, seeds); only the swept keys differ. A
supervised baseline arm (``mim.enabled=false``) is added unless the grid sweeps
``mim.enabled`` itself or ``baseline=False``; deltas are to it. Finished runs are reused and
interrupted ones resumed, so a sweep is re-run with the same command until it is complete.

Per arm: test top-1 (mean +- std over seeds), weighted kNN top-1 (DINO protocol, k=20,
T=0.07: the training images as the bank, the test split as queries, eval preprocessing),
training wall time. Output: ``sweep.json``, ``sweep.md`` and ``sweep_<key>.png`` per key.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import statistics
from pathlib import Path
from typing import Any

from supmim.compare import run_arm
from supmim.config import RunConfig, parse_override, save_config, set_key, validate
from supmim.engine.checkpoint import atomic_write_text
from supmim.errors import ConfigError

BASELINE = "baseline"


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["mim.mask_ratio=0.5,0.75", ...]`` -> ``{"mim.mask_ratio": [0.5, 0.75]}`` (typed)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid '{item}' must look like key=v1,v2,... e.g. "
                              "mim.mask_ratio=0.5,0.75")
        key = key.strip()
        if key in grid:
            raise ConfigError(f"--grid key '{key}' given twice; list all its values once")
        grid[key] = [parse_override(f"{key}={v.strip()}")[1] for v in values.split(",")]
    return grid


def arm_name(values: dict[str, Any]) -> str:
    """A folder-safe name: ``mim.mask_ratio=0.5,model.global_pool=token``."""
    text = ",".join(f"{k}={v}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)


def arms_of(cfg: RunConfig, grid: dict[str, list[Any]], baseline: bool
            ) -> list[tuple[str, dict[str, Any], RunConfig]]:
    """(name, swept values, config) of every arm; every config validated before any runs."""
    arms = []
    if baseline and "mim.enabled" not in grid:
        base = copy.deepcopy(cfg)
        base.mim.enabled = False
        arms.append((BASELINE, {"mim.enabled": False}, base))
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        arm_cfg = copy.deepcopy(cfg)
        for k, v in values.items():
            set_key(arm_cfg, k, v)
        try:
            validate(arm_cfg)
        except ConfigError as err:
            raise ConfigError(f"sweep arm {arm_name(values)}: {err}") from err
        arms.append((arm_name(values), values, arm_cfg))
    return arms


def knn_top1(run_dir: Path, cfg: RunConfig, k: int = 20, progress: bool = False) -> float:
    """Weighted kNN top-1 (%) of a finished run's encoder; cached in ``knn.json``."""
    cache = run_dir / "knn.json"
    if cache.is_file():
        return float(json.loads(cache.read_text())["top1"])
    import numpy as np
    import torch

    from supmim.data import ImageDataset, build_eval_transform, labels_of, resolve_data
    from supmim.engine.trainer import split_indices
    from supmim.evaluation.features import extract_features, l2_normalize, make_loader
    from supmim.evaluation.knn import knn_evaluate
    from supmim.export import load_run_encoder
    vit, run_cfg, _ = load_run_encoder(run_dir)
    stats = json.loads((run_dir / "data_stats.json").read_text())
    d, m = run_cfg.data, run_cfg.model
    src = resolve_data(d.data, root=d.root, download=False, cache_dir=d.cache_dir)
    if src.test is None:
        raise ConfigError(f"sweep kNN needs a test split; '{d.data}' has none")
    tf = build_eval_transform(m.img_size, stats["mean"], stats["std"], crop_pct=d.crop_pct,
                              interpolation=d.interpolation)
    train_idx, _ = split_indices(run_cfg, labels_of(src.train))
    device = torch.device("cpu")
    feats = []
    for ds in (ImageDataset(src.train, tf, m.in_chans, indices=train_idx, on_error="skip"),
               ImageDataset(src.test, tf, m.in_chans, on_error="skip")):
        x, y = extract_features(vit, make_loader(ds, 256, 0, device), device, progress=progress)
        keep = y >= 0
        feats.append((l2_normalize(torch.from_numpy(x[keep])).numpy(), y[keep]))
    (bank, bank_y), (query, query_y) = feats
    result = knn_evaluate(bank, bank_y, query, query_y, ks=(k,),
                          num_classes=len(src.classes))[k]
    atomic_write_text(cache, json.dumps({"k": k, "temperature": 0.07, **result}))
    return float(result["top1"])


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def sweep(cfg: RunConfig, out_dir: str | Path, grid: dict[str, list[Any]], seeds: list[int],
          *, baseline: bool = True, knn: bool = True, progress: bool = True) -> dict[str, Any]:
    """Run every arm x seed (reusing finished runs); write sweep.json, sweep.md, plots."""
    out = Path(out_dir)
    arms = arms_of(cfg, grid, baseline)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    rows = []
    for name, values, arm_cfg in arms:
        per_seed = []
        for seed in seeds:
            run_cfg = copy.deepcopy(arm_cfg)
            run_cfg.train.seed = seed
            run_dir = out / name / f"seed{seed}"
            if progress:
                print(f"[sweep] {name}, seed {seed} -> {run_dir}", flush=True)
            summary = run_arm(run_cfg, run_dir, progress)
            per_seed.append({"seed": seed, "run": str(run_dir),
                             "test_top1": summary.get("test", {}).get("top1"),
                             "knn_top1": knn_top1(run_dir, run_cfg) if knn else None,
                             "train_seconds": summary["train_seconds"]})
        rows.append({"arm": name, "values": values, "seeds": per_seed,
                     **{m: _stats([r[m] for r in per_seed if r[m] is not None])
                        for m in ("test_top1", "knn_top1", "train_seconds")
                        if any(r[m] is not None for r in per_seed)}})
    base = next((r for r in rows if r["arm"] == BASELINE), None)
    for r in rows:
        if base is not None:
            r["delta_test_top1"] = r["test_top1"]["mean"] - base["test_top1"]["mean"]
    result = {"grid": {k: list(v) for k, v in grid.items()}, "seeds": seeds, "arms": rows,
              "baseline": BASELINE if base is not None else None}
    atomic_write_text(out / "sweep.json", json.dumps(result, indent=2))
    atomic_write_text(out / "sweep.md", render_markdown(result))
    plot_sweep(result, out)
    return result


def _fmt(stat: dict[str, float] | None, digits: int = 2) -> str:
    if not stat:
        return "-"
    return f"{stat['mean']:.{digits}f} +- {stat['std']:.{digits}f}" if stat["n"] > 1 \
        else f"{stat['mean']:.{digits}f}"


def render_markdown(result: dict[str, Any]) -> str:
    keys = list(result["grid"])
    head = keys + ["test top-1 (%)", "kNN top-1 (%)", "delta vs baseline", "train min"]
    lines = [f"Seeds: {result['seeds']}; mean +- std over seeds.", "",
             "| " + " | ".join(["arm"] + head) + " |", "|" + "---|" * (len(head) + 1)]
    for r in result["arms"]:
        vals = [str(r["values"].get(k, "")) for k in keys]
        delta = f"{r['delta_test_top1']:+.2f}" if "delta_test_top1" in r else "-"
        minutes = f"{r['train_seconds']['mean'] / 60:.1f}" if "train_seconds" in r else "-"
        lines.append("| " + " | ".join([r["arm"]] + vals + [_fmt(r.get("test_top1")),
                                                           _fmt(r.get("knn_top1")), delta,
                                                           minutes]) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(result: dict[str, Any], out: Path) -> None:
    """One PNG per swept key: each metric against the key's values, one line per
    combination of the other keys; the baseline as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = [r for r in result["arms"] if r["arm"] != BASELINE]
    base = next((r for r in result["arms"] if r["arm"] == BASELINE), None)
    for key in result["grid"]:
        metrics = [m for m in ("test_top1", "knn_top1") if any(m in r for r in arms)]
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            groups: dict[str, list[dict[str, Any]]] = {}
            for r in arms:
                rest = ",".join(f"{k}={v}" for k, v in r["values"].items() if k != key)
                groups.setdefault(rest, []).append(r)
            for label, members in groups.items():
                xs = [str(m["values"][key]) for m in members]
                ys = [m[metric]["mean"] for m in members]
                es = [m[metric]["std"] for m in members]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label or None)
            if base is not None and metric in base:
                ax.axhline(base[metric]["mean"], ls="--", color="grey", label="baseline")
            ax.set_xlabel(key)
            ax.set_ylabel(metric.replace("_", " ") + " (%)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"sweep_{key.replace('.', '_')}.png", dpi=120)
        plt.close(fig)
