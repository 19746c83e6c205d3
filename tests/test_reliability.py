"""Crash safety: a run killed at any step resumes to the same result; signals save a
checkpoint; a failing checkpoint write keeps the previous one; non-finite steps are skipped."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from supmim.config import build_config
from supmim.run import checkpoint as ckpt_mod
from supmim.run.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from supmim.training import train
from supmim.errors import CheckpointError, TrainingError
from supmim.models import SupMimModel
from tests._fixtures import make_image_folder

REPO = Path(__file__).resolve().parents[1]
# 3 epochs x 8 steps (70 training images), a checkpoint every 4 steps, EMA on: everything a resume must restore.
RECIPE = ["train.epochs=3", "data.batch_size=8", "train.checkpoint_every=4", "train.ema=true",
          "train.ema_decay=0.9", "model.drop_path=0.1", "train.threads=1", "train.log_every=1",
          "data.val_fraction=0.1"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "supmim.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    sets = [a for kv in RECIPE for a in ("--set", kv)]
    return _cli("train", "--data", str(data), "--preset", "tiny-test", "--target", "pixel",
                *sets, "--out", str(out), "--quiet", *extra)


def _last_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except ValueError:
            pass
    return max(steps)


def _run_until(cmd: list[str], run: Path, step: int, sig: int) -> subprocess.Popen:
    """Start ``cmd`` and send ``sig`` once the run has logged ``step``."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while _last_step(run) < step:
        assert proc.poll() is None, f"run ended before step {step}: {proc.communicate()}"
        assert time.monotonic() < deadline, "run did not reach the step in 120 s"
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc


