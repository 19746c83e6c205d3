"""What every evaluation shares: devices, eval mode, the result-file format, data locations.

Every ``supmim eval ...`` command writes one JSON *result* with this shape (``supmim report``
reads nothing else)::

    {"supmim_eval": 1, "task": "knn", "name": "knn | cifar10_small | gap",
     "model": {...}, "data": {...}, "protocol": {...},
     "metrics": {"k=20 top-1": 61.2, ...},          # flat headline numbers
     "lower_is_better": ["mCE"],                     # metrics where smaller wins
     "details": {...}, "seconds": 12.3, "versions": {...}}

``name`` identifies *what* was measured (task, data, settings) but not *which model*, so
the results of two models with the same ``name`` sit in the same report row.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from supmim.device import resolve_device as _resolve_device
from supmim.errors import ConfigError, SupmimError
from supmim.files import write_json as _write_json

RESULT_VERSION = 1


class EvaluationError(SupmimError, ValueError):
    """An evaluation that cannot run as asked (mismatched classes, missing package, ...)."""


def resolve_device(name: str) -> torch.device:
    """:func:`supmim.device.resolve_device` for ``--device``: ``auto`` picks CUDA when present;
    an unavailable CUDA device is an :class:`EvaluationError`, not a fallback."""
    try:
        return _resolve_device(name)
    except ConfigError as err:  # "device '...' ..." -> "--device '...' ...", the flag's name
        raise EvaluationError(f"--{err}") from err


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode (dropout, drop-path and BN statistics off) and restore
    each one's previous mode afterwards, so an evaluation never changes a caller's model."""
    previous = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, was in zip(modules, previous):
            m.train(was)


def shared_data_dir() -> Path:
    """Where the project's real test data lives: ``$SUPMIM_DATA_DIR`` or ``<repo>/../shared/data``.

    Only tests and benchmarks use it; the product takes explicit paths.
    """
    env = os.environ.get("SUPMIM_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def data_tag(spec: str) -> str:
    """A short, file-name-safe name for ``--data``: the file or folder name without archive suffixes."""
    name = Path(str(spec).rstrip("/")).name or str(spec)
    for suffix in (".tar.gz", ".tgz", ".tar", ".npz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "data"


def versions() -> dict[str, str]:
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__}


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def make_result(task: str, name: str, *, model: dict[str, Any], data: dict[str, Any],
                protocol: dict[str, Any], metrics: dict[str, float],
                details: dict[str, Any] | None = None, seconds: float | None = None,
                lower_is_better: list[str] | None = None) -> dict[str, Any]:
    """Assemble a result dict in the format documented at the top of this module."""
    return {"supmim_eval": RESULT_VERSION, "task": task, "name": name, "model": model,
            "data": data, "protocol": protocol,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "lower_is_better": list(lower_is_better or []), "details": details or {},
            "seconds": seconds, "versions": versions()}


def default_result_path(model_spec: str, task: str, tag: str) -> Path:
    """``<MODEL>/eval/<task>-<tag>.json``: results live beside the model, where ``supmim
    report MODEL`` finds them."""
    return Path(model_spec) / "eval" / f"{task}-{tag}.json"


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (numpy values, tensors and paths allowed: the default of
    :func:`supmim.files.write_json`), creating folders; the file appears complete or not at all."""
    try:
        return _write_json(path, obj, indent=2)
    except OSError as err:
        raise EvaluationError(f"cannot write '{path}': {err}; pass --out with a writable location") from err
