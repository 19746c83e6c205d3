"""Checkpoints: one folder per checkpoint, written to a temporary name and renamed into place.

A checkpoint folder holds ``model.safetensors`` (encoder + decoder + mask token),
``ema.safetensors`` (optional), ``state.pt`` (optimizer, scheduler, counters: plain tensors
and Python values, read back with ``torch.load(weights_only=True)``) and ``meta.json``.
A folder only gets its final name once everything in it is on disk, so a crash mid-write
never leaves a checkpoint that looks complete; a failed write (disk full) removes its
temporary folder and leaves every earlier checkpoint as it was.

Folders are ``epoch_NNNN`` (end of an epoch) and ``step_NNNNNNNN`` (mid-epoch, every
``train.checkpoint_every`` steps); the latest one is the one with the highest step.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from supmim.errors import CheckpointError
from supmim.files import atomic_write_text  # noqa: F401 (re-export)

EPOCH_PREFIX = "epoch_"
STEP_PREFIX = "step_"


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(folder: Path, model_state: dict[str, torch.Tensor],
                    train_state: dict[str, Any], meta: dict[str, Any],
                    ema_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a complete checkpoint to ``folder`` atomically (replacing an older one).

    Raises :class:`CheckpointError` when the write fails (disk full, permissions); the
    temporary folder is removed and earlier checkpoints are untouched.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(_contiguous(model_state), str(tmp / "model.safetensors"))
        if ema_state is not None:
            save_file(_contiguous(ema_state), str(tmp / "ema.safetensors"))
        torch.save(train_state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        for name in os.listdir(tmp):
            _fsync(tmp / name)
    except (OSError, RuntimeError) as err:  # safetensors/torch report a full disk as either
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(folder.parent.parent)
        kept = f"the previous checkpoint '{previous}' is intact" if previous is not None \
            else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write checkpoint '{folder}': {err}. {kept}; free "
                              "disk space (or fix permissions) and continue with "
                              "`supmim train --out RUN --resume auto`") from err
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    _fsync(folder.parent)  # the rename itself must survive a power cut
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any],
                                           dict[str, torch.Tensor] | None]:
    """Read ``(model_state, train_state, ema_state)``; never unpickles arbitrary objects."""
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file() or not (folder / "state.pt").is_file():
        raise CheckpointError(f"'{folder}' is not a complete supmim checkpoint "
                              "(model.safetensors and state.pt expected)")
    model_state = load_file(str(folder / "model.safetensors"))
    try:
        train_state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal is reported the same way
        raise CheckpointError(f"refusing to load '{folder / 'state.pt'}': it is not loadable "
                              f"with weights_only=True ({err}). Only load checkpoints you "
                              "trust, and only tensors and plain values.") from err
    ema_path = folder / "ema.safetensors"
    ema_state = load_file(str(ema_path)) if ema_path.is_file() else None
    return model_state, train_state, ema_state


def epoch_folder(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{EPOCH_PREFIX}{epoch:04d}"


def step_folder(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{STEP_PREFIX}{step:08d}"


def _meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete epoch and step checkpoints, oldest first (by step; at equal steps the
    end-of-epoch one last, as it also holds the epoch's evaluation)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if not p.name.startswith((EPOCH_PREFIX, STEP_PREFIX)) or not p.is_dir():
            continue
        meta = _meta(p)
        if meta is not None and (p / "model.safetensors").is_file() \
                and (p / "state.pt").is_file():
            found.append((int(meta.get("step", 0)), p.name.startswith(EPOCH_PREFIX), p))
    return [p for *_, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The most recent complete checkpoint of a run (epoch or step), or None."""
    done = list_checkpoints(run_dir)
    return done[-1] if done else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the ``keep`` most recent checkpoints (``best`` is never pruned)."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["EPOCH_PREFIX", "STEP_PREFIX", "atomic_write_text", "epoch_folder",
           "latest_checkpoint", "list_checkpoints", "load_checkpoint", "prune_checkpoints",
           "save_checkpoint", "step_folder"]
