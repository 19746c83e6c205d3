"""torchrun on CPU (gloo): two processes train like one with the same global batch, evaluate
every sample once, and resume exactly; one of them killed mid-run resumes exactly; a locked
run directory stops every process before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from supmim.run.lock import RunLock
from tests._fixtures import make_image_folder

REPO = Path(__file__).resolve().parents[1]
RECIPE = ["data.batch_size=16", "train.log_every=1", "train.threads=1", "data.val_fraction=0.0",
          "train.checkpoint_every=0"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _launch(data: Path, out: Path, procs: int, *extra: str, script: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    program = ["-c", script] if script else ["-m", "supmim.cli"]
    launcher = [sys.executable, *program] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={procs}", *(["--no-python", sys.executable, "-c", script]
                                       if script else ["-m", "supmim.cli"])]
    args = ["train", "--out", str(out), "--quiet", *extra]
    if "--resume" not in extra:
        args += ["--data", str(data), "--preset", "tiny-test", "--target", "pixel"]
        args += [a for kv in RECIPE for a in ("--set", kv)]
    return subprocess.run(launcher + args, env={**_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=300)


def _train(data: Path, out: Path, procs: int, *extra: str) -> None:
    done = _launch(data, out, procs, *extra)
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


# rank 1 dies by SIGKILL as it starts step KILL_AT (0-based), as a crashed GPU or an OOM kill
# leaves it; torchrun then stops rank 0
RANK_KILLER = textwrap.dedent("""
    import os, signal, sys
    from supmim.cli import main
    from supmim.engine.loop import Trainer
    real = Trainer.train_step
    def train_step(self, *args, **kwargs):
        if os.environ["RANK"] == "1" and self.state.step == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *args, **kwargs)
    Trainer.train_step = train_step
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_one_killed_process_stops_the_run_and_it_resumes_exactly(tmp_path):
    data = make_image_folder(tmp_path / "data", train_per_class=16, test_per_class=7)
    _train(data, tmp_path / "whole", 2, "--epochs", "2")
    run = tmp_path / "run"
    # step 4 is the second of epoch 2: epoch_0001 (step 3) is on disk
    killed = _launch(data, run, 2, "--epochs", "2", script=RANK_KILLER, env={"KILL_AT": "4"})
    assert killed.returncode != 0
    assert "Signals.SIGKILL" in killed.stderr or "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    # the survivor (if torchrun's SIGTERM did not end it first) says one line, no traceback
    assert "[rank0]: Traceback" not in killed.stderr, killed.stderr[-3000:]
    said = [line for line in killed.stderr.splitlines() if line.startswith("supmim:")]
    assert all("another process of this run stopped" in line and "epoch_0001' is intact" in line
               and "--resume auto" in line for line in said), said
    assert not (run / "summary.json").exists()
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("epoch")] \
        == ["epoch_0001"]
    again = _launch(data, run, 2, "--resume", "auto")
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = _weights(tmp_path / "whole", 2), _weights(run, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {k: r["loss"] for k, r in _losses(run).items()} == \
        {k: r["loss"] for k, r in _losses(tmp_path / "whole").items()}


@pytest.mark.slow
def test_a_locked_run_stops_every_process_before_any_work(tmp_path):
    data = make_image_folder(tmp_path / "data", train_per_class=4, test_per_class=2)
    with RunLock(tmp_path / "run"):
        done = _launch(data, tmp_path / "run", 2, "--epochs", "1")
    assert done.returncode != 0
    # rank 0 took the lock, rank 1 was told (their lines may interleave on the shared stderr)
    assert done.stderr.count(f"is in use by process {os.getpid()}") == 2, done.stderr[-3000:]
    assert "exitcode  : 2" in done.stderr or "exitcode: 2" in done.stderr, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]
