"""Checkpoints: one folder per checkpoint, written to a temporary name and renamed into place.

A checkpoint folder holds ``model.safetensors`` (encoder + decoder + mask token),
``ema.safetensors`` (optional), ``state.pt`` (optimizer, scheduler, counters: plain tensors
and Python values, read back with ``torch.load(weights_only=True)``) and ``meta.json``.
A folder only gets its final name once everything in it is on disk, so a crash mid-write
never leaves a checkpoint that looks complete; a failed write (disk full) removes its
temporary folder and leaves every earlier checkpoint as it was.

Folders are ``epoch_NNNN`` (end of an epoch) and ``step_NNNNNNNN`` (mid-epoch, every
``train.checkpoint_every`` steps); the latest one is the one with the highest step.

Integrity: each file's size and xxh3-128 digest (of the exact bytes written, taken as they
are written, so it costs no second read) go into ``meta.json``, written last; every read
checks them first (:func:`verify_checkpoint`), so a truncated or corrupted file is reported,
never trained on. xxh3 detects truncation and flipped bits; it is not a defence against
deliberate tampering (safe loading is). Checkpoints written before the digests existed load
unverified.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors.torch import load_file, save

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


DIGEST = "xxh3_128"


def file_digest(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "xxh3_128": hex}`` of a file, read in 16 MiB blocks."""
    h = xxhash.xxh3_128()
    buf = bytearray(1 << 24)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            size += n
    return {"size": size, DIGEST: h.hexdigest()}


def _write_bytes(path: Path, data: bytes | memoryview) -> dict[str, Any]:
    """Write ``data`` to ``path`` and fsync it; its size and digest."""
    with open(path, "wb") as fh:
        fh.write(data)
    _fsync(path)
    return {"size": len(data), DIGEST: xxhash.xxh3_128(data).hexdigest()}


def _read_meta(folder: Path) -> dict[str, Any]:
    """``meta.json``; CheckpointError saying what is wrong with it."""
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError("meta.json is missing") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"meta.json is unreadable ({err})") from None
    if not isinstance(meta, dict) or "step" not in meta:
        raise CheckpointError("meta.json is not a checkpoint's metadata")
    return meta


def verify_checkpoint(folder: Path) -> bool:
    """Check every file of a checkpoint against the sizes and digests in its ``meta.json``.

    Returns True when verified, False for a checkpoint written before digests existed (its
    files are only checked to exist); raises CheckpointError naming the first problem."""
    folder = Path(folder)
    meta = _read_meta(folder)
    files = meta.get("files")
    if files is None:
        for name in ("model.safetensors", "state.pt"):
            if not (folder / name).is_file():
                raise CheckpointError(f"{name} is missing")
        return False
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{name} is missing")
        size = path.stat().st_size
        if size != want["size"]:
            raise CheckpointError(f"{name} has {size} bytes where {want['size']} were written "
                                  "(truncated, or cut short by a full disk or a partial copy)")
        if file_digest(path)[DIGEST] != want.get(DIGEST):
            raise CheckpointError(f"{name} does not match the {DIGEST} digest recorded when it "
                                  "was written (corrupted on disk or in a copy)")
    return True


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
        files = {"model.safetensors": _write_bytes(tmp / "model.safetensors",
                                                   save(_contiguous(model_state)))}
        if ema_state is not None:
            files["ema.safetensors"] = _write_bytes(tmp / "ema.safetensors",
                                                    save(_contiguous(ema_state)))
        buf = io.BytesIO()
        torch.save(train_state, buf)
        files["state.pt"] = _write_bytes(tmp / "state.pt", buf.getbuffer())
        del buf
        # the metadata that records the digests comes last: its presence completes the folder
        (tmp / "meta.json").write_text(json.dumps({**meta, "files": files}, indent=2))
        _fsync(tmp / "meta.json")
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


def load_checkpoint(folder: Path, *, verify: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any],
                               dict[str, torch.Tensor] | None]:
    """Read ``(model_state, train_state, ema_state)``, after :func:`verify_checkpoint` unless
    ``verify`` is False; never unpickles arbitrary objects."""
    folder = Path(folder)
    if verify:
        try:
            verify_checkpoint(folder)
        except CheckpointError as err:
            raise CheckpointError(f"checkpoint '{folder}' is broken: {err}") from None
    if not (folder / "model.safetensors").is_file() or not (folder / "state.pt").is_file():
        raise CheckpointError(f"'{folder}' is not a complete supmim checkpoint "
                              "(model.safetensors and state.pt expected)")
    try:
        model_state = load_file(str(folder / "model.safetensors"))
        ema_path = folder / "ema.safetensors"
        ema_state = load_file(str(ema_path)) if ema_path.is_file() else None
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"checkpoint '{folder}' is broken: its weights cannot be read "
                              f"({err})") from None
    try:
        train_state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal is reported the same way
        raise CheckpointError(f"refusing to load '{folder / 'state.pt'}': it is not loadable "
                              f"with weights_only=True ({err}). Only load checkpoints you "
                              "trust, and only tensors and plain values.") from err
    return model_state, train_state, ema_state


