"""Markdown table of the MIM-target ablation: pixel / HOG runs of benchmarks/target_ablation.sh
next to the VQ and baseline arms of benchmarks/cifar10_compare.sh (same recipe, same seeds).

Usage: .venv/bin/python benchmarks/target_ablation_table.py [ABLATION_DIR] [COMPARE_JSON]
       (defaults: runs/ablation_target, runs/bench_cifar10/compare/compare.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from supmim.experiments.compare import format_stat, seed_stats


def fmt(values: list[float]) -> str:
    return format_stat(seed_stats(values) if values else None)


def main() -> None:
    ablation = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation_target")
    compare = json.loads(Path(sys.argv[2] if len(sys.argv) > 2 else
                              "runs/bench_cifar10/compare/compare.json").read_text())
    rows: dict[str, dict[int, dict]] = {}
    for r in compare["runs"]:
        arm = "VQ tokens (f4, 512 codes)" if r["arm"] == "mim" else "baseline (no MIM)"
        rows.setdefault(arm, {})[r["seed"]] = {"test": r["test_top1"], "val": r["val_top1"],
                                               "step": r["mean_step_seconds"]}
    for target, name in (("pixel", "normalised pixels (MAE)"), ("hog", "HOG (MaskFeat)")):
        for run in sorted(ablation.glob(f"{target}_seed*")):
            summary = run / "summary.json"
            if not summary.is_file():
                continue
            s = json.loads(summary.read_text())
            seed = int(run.name.split("seed")[1])
            rows.setdefault(name, {})[seed] = {"test": s["test"]["top1"], "val": s["val"]["top1"],
                                               "step": s["mean_step_seconds"]}
    seeds = sorted({seed for arm in rows.values() for seed in arm})
    print("| MIM target | seeds | test top-1 (%) | val top-1 (%) | per seed (test) |")
    print("| --- | --- | --- | --- | --- |")
    order = ["baseline (no MIM)", "VQ tokens (f4, 512 codes)", "normalised pixels (MAE)",
             "HOG (MaskFeat)"]
    for arm in order:
        if arm not in rows:
            continue
        got = rows[arm]
        have = [s for s in seeds if s in got]
        print(f"| {arm} | {', '.join(map(str, have))} | {fmt([got[s]['test'] for s in have])} | "
              f"{fmt([got[s]['val'] for s in have])} | "
              f"{', '.join(format(got[s]['test'], '.1f') for s in have)} |")
    # paired differences on the seeds every arm has
    base = rows.get("baseline (no MIM)", {})
    for arm in order[1:]:
        if arm in rows:
            common = [s for s in rows[arm] if s in base]
            diffs = [rows[arm][s]["test"] - base[s]["test"] for s in common]
            print(f"\n{arm} - baseline, test top-1, seeds {common}: "
                  f"{', '.join(f'{d:+.1f}' for d in diffs)}", end="")
    print()


if __name__ == "__main__":
    main()