def _final_state(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    folder = run / "checkpoints" / "epoch_0003"
    summary = json.loads((run / "summary.json").read_text())
    return (load_file(str(folder / "model.safetensors")),
            load_file(str(folder / "ema.safetensors")), summary)


def _assert_same_run(a: Path, b: Path, note: str) -> None:
    wa, ea, sa = _final_state(a)
    wb, eb, sb = _final_state(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), f"weights differ ({note})"
    assert all(torch.equal(ea[k], eb[k]) for k in ea), f"EMA weights differ ({note})"
    for split in ("val", "test", "test_ema"):
        assert sa[split] == sb[split], (split, note)
    assert sa["steps"] == sb["steps"] == 24
    # the per-epoch log of the resumed run equals the uninterrupted one (train means included)
    def epochs(run: Path) -> list[dict]:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        drop = {"epoch_seconds", "step_seconds", "img_per_s"}
        return [{k: v for k, v in r.items() if k not in drop} for r in rows if r["type"] == "epoch"]
    assert epochs(a) == epochs(b), note


@pytest.mark.slow
def test_sigkill_and_sigterm_at_a_random_step_then_resume_is_exact(tmp_path):
    data = make_image_folder(tmp_path / "data", train_per_class=26, size=16)
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(data, ref), env=_env(), check=True, capture_output=True)

    rng = random.Random()
    # 24 steps in all; checkpoints every 4 steps and per epoch. From step 5 on, the step-4
    # checkpoint exists, so `--resume auto` (without --data) has one to continue from.
    kill_at = rng.randint(5, 21)
    killed = tmp_path / "killed"
    proc = _run_until(_train_cmd(data, killed), killed, kill_at, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists()
    done = subprocess.run(_cli("train", "--out", str(killed), "--resume", "auto", "--quiet"),
                          env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_run(ref, killed, f"SIGKILL after step {kill_at}")

    term_at = rng.randint(2, 21)
    termed = tmp_path / "termed"
    proc = _run_until(_train_cmd(data, termed), termed, term_at, signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "--resume auto" in err
    saved = latest_checkpoint(termed)
    assert saved is not None and json.loads((saved / "meta.json").read_text())["step"] >= term_at
    done = subprocess.run(_cli("train", "--out", str(termed), "--resume", "auto", "--quiet"),
                          env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_run(ref, termed, f"SIGTERM after step {term_at}")


def _tiny(data: Path, *overrides: str):
    return build_config(preset="tiny-test", extra={"data.data": str(data), "mim.target": "pixel",
                                                    "data.val_fraction": 0.0},
                        overrides=["data.batch_size=8", *overrides])


def test_mid_epoch_resume_in_process_matches(tmp_path):
    """A checkpoint every 2 steps; resuming from a mid-epoch one replays the same run."""
    data = make_image_folder(tmp_path / "data")
    recipe = ("train.epochs=2", "train.checkpoint_every=2", "model.drop_path=0.2",
              "train.keep_checkpoints=50")
    full = train(_tiny(data, *recipe), tmp_path / "full", progress=False)
    steps = [json.loads((p / "meta.json").read_text())["step"]
             for p in list_checkpoints(tmp_path / "full")]
    assert steps == [2, 4, 6, 8, 9, 10, 12, 14, 16, 18]  # 9 steps per epoch
    part = tmp_path / "part"
    train(_tiny(data, *recipe, "train.max_steps=0"), part, progress=False)
    # pretend the run died after step 13: only checkpoints up to it survive
    for p in list_checkpoints(part):
        if json.loads((p / "meta.json").read_text())["step"] > 13:
            import shutil
            shutil.rmtree(p)
    (part / "summary.json").unlink()
    resumed = train(_tiny(data, *recipe), part, resume="auto", progress=False)
    assert resumed["test"] == full["test"]
    a = load_file(str(tmp_path / "full" / "checkpoints" / "epoch_0002" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "epoch_0002" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_failing_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data")
    real_write = ckpt_mod._write_bytes
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint file written hits a full disk
            raise OSError(28, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(ckpt_mod, "_write_bytes", flaky)
    with pytest.raises(CheckpointError, match="No space left.*intact.*--resume auto"):
        train(_tiny(data, "train.epochs=4", "train.checkpoint_every=3"), tmp_path / "run",
              progress=False)
    folders = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert not [n for n in folders if n.startswith(".")], folders  # no temporary leftovers
    prev = latest_checkpoint(tmp_path / "run")
    assert prev is not None
    weights, state, _ = load_checkpoint(prev)  # complete and loadable
    assert state["step"] == json.loads((prev / "meta.json").read_text())["step"] > 0


def _nan_forward(bad_steps: set[int], counter: dict[str, int]):
    real = SupMimModel.forward

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        counter["n"] += 1
        if counter["n"] in bad_steps:
            out.loss = out.loss * float("nan")
        return out
    return forward


def test_non_finite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data")
    counter = {"n": 0}
    monkeypatch.setattr(SupMimModel, "forward", _nan_forward({2, 3, 7}, counter))
    summary = train(_tiny(data, "train.epochs=2"), tmp_path / "run", progress=False)
    assert summary["skipped_steps"] == 3 and summary["steps"] == 18
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "skip"] == [2, 3, 7]
    assert sum(r.get("skipped_steps", 0) for r in rows if r["type"] == "epoch") == 3
    weights = load_file(str(latest_checkpoint(tmp_path / "run") / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_non_finite_gradient_is_skipped(tmp_path, monkeypatch):
    """A finite loss whose gradient overflows: the weights must not take the step."""
    data = make_image_folder(tmp_path / "data")
    calls = {"n": 0}
    real = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            for p in model_params["params"]:
                if p.grad is not None:
                    p.grad.fill_(float("inf"))
                    break

    model_params: dict = {}
    real_init = SupMimModel.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        model_params["params"] = list(self.parameters())

    monkeypatch.setattr(SupMimModel, "__init__", init)
    monkeypatch.setattr(torch.Tensor, "backward", backward)
    summary = train(_tiny(data, "train.epochs=1"), tmp_path / "run", progress=False)
    assert summary["skipped_steps"] == 1


def test_too_many_non_finite_steps_stop_with_the_checkpoint_intact(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data")
    counter = {"n": 0}
    monkeypatch.setattr(SupMimModel, "forward", _nan_forward(set(range(12, 100)), counter))
    with pytest.raises(TrainingError, match="3 steps in a row.*epoch_0001.*intact"):
        train(_tiny(data, "train.epochs=3", "train.max_bad_steps=3"), tmp_path / "run",
              progress=False)
    weights, state, _ = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert state["step"] == 9 and all(torch.isfinite(v).all() for v in weights.values())


def test_resume_auto_starts_fresh_without_a_checkpoint(tmp_path):
    data = make_image_folder(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"type": "train", "step": 1}\n')  # died before a checkpoint
    summary = train(_tiny(data), run, resume="auto", progress=False)
    assert summary["steps"] == 9
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "train"] == list(range(1, 10))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(_tiny(data), tmp_path / "empty", resume=True, progress=False)


def test_losses_are_float32_under_bf16_autocast():
    from supmim.models import create_vit
    from supmim.targets import build_target
    cfg = build_config(preset="tiny-test", extra={"mim.target": "pixel"})
    vit = create_vit(cfg.model, num_classes=3)
    target = build_target("pixel", img_size=16, patch_size=4, in_chans=3, tokenizer=None,
                          norm_pix=True)
    model = SupMimModel(vit, mean=[0.5] * 3, std=[0.25] * 3, target=target)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[:, :12] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, labels, mask)
    assert out.logits.dtype == torch.bfloat16  # the autocast region really ran in bf16
    assert out.loss.dtype == out.loss_cls.dtype == out.loss_mim.dtype == torch.float32
