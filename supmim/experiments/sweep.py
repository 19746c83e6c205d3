"""``supmim sweep``: a cartesian grid of config values, one shared recipe, a table you can trust.

Every arm runs the same recipe (steps, data order, seeds); only the swept keys differ. A
supervised baseline arm (``mim.enabled=false``) is added unless the grid sweeps
``mim.enabled`` itself or ``baseline=False`` (one per value of each swept key outside
``mim.*``, such as ``model.global_pool``); deltas are to the matching one. Finished runs are
reused and interrupted ones resumed, so a sweep is re-run with the same command until it is
complete.

Per arm: test top-1 (mean +- std over seeds), weighted kNN top-1 (DINO protocol, k=20,
T=0.07: the training images as the bank, the test split as queries, eval preprocessing),
training wall time. Output: ``sweep.json``, ``sweep.md``, ``sweep_<key>.png`` per grid key and
``sweep_arms.png`` (every arm as a bar). Where the arm-seeds run (this machine, or one SLURM job
each) is the launcher's business: :mod:`supmim.experiments.launchers`.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import statistics
from pathlib import Path
from typing import Any

from supmim.experiments.compare import (format_stat, run_arm,  # noqa: F401 (run_arm: re-exported)
                                        seed_stats)
from supmim.experiments.launchers import (ArmSeed, Launcher, LocalLauncher, collect,
                                          recorded_jobs, run_arm_seed, run_state)
from supmim.experiments.verdict import knn_top1  # noqa: F401 (re-exported)
from supmim.config import RunConfig, parse_override, save_config, set_key, validate
from supmim.errors import ConfigError
from supmim.files import atomic_write_text, write_json

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


def parse_arm(item: str) -> dict[str, Any]:
    """``"mim.target=pixel;mim.norm_pix=false"`` -> ``{"mim.target": "pixel", ...}`` (typed):
    one explicit arm, for studies whose arms are not a cartesian product."""
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in item.split(";"))):
        key, value = parse_override(part)
        if key in values:
            raise ConfigError(f"--arm '{item}' sets '{key}' twice")
        values[key] = value
    if not values:
        raise ConfigError(f"--arm '{item}' must look like key=v;key2=v2, e.g. "
                          "mim.target=pixel;mim.weight=0.5")
    return values


def arm_name(values: dict[str, Any]) -> str:
    """A folder-safe name: ``mim.mask_ratio=0.5,model.global_pool=token``."""
    text = ",".join(f"{k}={v}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)


def arms_of(cfg: RunConfig, grid: dict[str, list[Any]], baseline: bool,
            explicit: list[dict[str, Any]] | None = None
            ) -> list[tuple[str, dict[str, Any], RunConfig]]:
    """(name, swept values, config) of every arm: the baseline, the grid's cartesian product
    (if a grid is given) and the ``explicit`` arms (key -> value dicts; an optional "name"
    entry labels the arm); every config is validated (with seed 0
    in ``{seed}`` placeholders) before any arm runs."""
    arms = []
    if baseline and "mim.enabled" not in grid:
        # One supervised baseline per setting of the swept keys that change the supervised
        # recipe too (e.g. model.global_pool): MIM arms are compared with like.
        shared = [k for k in grid if not k.startswith("mim.")]
        for combo in itertools.product(*(grid[k] for k in shared)):
            values = dict(zip(shared, combo))
            base = copy.deepcopy(cfg)
            for k, v in values.items():
                set_key(base, k, v)
            base.mim.enabled = False
            name = ",".join([BASELINE] + ([arm_name(values)] if values else []))
            arms.append((name, {**values, "mim.enabled": False}, base))
    keys = list(grid)
    combos = [dict(zip(keys, c)) for c in itertools.product(*(grid[k] for k in keys))] \
        if keys else []
    for spec in combos + list(explicit or []):
        values = {k: v for k, v in spec.items() if k != "name"}  # "name": the arm's label
        arm_cfg = copy.deepcopy(cfg)
        try:
            for k, v in values.items():
                set_key(arm_cfg, k, v)
            validate(arm_for_seed(arm_cfg, values, 0))
        except ConfigError as err:
            raise ConfigError(f"sweep arm {arm_name(values)}: {err}") from err
        arms.append((str(spec.get("name") or arm_name(values)), values, arm_cfg))
    names = [a[0] for a in arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep arms repeat: {sorted(n for n in names if names.count(n) > 1)}")
    return arms


def arm_for_seed(arm_cfg: RunConfig, values: dict[str, Any], seed: int) -> RunConfig:
    """The arm's config for one seed: ``train.seed`` and any ``{seed}`` placeholders in string
    values replaced (e.g. ``train.init_from=runs/pre/seed{seed}``)."""
    run_cfg = copy.deepcopy(arm_cfg)
    run_cfg.train.seed = seed
    for k, v in values.items():
        if isinstance(v, str) and "{seed}" in v:
            set_key(run_cfg, k, v.replace("{seed}", str(seed)))
    return run_cfg


def sweep(cfg: RunConfig, out_dir: str | Path, grid: dict[str, list[Any]], seeds: list[int],
          *, arms: list[dict[str, Any]] | None = None, baseline: bool = True, knn: bool = True,
          progress: bool = True, parallel: int = 1, report_only: bool = False,
          launcher: Launcher | None = None) -> dict[str, Any]:
    """Run every arm x seed (reusing finished runs); write sweep.json, sweep.md, plots.

    Arms: the baseline(s), the cartesian product of ``grid`` and the explicit ``arms`` (each
    a dict of key -> value; string values may hold ``{seed}``). Deltas are to the baseline
    with the same values of the swept non-``mim.*`` keys. ``parallel`` > 1 runs that many
    arm-seeds at once in separate processes (small models on a big GPU or many cores).
    ``report_only``: train nothing, tabulate the finished runs (missing seeds are left out,
    the counts shown and each missing arm-seed listed with its state). ``launcher``: where
    the arm-seeds run (default: :class:`LocalLauncher` with ``parallel``); one that returns
    without waiting (``--no-wait``) gives ``{"submitted": [...]}`` and writes no report."""
    out = Path(out_dir)
    all_arms = arms_of(cfg, grid, baseline, arms)
    if not any(not name.startswith(BASELINE) for name, _, _ in all_arms):
        raise ConfigError("sweep: give at least one --grid key=v1,v2 or --arm k=v;k2=v2")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    jobs = [ArmSeed(name, seed, arm_for_seed(arm_cfg, values, seed), out / name / f"seed{seed}")
            for name, values, arm_cfg in all_arms for seed in seeds]
    launcher = launcher or LocalLauncher(parallel)
    done = collect(jobs, knn) if report_only else launcher.launch(jobs, knn=knn,
                                                                  progress=progress)
    if done is None:  # submitted without waiting
        return {"submitted": True, "out": str(out)}
    rows = []
    for name, values, arm_cfg in all_arms:
        per_seed = [r for r in (done[(name, seed)] for seed in seeds) if r is not None]
        rows.append({"arm": name, "values": values, "seeds": per_seed,
                     **{m: seed_stats([r[m] for r in per_seed if r[m] is not None])
                        for m in ("test_top1", "knn_top1", "train_seconds")
                        if any(r[m] is not None for r in per_seed)}})
    bases = {name: arm_cfg for name, _, arm_cfg in all_arms if name.startswith(BASELINE)}
    by_name = {r["arm"]: r for r in rows}
    for (name, values, arm_cfg), r in zip(all_arms, rows):
        base = _baseline_of(arm_cfg, bases, list(grid))
        if base is None:
            continue
        r["baseline"] = base
        for metric in ("test_top1", "knn_top1"):
            delta = _paired_delta(r["seeds"], by_name[base]["seeds"], metric)
            if delta is not None:
                r[f"delta_{metric}"] = delta
    keys = list(grid) + [k for a in arms or [] for k in a if k not in grid and k != "name"]
    result = {"grid": {k: list(v) for k, v in grid.items()}, "keys": list(dict.fromkeys(keys)),
              "seeds": seeds, "arms": rows, "baselines": list(bases), "out": str(out),
              "missing": missing_runs(jobs, done, out),
              "failed_jobs": list(getattr(launcher, "failures", []))}
    write_json(out / "sweep.json", result)
    atomic_write_text(out / "sweep.md", render_markdown(result))
    plot_sweep(result, out)
    return result


def _paired_delta(arm: list[dict[str, Any]], base: list[dict[str, Any]], metric: str
                  ) -> float | None:
    """Mean over the seeds both have of (arm - baseline): paired, so a seed missing from one
    side (``--report-only`` mid-sweep) does not compare different seeds."""
    ref = {r["seed"]: r[metric] for r in base if r[metric] is not None}
    diffs = [r[metric] - ref[r["seed"]] for r in arm
             if r[metric] is not None and r["seed"] in ref]
    return statistics.fmean(diffs) if diffs else None


def _baseline_of(arm_cfg: RunConfig, bases: dict[str, RunConfig], keys: list[str]
                 ) -> str | None:
    """The baseline arm whose swept non-MIM keys equal this arm's."""
    def value(c: RunConfig, key: str) -> Any:
        section, name = key.split(".")
        return getattr(getattr(c, section), name)
    shared = [k for k in keys if not k.startswith("mim.")]
    for name, base in bases.items():
        if all(value(base, k) == value(arm_cfg, k) for k in shared):
            return name
    return None


