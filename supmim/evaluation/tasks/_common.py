"""What the task modules share: the options every task takes, split and feature loading,
and the small naming helpers of result names and file tags."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from supmim.evaluation.common import EvaluationError, resolve_device
from supmim.evaluation.datasets import EvalSplit, load_split
from supmim.evaluation.features import split_features
from supmim.evaluation.loading import LoadedModel


@dataclass(kw_only=True)
class TaskOptions:
    """Options of every task: data location, batching, caching, progress bars."""

    data_root: str | None = None  # folder holding a built-in dataset's files
    download: bool = False  # let torchvision download cifar10/cifar100
    batch_size: int = 256  # images per forward pass
    workers: int = 0  # data-loading processes (0: in the main process)
    cache_dir: str | None = None  # extracted archives, features, corrupted images
    progress: bool = True  # progress bars

    def check(self) -> None:
        """Validate what can be checked before the model is loaded (nothing by default)."""


@dataclass(kw_only=True)
class FeatureOptions(TaskOptions):
    """Options of the tasks on pooled image features (embed, linear, knn, retrieval)."""

    pool: str = "default"  # default (what the head sees), cls or gap
    use_cache: bool = True  # reuse features cached on disk


def as_device(device: torch.device | str) -> torch.device:
    """A ``torch.device``; strings go through :func:`resolve_device` (so ``auto`` works)."""
    return resolve_device(device) if isinstance(device, str) else device


def prepare(model: LoadedModel, device: torch.device | str) -> torch.device:
    """Resolve ``device`` and move the model there."""
    device = as_device(device)
    model.model.to(device)
    return device


def get_split(data: str, split: str, options: TaskOptions) -> EvalSplit:
    """Split ``split`` of ``data`` (any form :func:`load_split` accepts)."""
    return load_split(data, split, data_root=options.data_root, download=options.download,
                      cache_dir=options.cache_dir)


def features(model: LoadedModel, split: EvalSplit, device: torch.device,
             options: FeatureOptions) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (N, D) and labels (N,) of ``split`` (cached per ``options``)."""
    return split_features(model, split, device, pool=options.pool, batch_size=options.batch_size,
                          workers=options.workers, progress=options.progress,
                          cache_dir=options.cache_dir, use_cache=options.use_cache)


def check_positive(name: str, value: float) -> None:
    """``name must be > 0`` unless ``value`` is."""
    if value <= 0:
        raise EvaluationError(f"{name} must be > 0, got {value}")


def pool_note(pool: str) -> str:
    """The pooling part of a result name (empty for the default pooling)."""
    return "" if pool == "default" else f" | pool={pool}"


def file_tag(tag: str, pool: str, *extra: str) -> str:
    """``<data>[-<pool>][-<extra>...]``: the ``<tag>`` of ``MODEL/eval/<task>-<tag>.json``."""
    parts = [tag] + ([pool] if pool != "default" else []) + [e for e in extra if e]
    return "-".join(parts)