def epoch_folder(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{EPOCH_PREFIX}{epoch:04d}"


def step_folder(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{STEP_PREFIX}{step:08d}"


def _meta(folder: Path) -> dict[str, Any] | None:
    try:
        return _read_meta(folder)
    except CheckpointError:
        return None


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """Every epoch and step checkpoint folder of a run, complete or broken, by name."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.startswith((EPOCH_PREFIX, STEP_PREFIX)))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete epoch and step checkpoints, oldest first (by step; at equal steps the
    end-of-epoch one last, as it also holds the epoch's evaluation)."""
    found = []
    for p in checkpoint_folders(run_dir):
        meta = _meta(p)
        if meta is not None and (p / "model.safetensors").is_file() \
                and (p / "state.pt").is_file():
            found.append((int(meta.get("step", 0)), p.name.startswith(EPOCH_PREFIX), p))
    return [p for *_, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The most recent complete checkpoint of a run (epoch or step), or None."""
    done = list_checkpoints(run_dir)
    return done[-1] if done else None


def is_intact(folder: Path) -> bool:
    """Whether a checkpoint verifies (see :func:`verify_checkpoint`)."""
    try:
        verify_checkpoint(folder)
    except CheckpointError:
        return False
    return True


def remove_stale_temps(run_dir: Path) -> None:
    """Remove temporary checkpoint folders a killed writer left (``.NAME.tmpPID``); only
    call it while holding the run's lock, when no write can be in progress."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and (".tmp" in p.name or ".old" in p.name) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def check_run(run_dir: Path) -> list[dict[str, Any]]:
    """One row per checkpoint folder (epoch, step and best): name, step, epoch, status
    ("ok", "unverified" for pre-digest checkpoints, "broken") and the reason when broken."""
    root = Path(run_dir) / "checkpoints"
    folders = checkpoint_folders(run_dir) + ([root / "best"] if (root / "best").is_dir() else [])
    rows = []
    for folder in folders:
        meta = _meta(folder) or {}
        row = {"checkpoint": folder.name, "step": meta.get("step"), "epoch": meta.get("epoch"),
               "status": "ok", "reason": ""}
        try:
            if not verify_checkpoint(folder):
                row["status"] = "unverified"
                row["reason"] = "written before checkpoints recorded digests"
        except CheckpointError as err:
            row["status"], row["reason"] = "broken", str(err)
        rows.append(row)
    return rows


def newest_intact(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies, and ``(folder, reason)`` for every broken
    checkpoint folder (newer ones, and any whose metadata cannot be read)."""
    complete = list_checkpoints(run_dir)
    broken: list[tuple[Path, str]] = []
    for folder in checkpoint_folders(run_dir):
        if folder not in complete:  # metadata or a file missing: no step to order it by
            try:
                verify_checkpoint(folder)
                reason = "incomplete"
            except CheckpointError as err:
                reason = str(err)
            broken.append((folder, reason))
    for folder in reversed(complete):
        try:
            verify_checkpoint(folder)
        except CheckpointError as err:
            broken.append((folder, str(err)))
            continue
        return folder, broken
    return None, broken


def set_aside_broken(broken: list[tuple[Path, str]], *, resumed: Path,
                     step: int) -> list[str]:
    """Set broken checkpoints aside after resuming from ``resumed`` (at ``step``);
    returns the warnings to print, the last one saying how many steps will be redone."""
    lines, newest, unknown = [], step, False
    for path, why in broken:
        meta = _meta(path)
        if meta is not None:
            newest = max(newest, int(meta["step"]))
        unknown = unknown or meta is None
        aside = set_aside(path)
        lines.append(f"checkpoint '{path}' is broken ({why}); moved to '{aside.name}'")
    redo = f"{newest - step} steps will be redone" + (
        " (more if a checkpoint without readable metadata was newer)" if unknown else "")
    lines.append(f"resuming from '{resumed}' (step {step}): {redo}")
    return lines


def set_aside(folder: Path) -> Path:
    """Rename a broken checkpoint folder to ``checkpoints/broken_<name>``: kept for a
    look, never chosen again."""
    target = folder.with_name(f"broken_{folder.name}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"broken{n}_{folder.name}")
    os.replace(folder, target)
    return target


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the ``keep`` most recent checkpoints (``best`` is never pruned)."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["EPOCH_PREFIX", "STEP_PREFIX", "atomic_write_text", "checkpoint_folders",
           "epoch_folder", "file_digest", "latest_checkpoint", "list_checkpoints",
           "load_checkpoint", "prune_checkpoints", "save_checkpoint", "step_folder",
           "verify_checkpoint", "check_run", "remove_stale_temps", "is_intact", "newest_intact", "set_aside", "set_aside_broken"]
