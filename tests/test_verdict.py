"""compare's verdict: kNN top-1 per arm, the paired delta's t-interval, and the convergence flag."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from supmim.experiments import verdict
from supmim.experiments.compare import render_markdown, summarize


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy (from the dev extra) is the reference")
    for df in range(1, 31):
        assert verdict.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4)
    assert verdict.t_quantile_975(200) == pytest.approx(stats.t.ppf(0.975, 200), rel=0.02)


def test_t_interval_by_hand():
    lo, hi = verdict.t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3: 2 +- 4.303 / sqrt(3)
    assert (lo, hi) == pytest.approx((2 - 4.303 / 3 ** 0.5, 2 + 4.303 / 3 ** 0.5))
    assert verdict.t_interval([1.0]) is None


def test_last_quarter_rise_is_the_fitted_slope_over_the_window():
    rise, epochs = verdict.last_quarter_rise([10, 20, 30, 40, 41, 43, 45, 47])  # last 3 points
    assert (rise, epochs) == (pytest.approx(4.0), 2)
    assert verdict.last_quarter_rise([50.0] * 12) == (0.0, 2)


def _write_run(folder: Path, curve: list[float]) -> Path:
    folder.mkdir(parents=True)
    rows = [{"type": "epoch", "epoch": i + 1, "eval_top1": v} for i, v in enumerate(curve)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _runs(tmp_path: Path, curves: dict[tuple[str, int], list[float]]) -> list[dict]:
    runs = []
    for (arm, seed), curve in curves.items():
        run = _write_run(tmp_path / f"{arm}_seed{seed}", curve)
        runs.append({"arm": arm, "seed": seed, "run": str(run), "test_top1": curve[-1],
                     "knn_top1": curve[-1] - 5, "val_top1": curve[-1], "mean_step_seconds": 1.0,
                     "train_seconds": 10.0, "steps": 10})
    return runs


def test_a_rising_arm_is_flagged_not_converged(tmp_path):
    from supmim.config import build_config
    rising = [20, 28, 34, 38, 41, 44]  # the case in the issue: still climbing steeply
    flat = [60, 70, 74, 75, 75.2, 75.1]
    runs = _runs(tmp_path, {("baseline", 0): rising, ("mim", 0): [r - 1 for r in rising],
                            ("baseline", 1): [r + 0.5 for r in rising],
                            ("mim", 1): [r - 2 for r in rising]})
    result = summarize(runs, build_config(overrides=["train.epochs=6"]))
    assert result["converged"] is False
    base = result["convergence"]["baseline"]
    assert base["converged"] is False and base["suggest_epochs"] == 12
    assert base["rise"] == pytest.approx(6.0)  # slope 3 per epoch over the last 2 epochs
    md = render_markdown(result)
    assert "**not converged**" in md and "--epochs 12" in md and "(seed spread " in md
    # paired deltas: seed 0 -1, seed 1 -2.5 (for test and kNN alike); a t-interval from 2 seeds
    d = result["delta_mim_minus_baseline"]
    assert result["per_seed_delta_test_top1"] == pytest.approx({0: -1.0, 1: -2.5})
    assert result["per_seed_delta_knn_top1"] == pytest.approx({0: -1.0, 1: -2.5})
    half = 12.706 * statistics.stdev([-1.0, -2.5]) / 2 ** 0.5
    for metric in ("test_top1", "knn_top1"):
        assert d[metric]["mean"] == pytest.approx(-1.75)
        assert d[metric]["ci95"] == pytest.approx([-1.75 - half, -1.75 + half])
    assert "95% t-interval" in md and "kNN top-1 (k = 20)" in md

    flat_runs = _runs(tmp_path / "flat", {("baseline", 0): flat, ("mim", 0): flat,
                                          ("baseline", 1): flat, ("mim", 1): flat})
    assert summarize(flat_runs, build_config())["converged"] is True

    # one seed: the report says the spread it compares against is assumed, not measured
    one = _runs(tmp_path / "one", {("baseline", 0): rising, ("mim", 0): flat})
    verdicts = summarize(one, build_config(overrides=["train.epochs=6"]))["convergence"]
    assert verdicts["baseline"]["converged"] is False and verdicts["mim"]["converged"] is True
    lines = verdict.converged_line("baseline", verdicts["baseline"])
    assert "one seed: a spread of 1.00 assumed" in lines and "this arm is still learning" in lines
