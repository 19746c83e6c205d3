"""Markdown table of the token-view ablation (benchmarks/token_views_ablation.sh): test and
kNN top-1 of the fresh-token arm and of each view cache (K views per image), per seed, mean
+- std over the seeds that finished, and the paired difference to fresh tokens (only over
seeds where both arms finished). Arms still running or not started are listed as missing,
so a partial ablation reports what it has.

Usage: .venv/bin/python benchmarks/token_views_table.py OUT [--views 4 8 16] [--seeds 0 1]
Writes OUT/token_views_ablation.json too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from supmim.experiments.compare import format_stat, seed_stats
from supmim.experiments.verdict import knn_top1


def fmt(values: list[float]) -> str:
    return format_stat(seed_stats(values) if values else None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--views", nargs="+", default=["4", "8", "16"])
    ap.add_argument("--seeds", nargs="+", default=["0", "1"])
    args = ap.parse_args()
    arms = ["fresh"] + [f"k{k}" for k in args.views]
    rows: dict[tuple[str, str], dict[str, float]] = {}
    missing = []
    for arm in arms:
        for s in args.seeds:
            run = args.out / "runs" / f"{arm}_seed{s}"
            if not (run / "summary.json").is_file():
                missing.append(f"{arm}_seed{s}")
                continue
            summary = json.loads((run / "summary.json").read_text())
            rows[arm, s] = {"test": summary["test"]["top1"], "knn": knn_top1(run),
                            "step_s": summary["mean_step_seconds"]}
    print("| arm | seeds | test top-1 (%) | kNN top-1 (%) | test - fresh | kNN - fresh | "
          "per seed (test / kNN) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arm in arms:
        done = [s for s in args.seeds if (arm, s) in rows]
        paired = [s for s in done if ("fresh", s) in rows]
        test = [rows[arm, s]["test"] for s in done]
        knn = [rows[arm, s]["knn"] for s in done]
        dt = [rows[arm, s]["test"] - rows["fresh", s]["test"] for s in paired]
        dk = [rows[arm, s]["knn"] - rows["fresh", s]["knn"] for s in paired]
        per = ", ".join(f"seed {s}: {rows[arm, s]['test']:.1f} / {rows[arm, s]['knn']:.1f}"
                        for s in done)
        name = "fresh tokens" if arm == "fresh" else f"cache, K = {arm[1:]}"
        print(f"| {name} | {', '.join(done) or '-'} | {fmt(test)} | {fmt(knn)} | "
              f"{'' if arm == 'fresh' else fmt(dt)} | {'' if arm == 'fresh' else fmt(dk)} | "
              f"{per} |")
    if missing:
        print(f"\nnot finished: {', '.join(missing)}")
    (args.out / "token_views_ablation.json").write_text(json.dumps(
        {f"{a}_seed{s}": v for (a, s), v in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
