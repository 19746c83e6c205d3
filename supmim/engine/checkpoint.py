"""Checkpoints: one folder per checkpoint, written to a temporary name and renamed into place.

A checkpoint folder holds ``model.safetensors`` (encoder + decoder + mask token),
``ema.safetensors`` (optional), ``state.pt`` (optimizer, scheduler, counters: plain tensors
and Python values, read back with ``torch.load(weights_only=True)``) and ``meta.json``.
A folder only gets its final name once everything in it is on disk, so a crash mid-write
never leaves a checkpoint that looks complete.
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

EPOCH_PREFIX = "epoch_"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file via a temporary file + fsync + rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(folder: Path, model_state: dict[str, torch.Tensor],
                    train_state: dict[str, Any], meta: dict[str, Any],
                    ema_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a complete checkpoint to ``folder`` atomically (replacing an older one)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_contiguous(model_state), str(tmp / "model.safetensors"))
    if ema_state is not None:
        save_file(_contiguous(ema_state), str(tmp / "ema.safetensors"))
    torch.save(train_state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    for name in os.listdir(tmp):
        _fsync(tmp / name)
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
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


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The most recent complete epoch checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir()
            if p.name.startswith(EPOCH_PREFIX) and (p / "meta.json").is_file()]
    return max(done, key=lambda p: int(p.name[len(EPOCH_PREFIX):]), default=None)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the ``keep`` most recent epoch checkpoints (``best`` is never pruned)."""
    root = Path(run_dir) / "checkpoints"
    done = sorted((p for p in root.iterdir() if p.name.startswith(EPOCH_PREFIX)),
                  key=lambda p: int(p.name[len(EPOCH_PREFIX):]))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
