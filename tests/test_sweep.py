"""`supmim sweep`: the grid's arms run under one recipe, finished runs are reused, and the
table, JSON and plots are written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from supmim.cli import main
from supmim.errors import ConfigError
from supmim.experiments.sweep import parse_grid
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
    # --report-only tabulates what finished and trains nothing (seed 1 was never run)
    assert main([*args, "--report-only", "--seeds", "0", "1"]) == 0
    assert not (tmp_path / "sw" / "baseline" / "seed1").exists()
    report = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["test_top1"]["n"] for r in report["arms"]] == [1, 1, 1]
    assert "(n=1)" in (tmp_path / "sw" / "sweep.md").read_text()


def test_sweep_rejects_a_bad_arm_before_training(tmp_path):
    data = make_image_folder(tmp_path / "data")
    assert main(["sweep", "--data", str(data), "--preset", "tiny-test", "--target", "pixel",
                 "--out", str(tmp_path / "sw"), "--grid", "mim.mask_ratio=0.5,1.5",
                 "--quiet"]) == 2
    assert not (tmp_path / "sw" / "baseline").exists()


def test_parse_arm_types_and_errors():
    from supmim.experiments.sweep import parse_arm
    assert parse_arm("mim.target=pixel;mim.weight=0.5") == {"mim.target": "pixel",
                                                             "mim.weight": 0.5}
    with pytest.raises(ConfigError, match="twice"):
        parse_arm("mim.weight=1;mim.weight=2")
    with pytest.raises(ConfigError, match="key=v;key2=v2"):
        parse_arm(" ; ")


def test_explicit_arms_seed_placeholders_and_bar_plot(tmp_path):
    data = make_image_folder(tmp_path / "data")
    base = ["sweep", "--data", str(data), "--preset", "tiny-test", "--target", "pixel",
            "--set", "data.batch_size=8", "--quiet", "--no-knn"]
    assert main([*base, "--out", str(tmp_path / "pre"), "--grid", "mim.weight=1",
                 "--no-baseline", "--seeds", "0", "1"]) == 0
    pre = tmp_path / "pre" / "mim.weight=1"
    assert main([*base, "--out", str(tmp_path / "sw"), "--seeds", "0", "1",
                 "--arm", "mim.target=hog;model.patch_size=8",
                 "--arm", f"train.init_from={pre}/seed{{seed}};mim.enabled=false"]) == 0
    result = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    names = [r["arm"] for r in result["arms"]]
    assert names[0] == "baseline" and len(names) == 3
    assert result["keys"] == ["mim.target", "model.patch_size", "train.init_from",
                              "mim.enabled"]
    # each seed of the init_from arm started from the pre-training run of the same seed
    for seed in (0, 1):
        run = tmp_path / "sw" / names[2] / f"seed{seed}"
        cfg_text = (run / "config.yaml").read_text()
        assert f"{pre}/seed{seed}" in cfg_text
    assert (tmp_path / "sw" / "sweep_arms.png").stat().st_size > 0
    assert "| mim.target=hog,model.patch_size=8 | hog | 8 |" in \
        (tmp_path / "sw" / "sweep.md").read_text()
    # an arm that fails validation stops the sweep before anything trains
    assert main([*base, "--out", str(tmp_path / "bad"), "--arm", "mim.mask_ratio=2"]) == 2
    assert not (tmp_path / "bad" / "baseline").exists()


def test_stage_study_pretrains_then_finetunes_each_combination(tmp_path):
    fine = make_image_folder(tmp_path / "fine", classes=3)
    coarse = make_image_folder(tmp_path / "coarse", classes=4)
    base = ["sweep", "--data", str(fine), "--preset", "tiny-test", "--target", "pixel",
            "--set", "data.batch_size=8", "--quiet", "--no-knn", "--study", "stages",
            "--out", str(tmp_path / "st")]
    assert main(base) == 2  # --pretrain-data is required
    assert main([*base, "--pretrain-data", str(coarse), "--set", "train.epochs=1"]) == 0
    result = json.loads((tmp_path / "st" / "sweep.json").read_text())
    names = [r["arm"] for r in result["arms"]]
    assert names == ["baseline", "pre=none,ft=mim", "pre=sup,ft=sup", "pre=sup,ft=mim",
                     "pre=mim,ft=sup", "pre=mim,ft=mim"]
    pre = json.loads((tmp_path / "st" / "pretrain" / "sweep.json").read_text())
    assert [r["arm"] for r in pre["arms"]] == ["mim.enabled=False", "mim.enabled=True"]
    for name, source in [("pre=sup,ft=mim", "mim.enabled=False"),
                         ("pre=mim,ft=sup", "mim.enabled=True")]:
        cfg_text = (tmp_path / "st" / name / "seed0" / "config.yaml").read_text()
        assert str(tmp_path / "st" / "pretrain" / source / "seed0") in cfg_text
        # stage 1 had 4 classes, stage 2 has 3: a new head on the fine-tuning labels
        summary = json.loads((tmp_path / "st" / name / "seed0" / "summary.json").read_text())
        assert summary["test"]["n"] > 0
    scratch = (tmp_path / "st" / "pre=none,ft=mim" / "seed0" / "config.yaml").read_text()
    assert "init_from: null" in scratch


def test_pooling_sweep_has_a_baseline_per_pool_and_runs_in_parallel(tmp_path):
    data = make_image_folder(tmp_path / "data")
    assert main(["sweep", "--data", str(data), "--preset", "tiny-test", "--target", "pixel",
                 "--set", "data.batch_size=8", "--quiet", "--no-knn", "--parallel", "2",
                 "--out", str(tmp_path / "sw"), "--grid", "mim.mask_ratio=0.5",
                 "--grid", "model.global_pool=token,avg"]) == 0
    result = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    rows = {r["arm"]: r for r in result["arms"]}
    assert list(rows) == ["baseline,model.global_pool=token", "baseline,model.global_pool=avg",
                          "mim.mask_ratio=0.5,model.global_pool=token",
                          "mim.mask_ratio=0.5,model.global_pool=avg"]
    for pool in ("token", "avg"):
        arm, base = rows[f"mim.mask_ratio=0.5,model.global_pool={pool}"], \
            rows[f"baseline,model.global_pool={pool}"]
        assert arm["baseline"] == base["arm"]
        assert np.isclose(arm["delta_test_top1"],
                          arm["test_top1"]["mean"] - base["test_top1"]["mean"])
        cfg_text = (tmp_path / "sw" / base["arm"] / "seed0" / "config.yaml").read_text()
        assert f"global_pool: {pool}" in cfg_text
    assert "| vs |" in (tmp_path / "sw" / "sweep.md").read_text()


def test_deltas_are_paired_by_seed():
    from supmim.experiments.sweep import _paired_delta
    base = [{"seed": 0, "m": 30.0}, {"seed": 1, "m": 40.0}, {"seed": 2, "m": 50.0}]
    arm = [{"seed": 1, "m": 41.0}, {"seed": 2, "m": 53.0}, {"seed": 3, "m": 99.0}]
    assert _paired_delta(arm, base, "m") == pytest.approx(2.0)  # seeds 1 and 2 only
    assert _paired_delta([{"seed": 5, "m": 1.0}], base, "m") is None
