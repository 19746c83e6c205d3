"""`supmim sweep`: the grid's arms run under one recipe, finished runs are reused, and the
table, JSON and plots are written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from supmim.cli import main
from supmim.errors import ConfigError
from supmim.sweep import parse_grid
from tests._fixtures import make_image_folder


def test_parse_grid_types_and_errors():
    grid = parse_grid(["mim.mask_ratio=0.5,0.75", "model.global_pool=token,avg"])
    assert grid == {"mim.mask_ratio": [0.5, 0.75], "model.global_pool": ["token", "avg"]}
    with pytest.raises(ConfigError, match="key=v1,v2"):
        parse_grid(["mim.mask_ratio"])


def test_sweep_runs_resumes_and_reports(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data")
    args = ["sweep", "--data", str(data), "--preset", "tiny-test", "--target", "pixel",
            "--out", str(tmp_path / "sw"), "--grid", "mim.mask_ratio=0.5,0.75",
            "--set", "data.batch_size=8", "--quiet"]
    assert main(args) == 0
    result = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    names = [r["arm"] for r in result["arms"]]
    assert names == ["baseline", "mim.mask_ratio=0.5", "mim.mask_ratio=0.75"]
    steps = {json.loads((tmp_path / "sw" / n / "seed0" / "summary.json").read_text())["steps"]
             for n in names}
    assert steps == {8}  # one recipe: every arm the same number of steps (65 images / 8)
    for r in result["arms"]:
        assert 0 <= r["knn_top1"]["mean"] <= 100 and 0 <= r["test_top1"]["mean"] <= 100
    base = result["arms"][0]["test_top1"]["mean"]
    assert np.isclose(result["arms"][1]["delta_test_top1"],
                      result["arms"][1]["test_top1"]["mean"] - base)
    assert (tmp_path / "sw" / "sweep_mim_mask_ratio.png").stat().st_size > 0
    assert "| mim.mask_ratio=0.75 |" in (tmp_path / "sw" / "sweep.md").read_text()
    # a second call reuses every finished run (nothing retrained)
    stamp = (tmp_path / "sw" / "baseline" / "seed0" / "summary.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "sw" / "baseline" / "seed0" / "summary.json").stat().st_mtime_ns == stamp


def test_sweep_rejects_a_bad_arm_before_training(tmp_path):
    data = make_image_folder(tmp_path / "data")
    assert main(["sweep", "--data", str(data), "--preset", "tiny-test", "--target", "pixel",
                 "--out", str(tmp_path / "sw"), "--grid", "mim.mask_ratio=0.5,1.5",
                 "--quiet"]) == 2
    assert not (tmp_path / "sw" / "baseline").exists()