_run_job = run_arm_seed  # the name the fault tests use


def missing_runs(jobs: list[ArmSeed], done: dict[tuple[str, int], Any], out: Path
                 ) -> list[dict[str, Any]]:
    """Every arm-seed without a result: its run, its state and, for a submitit sweep, its
    job and log."""
    submitted = recorded_jobs(out)
    missing = []
    for j in jobs:
        if done.get(j.key) is not None:
            continue
        entry = {"arm": j.arm, "seed": j.seed, "run": str(j.run_dir),
                 "state": run_state(j.run_dir)}
        job = submitted.get(f"{j.arm}/seed{j.seed}")
        if job:
            entry.update(job=job["job_id"], log=job["stderr"])
        missing.append(entry)
    return missing


def render_markdown(result: dict[str, Any]) -> str:
    keys = result.get("keys", list(result["grid"]))
    many = len(result.get("baselines", [])) > 1
    head = keys + ["test top-1 (%)", "kNN top-1 (%)", "delta test", "delta kNN",
                   *(["vs"] if many else []), "train min"]
    lines = [f"Seeds: {result['seeds']}; mean +- std over seeds; deltas are to the "
             "supervised baseline" + (" named in 'vs'" if many else "") +
             ", paired by seed (mean of per-seed differences).", "",
             "| " + " | ".join(["arm"] + head) + " |", "|" + "---|" * (len(head) + 1)]
    for r in result["arms"]:
        vals = [str(r["values"].get(k, "")) for k in keys]
        deltas = [f"{r[m]:+.2f}" if m in r else "-" for m in ("delta_test_top1", "delta_knn_top1")]
        minutes = f"{r['train_seconds']['mean'] / 60:.1f}" if "train_seconds" in r else "-"
        n = len(result["seeds"])
        stats = [format_stat(r.get("test_top1"), expected=n),
                 format_stat(r.get("knn_top1"), expected=n)]
        lines.append("| " + " | ".join([r["arm"]] + vals + stats + deltas
                                       + ([r.get("baseline", "-")] if many else [])
                                       + [minutes]) + " |")
    return "\n".join(lines + _missing_lines(result)) + "\n"


