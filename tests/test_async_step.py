"""The training step never waits for the device: a step that does not log reads nothing
back (no ``.item()``, ``.tolist()``, ``.cpu()``, ``bool(tensor)``, no synchronize); the loop
reads many steps at once, every ``train.log_every`` steps and before a checkpoint."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from supmim.config import build_config
from supmim.engine.build import guarded_batches
from supmim.engine.loop import Trainer
from supmim.training import train
from tests._fixtures import make_image_folder

READS = [(torch.Tensor, name) for name in
         ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")]


@pytest.fixture
def reads(monkeypatch):
    """Counts every call that brings a tensor's value to the host, by name."""
    seen: Counter[str] = Counter()

    def counting(owner, name):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            seen[name] += 1
            return real(*args, **kwargs)
        return wrapper
    for owner, name in READS:
        monkeypatch.setattr(owner, name, counting(owner, name))
    monkeypatch.setattr(torch.cuda, "synchronize", counting(torch.cuda, "synchronize"))
    return seen


def _cfg(data, *overrides):
    return build_config(preset="tiny-test", extra={"data.data": str(data), "mim.target": "pixel",
                                                    "data.val_fraction": 0.0},
                        overrides=["data.batch_size=8", *overrides])


@pytest.mark.parametrize("recipe", [
    ("train.ema=true", "train.accum_steps=2", "train.clip_grad=1.0"),  # MIM, EMA, clipping
    ("mim.weight=0",),  # the supervised baseline's step
    ("train.mixup=0.8", "train.cutmix=1.0"),
])
def test_a_step_that_does_not_log_reads_nothing_back(tmp_path, reads, recipe):
    t = Trainer(_cfg(make_image_folder(tmp_path / "data"), *recipe), tmp_path / "run",
                progress=False)
    t.setup()
    groups = guarded_batches(t.loaders.train, t.run, group=t.cfg.train.accum_steps)
    steps = [next(groups) for _ in range(3)]
    assert all(len(b) == 4 for g in steps for b in g)  # the loader built the masks
    reads.clear()
    for batches in steps:
        assert t.train_step(batches, epoch=0, read=False) is None
    assert sum(reads.values()) == 0, dict(reads)
    records = t.read_steps()
    assert reads == Counter(tolist=1)  # the three steps come back in one transfer
    assert [r.step for r in records] == [1, 2, 3]
    assert all(r.stats is not None and r.stats["loss"] > 0 for r in records)


def test_the_loop_reads_only_on_logging_and_checkpoint_steps(tmp_path, reads, monkeypatch):
    """A whole run: between two steps the loop reads nothing back except at a logging
    step (log_every=4), a checkpoint step (checkpoint_every=6) or the epoch's end."""
    data = make_image_folder(tmp_path / "data", train_per_class=32)  # 96 images, 12 steps
    per_step: list[tuple[int, int]] = []  # (step about to run, reads since the last one)
    real = Trainer.train_step
    last = {"n": 0}

    def train_step(self, *args, **kwargs):
        total = sum(reads.values())
        per_step.append((self.state.step, total - last["n"]))
        out = real(self, *args, **kwargs)
        last["n"] = sum(reads.values())
        return out
    monkeypatch.setattr(Trainer, "train_step", train_step)
    # one worker: augmentation and masks run there, as in any real run
    summary = train(_cfg(data, "train.log_every=4", "train.checkpoint_every=6",
                         "train.epochs=2", "data.num_workers=1"), tmp_path / "run",
                    progress=False)
    assert summary["steps"] == 24
    read_after = {s for s in range(1, 25) if s % 4 == 0 or s % 6 == 0 or s % 12 == 0}
    for step, n in per_step[1:]:  # reads made after step `step` (1-based) finished
        assert (n == 0) == (step not in read_after), (step, n)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "train"] == [4, 8, 12, 16, 20, 24]


class _Ops(TorchDispatchMode):
    """Records the aten operators that run, and whether an index argument was boolean."""

    def __init__(self) -> None:
        super().__init__()
        self.names: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name.startswith("index") and any(
                isinstance(t, torch.Tensor) and t.dtype == torch.bool
                for a in args if isinstance(a, (list, tuple)) for t in a):
            name += "[bool]"
        self.names[name] += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("mode", ["drop", "mask_token"])
def test_a_mim_step_has_no_data_dependent_shapes(tmp_path, mode):
    """Hidden patches are gathered with static shapes: no ``nonzero`` or boolean index,
    which on CUDA wait for the device to learn their output size (a host sync)."""
    t = Trainer(_cfg(make_image_folder(tmp_path / "data"), f"mim.mode={mode}"),
                tmp_path / "run", progress=False)
    t.setup()
    assert t.parts.masker is not None and t.parts.masker.count == 12  # of 16 patches
    batches = next(guarded_batches(t.loaders.train, t.run))
    with _Ops() as ops:
        t.train_step(batches, epoch=0, read=False)
    assert ops.names["gather"] > 0 and ops.names["mse_loss"] > 0  # the MIM branch ran
    dynamic = {n: c for n, c in ops.names.items()
               if n in ("nonzero", "masked_select", "index[bool]", "index_put[bool]",
                        "index_put_[bool]", "_index_put_impl_[bool]")}
    assert not dynamic, dynamic
