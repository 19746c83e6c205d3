"""Gradient accumulation (train.accum_steps): k micro-batches of B train like one batch of
k x B, a non-finite micro-step skips its whole optimizer step, and a run killed in the middle
of an accumulation resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _fixtures import make_image_folder, run_until_sigkill
from supmim.config import build_config
from supmim.engine.build import guarded_batches
from supmim.engine.loop import Trainer
from supmim.errors import ConfigError
from supmim.models import SupMimModel
from supmim.run.checkpoint import list_checkpoints
from supmim.seeds import mix_seed, step_seeds
from supmim.training import train

ROOT = Path(__file__).resolve().parents[1]


def _cfg(data: Path, *overrides: str):
    # fp32 on one thread, so that the only difference between two runs is the batching
    return build_config(preset="tiny-test",
                        extra={"data.data": str(data), "mim.target": "pixel",
                               "data.val_fraction": 0.0, "train.amp": "off"},
                        overrides=["train.threads=1", *overrides])


def _rows(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == kind]


def _weights(run: Path, name: str = "model") -> dict[str, torch.Tensor]:
    folder = sorted((run / "checkpoints").glob("epoch_*"))[-1]
    return load_file(str(folder / f"{name}.safetensors"))


def test_four_micro_batches_of_16_train_like_one_batch_of_64(tmp_path):
    """Same data order, augmentation and masks; no BatchNorm in a ViT, drop-path 0: the only
    difference is summation order, so losses and weights agree to float precision. The MIM
    loss is a mean over masked patches, equally many per image, so it splits evenly too."""
    data = make_image_folder(tmp_path / "data", train_per_class=43)  # 129 images: 2 steps
    big = train(_cfg(data, "data.batch_size=64"), tmp_path / "big", progress=False)
    acc = train(_cfg(data, "data.batch_size=16", "train.accum_steps=4"), tmp_path / "acc",
                progress=False)
    assert big["steps"] == acc["steps"] == 2  # an epoch is 8 micro-batches = 2 steps
    a, b = _rows(tmp_path / "big", "train"), _rows(tmp_path / "acc", "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for key in ("loss", "loss_cls", "loss_mim"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
        assert rb["lr"] == ra["lr"]  # the schedule steps per optimizer step
    wa, wb = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=2e-5, msg=k)
    # batches of 16 without accumulation end elsewhere (the comparison above can fail)
    train(_cfg(data, "data.batch_size=16", "train.max_steps=2"), tmp_path / "small",
          progress=False)
    wc = _weights(tmp_path / "small")
    assert max((wa[k] - wc[k]).abs().max().item() for k in wa) > 1e-3


def _first_step_gradients(data: Path, out: Path, *overrides: str) -> dict[str, torch.Tensor]:
    """The gradient (B,..) per parameter that the first optimizer step applied."""
    t = Trainer(_cfg(data, "train.clip_grad=null", *overrides), out, progress=False)
    t.setup()
    t.loaders.sampler.set_epoch(0)
    t.model.train()
    batches = next(guarded_batches(t.loaders.train, t.run, group=t.cfg.train.accum_steps))
    assert t.train_step(batches, epoch=0) is not None
    return {n: p.grad for n, p in t.model.named_parameters() if p.grad is not None}


def test_the_accumulated_gradient_is_the_big_batch_mean_gradient(tmp_path):
    """AdamW hardly notices a gradient's scale, so the weights above would not show a loss
    left undivided by k: the gradients themselves are compared here (no clipping)."""
    data = make_image_folder(tmp_path / "data", train_per_class=22)  # 66 images
    big = _first_step_gradients(data, tmp_path / "big", "data.batch_size=64")
    acc = _first_step_gradients(data, tmp_path / "acc", "data.batch_size=16",
                                "train.accum_steps=4")
    assert big.keys() == acc.keys() and any(k.startswith("decoder.") for k in big)
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-4, atol=1e-7, msg=k)


def test_micro_step_zero_keeps_the_unaccumulated_seeds_and_others_differ():
    seeds = step_seeds(7, 3, rank=1)
    assert step_seeds(7, 3, rank=1, micro=0) == seeds
    assert seeds.global_ == mix_seed(7, 3, 0x57E9, 1)  # what runs before accumulation drew
    others = {step_seeds(7, 3, rank=1, micro=m).global_ for m in range(1, 4)}
    assert len(others | {seeds.global_}) == 4
    assert step_seeds(7, 3, rank=1, micro=1).mim != step_seeds(7, 3, rank=1, micro=2).mim


def test_a_non_finite_micro_step_skips_the_whole_optimizer_step(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data")
    calls = {"n": 0}
    real = SupMimModel.forward

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # the second micro-batch of step 2
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SupMimModel, "forward", forward)
    summary = train(_cfg(data, "data.batch_size=8", "train.accum_steps=3"), tmp_path / "run",
                    progress=False)
    assert calls["n"] == 9 and summary["steps"] == 3  # 72 images: 9 micro-batches, 3 steps
    assert summary["skipped_steps"] == 1
    assert [r["step"] for r in _rows(tmp_path / "run", "skip")] == [2]
    assert [r["step"] for r in _rows(tmp_path / "run", "train")] == [1, 3]
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "run").values())


def test_accumulation_is_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="train.accum_steps.*>= 1"):
        build_config(preset="tiny-test", overrides=["train.accum_steps=0"])
    data = make_image_folder(tmp_path / "data")  # 72 images
    with pytest.raises(ConfigError, match=r"data.batch_size x train.accum_steps \(8 x 10\).*72"):
        train(_cfg(data, "data.batch_size=8", "train.accum_steps=10"), tmp_path / "run",
              progress=False)


# 72 images, micro-batches of 4, 3 per step: 6 steps per epoch, 2 epochs; drop-path on (each
# micro-step has its own seeds), EMA on, a checkpoint every 2 steps
RECIPE = ("data.batch_size=4", "train.accum_steps=3", "train.epochs=2", "model.drop_path=0.1",
          "train.ema=true", "train.ema_decay=0.9", "train.checkpoint_every=2",
          "train.keep_checkpoints=20")
KILL_AT = 9 * 3 + 2  # the forward of micro-batch 2 of 3 of step 10 (epoch 2, its 4th step)

KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from supmim.models import SupMimModel
    from supmim.training import train
    from test_accumulation import RECIPE, _cfg
    calls, real = [0], SupMimModel.forward
    def forward(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *args, **kwargs)
    SupMimModel.forward = forward
    train(_cfg({data!r}, *RECIPE), {run!r}, progress=False)
""")


