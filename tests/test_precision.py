"""train.amp: which autocast dtype "auto" picks on which device, and fp16 training with a
GradScaler (an overflow is skipped and counted, the scale is checkpointed and restored)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _fixtures import make_image_folder
from supmim.config import build_config
from supmim.device import amp_dtype, grad_scaler
from supmim.engine.build import guarded_batches
from supmim.engine.loop import Trainer
from supmim.models import SupMimModel
from supmim.run.checkpoint import list_checkpoints
from supmim.training import train

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_auto_picks_native_bf16_else_fp16_on_cuda_and_fp32_on_the_cpu(monkeypatch):
    gpu = {"native": True}
    asked: list[bool] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return gpu["native"] or including_emulation  # emulation is always "supported"

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert amp_dtype("auto", CUDA) == torch.bfloat16  # Ampere and later
    gpu["native"] = False
    assert amp_dtype("auto", CUDA) == torch.float16  # e.g. a V100 or T4: emulated bf16 is slow
    assert asked == [False, False]  # only native support counts
    assert amp_dtype("auto", CPU) is None and len(asked) == 2  # no CUDA query on the CPU
    assert amp_dtype("auto", torch.device("cuda", 1)) == torch.float16
    # explicit choices are taken as given
    assert amp_dtype("bf16", CPU) == torch.bfloat16
    assert amp_dtype("fp16", CUDA) == amp_dtype("fp16", CPU) == torch.float16
    assert amp_dtype("off", CUDA) is None


def test_auto_on_a_torch_without_the_emulation_flag(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert amp_dtype("auto", CUDA) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype("auto", CUDA) == torch.bfloat16


def test_the_scaler_is_on_for_fp16_only():
    assert grad_scaler(torch.float16, CPU).is_enabled()
    assert not grad_scaler(torch.bfloat16, CPU).is_enabled()
    assert not grad_scaler(None, CPU).is_enabled()
    with pytest.raises(Exception, match="train.amp"):
        build_config(preset="tiny-test", extra={"train.amp": "fp8"})


def _cpu_fp16() -> bool:
    """Whether this torch has fp16 autocast and a GradScaler on the CPU."""
    try:
        torch.amp.GradScaler("cpu")
        with torch.autocast("cpu", dtype=torch.float16):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    except (AttributeError, RuntimeError):
        return False


needs_cpu_fp16 = pytest.mark.skipif(not _cpu_fp16(),
                                    reason="this torch has no fp16 autocast / GradScaler on CPU")


def _cfg(data: Path, *overrides: str):
    return build_config(preset="tiny-test",
                        extra={"data.data": str(data), "mim.target": "pixel",
                               "data.val_fraction": 0.0, "train.amp": "fp16",
                               "train.device": "cpu"},
                        overrides=["data.batch_size=8", "train.threads=1", *overrides])


def _overflow_on_backward(monkeypatch, at: set[int]) -> dict[str, list]:
    """Backward calls number ``at`` (1-based) leave an inf in a gradient; also records the
    dtype of the logits of every forward."""
    seen: dict[str, list] = {"params": [], "logits": []}
    calls = {"n": 0}
    real_init, real_forward, real_backward = (SupMimModel.__init__, SupMimModel.forward,
                                              torch.Tensor.backward)

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen["params"] = [p for p in self.parameters() if p.requires_grad]

    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        seen["logits"].append(out.logits.dtype)
        return out

    def backward(self, *args, **kwargs):
        real_backward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in at:
            seen["params"][0].grad.fill_(float("inf"))

    monkeypatch.setattr(SupMimModel, "__init__", init)
    monkeypatch.setattr(SupMimModel, "forward", forward)
    monkeypatch.setattr(torch.Tensor, "backward", backward)
    return seen


def _state(folder: Path) -> dict:
    return torch.load(folder / "state.pt", weights_only=True, map_location="cpu")


def _skips(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == "skip"]


@needs_cpu_fp16
def test_fp16_overflows_are_skipped_counted_and_halve_the_scale(tmp_path, monkeypatch):
    """torch's scaler starts at 2**16 and halves on every overflow. Overflows are skipped
    steps, counted and logged, but (each halving the scale) not held against
    train.max_bad_steps: three in a row do not stop a run with a limit of 2."""
    data = make_image_folder(tmp_path / "data")  # 72 images: 9 steps
    ref = train(_cfg(data, "train.max_bad_steps=2"), tmp_path / "ref", progress=False)
    natural = [r["step"] for r in _skips(tmp_path / "ref")]  # the scaler finding its scale
    assert all(step < 5 for step in natural), natural  # the forced ones below come after
    seen = _overflow_on_backward(monkeypatch, at={5, 6, 7})
    summary = train(_cfg(data, "train.max_bad_steps=2"), tmp_path / "run", progress=False)
    assert summary["amp"] == "torch.float16"
    assert set(seen["logits"]) == {torch.float16}  # the forward really ran in fp16
    assert summary["steps"] == 9
    assert summary["skipped_steps"] == ref["skipped_steps"] + 3 == len(natural) + 3
    skips = _skips(tmp_path / "run")
    assert [r["step"] for r in skips] == natural + [5, 6, 7]
    assert all(r["overflow"] for r in skips)
    want = _state(list_checkpoints(tmp_path / "ref")[-1])["scaler"]
    got = _state(list_checkpoints(tmp_path / "run")[-1])["scaler"]
    assert got["scale"] == want["scale"] / 8 and got["_growth_tracker"] == 2  # steps 8, 9
    weights = load_file(str(list_checkpoints(tmp_path / "run")[-1] / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


@needs_cpu_fp16
def test_an_inf_gradient_below_scale_one_counts_towards_the_limit(tmp_path, monkeypatch):
    """At a scale under 1 the gradient overflows fp16 by itself: a bad step like fp32's."""
    data = make_image_folder(tmp_path / "data")
    _overflow_on_backward(monkeypatch, at={1, 2})
    t = Trainer(_cfg(data), tmp_path / "run", progress=False)
    t.setup()
    batches = next(guarded_batches(t.loaders.train, t.run))
    assert t.train_step(batches, epoch=0) is None
    assert t.state.skipped == {"total": 1, "in_row": 0}  # an overflow at 2**16
    t.parts.scaler.update(0.5)
    assert t.train_step(batches, epoch=0) is None
    assert t.state.skipped == {"total": 2, "in_row": 1}
    assert [r.get("overflow", False) for r in _skips(tmp_path / "run")] == [True, False]