def _missing_lines(result: dict[str, Any]) -> list[str]:
    """The table of arm-seeds without a result (none: no lines)."""
    missing = result.get("missing") or []
    if not missing:
        return []
    total = len(result["arms"]) * len(result["seeds"])
    lines = ["", f"Not finished: {len(missing)} of {total} arm-seeds (left out of the table "
             "above; re-run the same command to run or resume them).", "",
             "| arm | seed | state | job | log |", "|---|---|---|---|---|"]
    for m in missing:
        lines.append(f"| {m['arm']} | {m['seed']} | {m['state']} | {m.get('job', '-')} | "
                     f"{m.get('log', '-')} |")
    return lines


def plot_sweep(result: dict[str, Any], out: Path) -> None:
    """One PNG per swept key: each metric against the key's values, one line per
    combination of the other keys; the baseline as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = [r for r in result["arms"] if not r["arm"].startswith(BASELINE)]
    bases = [r for r in result["arms"] if r["arm"].startswith(BASELINE)]
    for key in result["grid"]:
        metrics = [m for m in ("test_top1", "knn_top1") if any(m in r for r in arms)]
        if not metrics:  # nothing finished yet (--report-only early in a sweep)
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            groups: dict[str, list[dict[str, Any]]] = {}
            for r in (r for r in arms if key in r["values"]):
                rest = ",".join(f"{k}={v}" for k, v in r["values"].items() if k != key)
                groups.setdefault(rest, []).append(r)
            for label, members in groups.items():
                members = [m for m in members if metric in m]
                xs = [str(m["values"][key]) for m in members]
                ys = [m[metric]["mean"] for m in members]
                es = [m[metric]["std"] for m in members]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label or None)
            for style, base in zip(("--", ":", "-.", (0, (1, 4))), bases):
                if metric in base:
                    ax.axhline(base[metric]["mean"], ls=style, color="grey", label=base["arm"])
            ax.set_xlabel(key)
            ax.set_ylabel(metric.replace("_", " ") + " (%)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"sweep_{key.replace('.', '_')}.png", dpi=120)
        plt.close(fig)
    plot_arms(result, out / "sweep_arms.png")


def plot_arms(result: dict[str, Any], path: Path) -> None:
    """Every arm as a bar (mean, std over seeds as error bars) for each metric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["arms"]
    metrics = [m for m in ("test_top1", "knn_top1") if any(m in r for r in rows)]
    if not metrics:
        return
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.8 * len(rows)), 4.5 * len(metrics)),
                             squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        have = [r for r in rows if metric in r]
        if not have:
            continue
        ax.bar(range(len(have)), [r[metric]["mean"] for r in have],
               yerr=[r[metric]["std"] for r in have], capsize=3, color="tab:blue")
        ax.set_xticks(range(len(have)), [r["arm"] for r in have], rotation=30, ha="right",
                      fontsize=7)
        lo = min(r[metric]["mean"] - r[metric]["std"] for r in have)
        ax.set_ylim(max(0.0, lo - 5.0), None)
        ax.set_ylabel(metric.replace("_", " ") + " (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
