"""`supmim train --dry-run`: checks what a run would check, counts what it would cost, and
trains and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from _fixtures import make_image_folder
from supmim.cli import main
from supmim.config import build_config
from supmim.dry_run import plan

PIXEL = {"mim.target": "pixel", "data.val_fraction": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("dry") / "data")  # 72 train, 24 test


def _plan(data: Path, *overrides: str) -> dict:
    return plan(build_config(preset="tiny-test", extra={"data.data": str(data), **PIXEL},
                             overrides=list(overrides)))


def test_the_plan_counts_steps_parameters_and_flops(data):
    p = _plan(data, "data.batch_size=8", "train.epochs=2")
    assert p["data"] == {"train": 72, "test": 24, "classes": 3}
    assert (p["steps_per_epoch"], p["optimizer_steps"], p["global_batch"]) == (9, 18, 8)
    assert p["parameters"]["encoder"] > 0 and p["parameters"]["training_only"] > 0
    # a step of 16 images costs twice one of 8, whether as one batch or two micro-batches
    double = _plan(data, "data.batch_size=16", "train.epochs=2")
    accum = _plan(data, "data.batch_size=8", "train.epochs=2", "train.accum_steps=2")
    assert double["flops_per_step"] == accum["flops_per_step"] == 2 * p["flops_per_step"]
    assert accum["optimizer_steps"] == double["optimizer_steps"] == 8  # 72 // 16 = 4 per epoch
    capped = _plan(data, "data.batch_size=8", "train.epochs=2", "train.max_steps=5")
    assert capped["optimizer_steps"] == 5


def test_dry_run_writes_nothing_and_reports(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--preset", "tiny-test",
                 "--set", "data.val_fraction=0", "--set", "data.batch_size=8", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "nothing was trained or written" in text
    assert "1 epoch x 9 steps of 8 images = 9 optimizer steps" in text
    assert "tokenizer: auto: one will be trained first" in text  # the default VQ target
    assert "FLOPs per step:" in text
    assert not out.exists()


def test_dry_run_fails_on_what_the_run_would_fail_on(tmp_path, data, capsys):
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset",
                 "tiny-test", "--tokenizer", str(tmp_path / "none"), "--dry-run"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset",
                 "tiny-test", "--target", "pixel", "--set", "data.batch_size=512", "--dry-run"])
    assert code == 2 and "fewer than one batch of 512" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
