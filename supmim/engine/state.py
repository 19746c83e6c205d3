"""The loop's counters and the tensors a checkpoint holds, and putting them back.

A checkpoint's ``state.pt`` holds :class:`TrainState` as plain values beside the optimizer
state; its ``model.safetensors`` the trainable weights (never the frozen target). Under FSDP
the files are gathered to full tensors, so they do not depend on the process count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from supmim.engine import dist
from supmim.engine.build import TrainParts
from supmim.errors import CheckpointError


def new_accumulator() -> dict[str, Any]:
    """Running sums of the epoch in progress (saved in mid-epoch checkpoints)."""
    return {"sums": {}, "count": 0, "skipped": 0, "seconds": 0.0, "step_seconds": 0.0}


@dataclass
class TrainState:
    """Where the run is. ``epoch`` is the next epoch to run (0-based) and ``step_in_epoch``
    how many of its steps are done; ``step`` counts optimizer steps (skipped ones too)."""

    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    epochs_done: int = 0
    best: dict[str, float] = field(default_factory=lambda: {"top1": -1.0, "epoch": -1})
    timing: dict[str, float] = field(
        default_factory=lambda: {"train_seconds": 0.0, "step_seconds": 0.0, "steps_timed": 0})
    skipped: dict[str, int] = field(default_factory=lambda: {"total": 0, "in_row": 0})
    epoch_acc: dict[str, Any] = field(default_factory=new_accumulator)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        """From a ``state.pt`` (keys absent in older checkpoints take their defaults)."""
        epoch = int(state["epoch"])
        return cls(epoch=epoch, step=int(state["step"]),
                   step_in_epoch=int(state.get("step_in_epoch", 0)),
                   epochs_done=int(state.get("epochs_done", epoch)),
                   best=dict(state["best"]), timing=dict(state["timing"]),
                   skipped=dict(state.get("skipped") or {"total": 0, "in_row": 0}),
                   epoch_acc=dict(state.get("epoch_acc") or new_accumulator()))


def full_states(parts: TrainParts) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Unsharded trainable weights and optimizer state (and fp16's loss scale, so a resumed
    run scales as the uninterrupted one would). Under FSDP every process must call this
    (gathering is collective)."""
    scaler = {"scaler": parts.scaler.state_dict()} if parts.scaler.is_enabled() else {}
    if not parts.fsdp:
        return (parts.model.trainable_state_dict(),
                {"optimizer": parts.optimizer.state_dict(), **scaler})
    weights, optim = dist.full_state(parts.model, parts.optimizer)
    weights = {k: v for k, v in weights.items() if not k.startswith("target.")}
    return weights, {"optimizer_by_name": optim, **scaler}


def restore(parts: TrainParts, folder: Path, weights: dict[str, Tensor], state: dict[str, Any],
            ema: dict[str, Tensor] | None) -> TrainState:
    """Load a checkpoint's weights, optimizer, schedule, loss scale and EMA into ``parts``;
    returns the loop's counters. CheckpointError when it does not fit the model."""
    own = parts.model.state_dict()
    missing = [k for k in own if k not in weights and not k.startswith("target.")]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in weights if k in own and weights[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"checkpoint '{folder}' does not match this model: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}, other shapes "
                              f"{wrong[:5]} (a tokenizer with another codebook size, or "
                              "other model.* keys?)")
    if parts.fsdp and "optimizer_by_name" not in state:
        raise CheckpointError(f"checkpoint '{folder}' was written without train.fsdp; "
                              "resume it with train.fsdp=false")
    if "optimizer_by_name" in state:
        dist.load_full_state(parts.model, parts.optimizer, weights, state["optimizer_by_name"])
    else:
        parts.model.load_state_dict(weights, strict=False)
        parts.optimizer.load_state_dict(state["optimizer"])
    # The schedule is a pure function of the step (so --epochs can be extended on resume).
    parts.scheduler.step_update(num_updates=int(state["step"]))
    if parts.scaler.is_enabled() and "scaler" in state:  # else (not fp16 before) a fresh one
        parts.scaler.load_state_dict(state["scaler"])
    if parts.ema is not None and ema is not None:
        parts.ema.module.load_state_dict(ema)
    return TrainState.from_dict(state)
