"""What a comparison of arms may conclude: the representation (weighted kNN top-1 of the
encoder), a confidence interval of the paired MIM - baseline delta over seeds, and whether the
arms were still learning when they stopped.

- kNN: k = 20, temperature 0.07, on the encoder's pooled features (train split as the gallery,
  test split as queries), as ``sweep`` reports; cached per run in ``knn.json``.
- Interval: a two-sided 95% Student t-interval of the per-seed paired deltas,
  mean +- t(0.975, n-1) * sd / sqrt(n). The quantiles are tabulated (exact to three decimals,
  checked against scipy in the tests) so a plain install needs no scipy.
- Convergence: an arm is flagged "not converged" when its validation top-1 still rose over
  the last quarter of its epochs by more than the spread between seeds (the sample std of its
  final validation top-1, at least 0.5 points; with one seed, 1 point): a rise the noise
  cannot explain means more epochs would change the numbers being compared.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from supmim.errors import ConfigError
from supmim.files import write_json

# t(0.975, df) for df = 1..30; above 30 the normal quantile is within 2% of it
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.960
ONE_SEED_SPREAD = 1.0  # points: the spread assumed with a single seed
MIN_SPREAD = 0.5  # points: seeds that agree closely do not make every wiggle a trend


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError("a t-interval needs at least 2 values")
    return T975[df - 1] if df <= len(T975) else Z975


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """The 95% t-interval of the mean of ``values``; None for fewer than 2 values."""
    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = t_quantile_975(len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def knn_top1(run_dir: Path, k: int = 20, progress: bool = False) -> float:
    """Weighted kNN top-1 (%) of a finished run's encoder; cached in ``knn.json``."""
    cache = run_dir / "knn.json"
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("k") == k:
            return float(stored["top1"])
    from supmim.data.splits import build_run_data
    from supmim.device import resolve_device
    from supmim.evaluation.tasks.knn import knn_on_datasets
    from supmim.run import RunDir
    run = RunDir.open(run_dir)
    run_cfg = run.config()
    data = build_run_data(run_cfg, train_as_eval=True)
    if data.test is None:
        raise ConfigError(f"kNN needs a test split; '{run_cfg.data.data}' has none")
    result = knn_on_datasets(run.build_encoder(), data.train, data.test,
                             num_classes=len(data.classes), k=(k,),
                             device=resolve_device(run_cfg.train.device),
                             progress=progress)[k]
    write_json(cache, {"k": k, "temperature": 0.07, **result}, indent=None)
    return float(result["top1"])


def eval_curve(run_dir: Path) -> list[float]:
    """The per-epoch evaluation top-1 of a run (``metrics.jsonl`` epoch records)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [float(r["eval_top1"]) for r in rows if r.get("type") == "epoch" and "eval_top1" in r]


def last_quarter_rise(curve: list[float]) -> tuple[float, int]:
    """``(rise, epochs)``: the least-squares slope of the curve over its last quarter (at
    least its last 3 points) times the epochs that window spans."""
    window = curve[-max(3, math.ceil(len(curve) / 4)):]
    if len(window) < 2:
        return 0.0, 0
    xs = range(len(window))
    mx, my = statistics.fmean(xs), statistics.fmean(window)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, window)) / \
        sum((x - mx) ** 2 for x in xs)
    return slope * (len(window) - 1), len(window) - 1


def convergence(run_dirs: list[Path], epochs: int) -> dict[str, Any]:
    """One arm's verdict: its seeds' mean last-quarter rise against their spread."""
    curves = [c for c in (eval_curve(d) for d in run_dirs) if len(c) >= 2]
    if not curves:
        return {"converged": None, "reason": "fewer than 2 evaluated epochs"}
    rises = [last_quarter_rise(c) for c in curves]
    rise = statistics.fmean(r for r, _ in rises)
    finals = [c[-1] for c in curves]
    spread = max(statistics.stdev(finals), MIN_SPREAD) if len(finals) > 1 else ONE_SEED_SPREAD
    converged = rise <= spread
    return {"converged": converged, "rise": rise, "window_epochs": rises[0][1],
            "seed_spread": spread, "seeds": len(finals), "epochs": epochs,
            "suggest_epochs": None if converged else 2 * epochs}


def converged_line(arm: str, verdict: dict[str, Any]) -> str:
    """One sentence for the report on an arm's convergence."""
    if verdict.get("converged") is None:
        return f"{arm}: convergence not judged ({verdict.get('reason')})."
    state = "converged" if verdict["converged"] else "**not converged**"
    spread = (f"seed spread {verdict['seed_spread']:.2f}" if verdict.get("seeds", 2) > 1
              else f"one seed: a spread of {verdict['seed_spread']:.2f} assumed")
    text = (f"{arm}: {state}: validation top-1 moved {verdict['rise']:+.2f} points over its last "
            f"{verdict['window_epochs']} epochs ({spread})")
    if not verdict["converged"]:
        text += (f"; this arm is still learning, so the delta may change: try "
                 f"--epochs {verdict['suggest_epochs']}")
    return text + "."

