"""torchrun on CPU (gloo): two processes train like one with the same global batch, evaluate
every sample once, and resume exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests._fixtures import make_image_folder

REPO = Path(__file__).resolve().parents[1]
RECIPE = ["data.batch_size=16", "train.log_every=1", "train.threads=1", "data.val_fraction=0.0",
          "train.checkpoint_every=0"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _train(data: Path, out: Path, procs: int, *extra: str) -> None:
    launcher = [sys.executable, "-m", "supmim.cli"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={procs}", "-m", "supmim.cli"]
    args = ["train", "--out", str(out), "--quiet", *extra]
    if "--resume" not in extra:
        args += ["--data", str(data), "--preset", "tiny-test", "--target", "pixel"]
        args += [a for kv in RECIPE for a in ("--set", kv)]
    done = subprocess.run(launcher + args, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(run: Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r["type"] == "train"}


def _weights(run: Path, epoch: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"epoch_{epoch:04d}" / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    data = make_image_folder(tmp_path / "data", train_per_class=16, test_per_class=7)
    _train(data, tmp_path / "one", 1, "--epochs", "2")
    _train(data, tmp_path / "two", 2, "--epochs", "2")
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))  # 48 images / 16 = 3 steps x 2
    for step in one:
        for key in ("loss", "loss_cls", "loss_mim"):
            a, b = one[step][key], two[step][key]
            assert abs(a - b) <= 1e-4 * abs(a), (step, key, a, b)
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    # 21 test images over 2 processes (11 + 10): every one counted once, none padded in
    assert s1["test"]["n"] == s2["test"]["n"] == 21
    assert abs(s1["test"]["top1"] - s2["test"]["top1"]) <= 100 / 21 + 1e-9

    # resume: drop the run's last epoch (as if killed during it) and continue under torchrun
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    for gone in ("checkpoints/epoch_0002", "checkpoints/best", "summary.json"):
        shutil.rmtree(resumed / gone, ignore_errors=True)
        (resumed / gone).unlink(missing_ok=True)
    _train(data, resumed, 2, "--resume")
    a, b = _weights(tmp_path / "two", 2), _weights(resumed, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = _losses(resumed)
    assert {k: r["loss"] for k, r in again.items()} == {k: r["loss"] for k, r in two.items()}


@pytest.mark.slow
def test_fsdp_two_processes_resume_on_one(tmp_path):
    """FSDP2 with activation checkpointing trains like DDP; its checkpoints are unsharded, so
    the run continues on one process (no FSDP) from its epoch-1 checkpoint."""
    data = make_image_folder(tmp_path / "data", train_per_class=16, test_per_class=7)
    fsdp = ("--set", "train.fsdp=true", "--set", "train.grad_checkpointing=true")
    _train(data, tmp_path / "fsdp", 2, "--epochs", "2", *fsdp)
    _train(data, tmp_path / "ddp", 2, "--epochs", "2")
    a, b = _losses(tmp_path / "fsdp"), _losses(tmp_path / "ddp")
    for step in a:  # same global batch, same randomness: the same losses
        assert abs(a[step]["loss"] - b[step]["loss"]) <= 1e-4 * abs(b[step]["loss"]), step
    state = torch.load(tmp_path / "fsdp" / "checkpoints" / "epoch_0001" / "state.pt",
                       weights_only=True)
    assert "optimizer_by_name" in state and "optimizer" not in state  # really sharded
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp", resumed)
    for gone in ("checkpoints/epoch_0002", "checkpoints/best"):
        shutil.rmtree(resumed / gone)
    (resumed / "summary.json").unlink()
    _train(data, resumed, 1, "--resume", "--set", "train.fsdp=false")
    again = _losses(resumed)
    for step in (4, 5, 6):  # epoch 2, now on one process: the same run up to float noise
        assert abs(again[step]["loss"] - a[step]["loss"]) <= 1e-4 * abs(a[step]["loss"]), step
    w1, w2 = _weights(tmp_path / "fsdp", 2), _weights(resumed, 2)
    assert w1.keys() == w2.keys()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