def test_sigkill_in_the_middle_of_an_accumulation_then_resume_is_exact(tmp_path):
    data = make_image_folder(tmp_path / "data")
    want = train(_cfg(data, *RECIPE), tmp_path / "ref", progress=False)
    run = tmp_path / "run"
    script = KILLER.format(tests=str(ROOT / "tests"), kill_at=KILL_AT, data=str(data),
                           run=str(run))
    run_until_sigkill(script, ROOT)
    assert _rows(run, "train")[-1]["step"] == 9  # step 10 had started, not finished
    steps = [json.loads((p / "meta.json").read_text())["step"] for p in list_checkpoints(run)]
    assert max(steps) == 8  # the mid-epoch checkpoint after 2 steps of epoch 2
    got = train(_cfg(data, *RECIPE), run, resume="auto", progress=False)
    assert got["steps"] == want["steps"] == 12
    for name in ("model", "ema"):
        a, b = _weights(tmp_path / "ref", name), _weights(run, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert got["test"] == want["test"]
    drop = {"epoch_seconds", "step_seconds", "img_per_s"}

    def epochs(path: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in drop} for r in _rows(path, "epoch")]
    assert epochs(run) == epochs(tmp_path / "ref")  # train means of the redone epoch too


# counts, per process, the calls that turn gradient reduction off and on around micro-batches
SYNC_COUNTER = textwrap.dedent("""
    import json, os, sys
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel
    from supmim.cli import main
    calls = []
    real_no_sync = DistributedDataParallel.no_sync
    real_sync = FSDPModule.set_requires_gradient_sync
    def no_sync(self):
        calls.append("no_sync")
        return real_no_sync(self)
    def set_sync(self, flag, **kwargs):
        calls.append(f"sync={flag}")
        return real_sync(self, flag, **kwargs)
    DistributedDataParallel.no_sync = no_sync
    FSDPModule.set_requires_gradient_sync = set_sync
    code = main(sys.argv[1:])
    with open(os.environ["CALLS"] + os.environ["RANK"], "w") as f:
        json.dump(calls, f)
    sys.exit(code)
""")


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_accumulating_match_one_big_batch(tmp_path, sharding):
    """One process with 2 micro-batches of 16 (which trains like one batch of 32, above) and 2
    processes x 2 micro-batches of 8 see the same 32 samples per step, so they have the same
    losses; gradients are reduced once per step."""
    from tests.test_distributed import _launch, _losses, _weights
    # 96 images, 32 a step: 3 steps per epoch (test_distributed's recipe: batch 16)
    data = make_image_folder(tmp_path / "data", train_per_class=32, test_per_class=7)
    extra = ["--epochs", "2", "--set", "train.accum_steps=2"]
    done = _launch(data, tmp_path / "one", 1, *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    if sharding == "fsdp":
        extra += ["--set", "train.fsdp=true"]
    done = _launch(data, tmp_path / "two", 2, *extra, script=SYNC_COUNTER,
                   env={"CALLS": str(tmp_path / "calls")})
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        for key in ("loss", "loss_cls", "loss_mim"):
            a, b = one[step][key], two[step][key]
            assert abs(a - b) <= 1e-4 * abs(a), (step, key, a, b)
    w1, w2 = _weights(tmp_path / "one", 2), _weights(tmp_path / "two", 2)
    # atol 1e-4: AdamW turns the float noise of a gradient that is 0 in exact arithmetic (the
    # attention key bias) into steps of up to lr; unsynchronised ranks would differ by far more
    assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)
    want = ["no_sync"] * 6 if sharding == "ddp" else ["sync=False", "sync=True"] * 6
    for rank in (0, 1):  # the first of each step's two micro-batches ran without reduction
        assert json.loads((tmp_path / f"calls{rank}").read_text()) == want
