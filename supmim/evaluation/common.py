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
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from supmim.errors import SupmimError

RESULT_VERSION = 1


class EvaluationError(SupmimError, ValueError):
    """An evaluation that cannot run as asked (mismatched classes, missing package, ...)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA device is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise EvaluationError(f"--device '{name}' is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"--device '{name}' asked for CUDA, which is not available; use cpu or auto")
    return device


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
    """Write ``obj`` as indented JSON, creating folders; the file appears complete or not at all."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        raise EvaluationError(f"cannot write '{path}': {err}; pass --out with a writable location") from err
    return path


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