@needs_cpu_fp16
def test_an_fp16_run_resumes_exactly_with_its_scale(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data")
    recipe = ("train.epochs=2", "train.checkpoint_every=3", "train.keep_checkpoints=20",
              "train.accum_steps=2", "data.batch_size=4")
    _overflow_on_backward(monkeypatch, at={9})  # step 5's first micro-batch
    full = train(_cfg(data, *recipe), tmp_path / "full", progress=False)
    monkeypatch.undo()
    assert 5 in [r["step"] for r in _skips(tmp_path / "full")]
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    for folder in list_checkpoints(part):  # as if killed after step 6 (mid-epoch 1 of 9 steps)
        if json.loads((folder / "meta.json").read_text())["step"] > 6:
            shutil.rmtree(folder)
    (part / "summary.json").unlink()
    shutil.rmtree(part / "checkpoints" / "best", ignore_errors=True)
    (start,) = list_checkpoints(part)[-1:]
    assert _state(start)["scaler"]["scale"] < 2.0 ** 16  # not what a fresh scaler has
    resumed = train(_cfg(data, *recipe), part, resume="auto", progress=False)
    assert resumed["steps"] == full["steps"] == 18 and resumed["test"] == full["test"]
    a, b = (list_checkpoints(run)[-1] for run in (tmp_path / "full", part))
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _state(b)["scaler"] == _state(a)["scaler"]  # the scale went on from the checkpoint
