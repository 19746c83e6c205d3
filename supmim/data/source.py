"""The pieces every ``--data`` reader builds on: what a resolved source is (:class:`DataSource`),
the two dataset kinds most readers return (:class:`ArrayDataset`, :class:`FolderDataset`),
how labels are read without decoding images (:func:`labels_of`), and the cache folder.

Every dataset here yields ``(PIL.Image.Image, int label)`` and exposes its labels as an
int64 array (``.labels`` or torchvision's ``.targets``) so that :func:`labels_of` can split
and subsample without decoding a single image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset

from supmim.data.datasets import ImageDataset
from supmim.errors import DataError

__all__ = [
    "ArrayDataset",
    "DataSource",
    "FolderDataset",
    "GREY_STATS",
    "IMAGE_EXTENSIONS",
    "cache_root",
    "labels_of",
    "split_source",
    "visible",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GREY_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass
class DataSource:
    """A resolved ``--data``: the datasets plus what the trainer needs to know about them."""

    name: str
    train: Dataset
    test: Dataset | None
    test_split: str
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_size: tuple[int, int] | None
    grey: bool


def split_source(name: str, train: Dataset, test: Dataset | None, test_split: str,
                 classes: list[str]) -> DataSource:
    """A :class:`DataSource` with the neutral stats, unknown size and colour (shards, HF folders)."""
    mean, std = GREY_STATS
    return DataSource(name, train, test, test_split, classes, mean, std, None, False)


class ArrayDataset(Dataset):
    """In-memory uint8 images, ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB, with int labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels).astype(np.int64)
        if images.dtype != np.uint8:
            raise DataError(f"ArrayDataset needs uint8 images, got {images.dtype}; scale to 0..255 and cast")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise DataError(f"ArrayDataset needs images shaped (N,H,W) or (N,H,W,3), got {images.shape}")
        if labels.shape != (images.shape[0],):
            raise DataError(f"got {images.shape[0]} images but labels shaped {labels.shape}; pass one label per image")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        # fromarray picks 'L' for 2-D and 'RGB' for (H,W,3) uint8.
        return Image.fromarray(self.images[i]), int(self.labels[i])


class FolderDataset(Dataset):
    """Image files on disk with their labels; files are opened only in ``__getitem__``."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, classes: list[str]) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        path = self.paths[i]
        try:
            # Our own file handle, so multi-frame files (GIF, TIFF) never leak one;
            # load() reads the (first frame's) pixels before the handle closes.
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()
        except Exception as e:  # noqa: BLE001 - PIL raises many types for malformed files
            raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}; replace or "
                            "remove the file") from e
        return img, int(self.labels[i])


def labels_of(dataset: Any) -> np.ndarray:
    """Int64 labels of every item of ``dataset``, read from metadata rather than images.

    Understands our datasets (``.labels``), torchvision's (``.targets``), and ``Subset``,
    ``ConcatDataset`` and :class:`ImageDataset` around them. Anything else falls back to
    iterating ``dataset[i][1]``, which does decode images (slow, but correct).
    """
    if isinstance(dataset, IterableDataset):
        raise DataError("this needs an indexed source: streamed data (pipe:/http shards, "
                        "hf+stream:, data.streaming=true) has no labels up front; use local "
                        "shards or a non-streamed dataset")
    if isinstance(dataset, ImageDataset):
        labels = labels_of(dataset.base)
        return labels if dataset.indices is None else labels[dataset.indices]
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, ConcatDataset):
        parts = [labels_of(d) for d in dataset.datasets]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    for attr in ("labels", "targets"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values):
            return np.asarray(values, dtype=np.int64).reshape(-1)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def cache_root(cache_dir: str | None = None) -> Path:
    """Cache folder: ``cache_dir``, else ``$SUPMIM_CACHE``, else ``~/.cache/supmim``."""
    return Path(cache_dir or os.environ.get("SUPMIM_CACHE") or Path.home() / ".cache" / "supmim").expanduser()


def visible(p: Path) -> bool:
    """False for hidden entries and macOS archive clutter (``._x.jpg``, ``__MACOSX``)."""
    return not p.name.startswith(".") and p.name != "__MACOSX"
