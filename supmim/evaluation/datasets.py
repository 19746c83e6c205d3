"""Labelled image splits for classification, kNN, retrieval and robustness.

``--data`` may be anything :func:`supmim.data.resolve_data` accepts (an image-folder tree
with ``train/`` + ``test/`` or ``val/``, a ``.tar``/``.tar.gz`` of one, a built-in name), and
also:

- a folder (or archive) of class folders with no ``train/``: one split, named ``all``
  (``test`` means the same); the layout of ImageNet-A / -R / -Sketch / -V2;
- the Tiny ImageNet layout (``wnids.txt``, ``train/<wnid>/images/``, ``val/images`` +
  ``val/val_annotations.txt``): splits ``train`` and ``val`` (``test`` means ``val``); it is
  ``resolve_data``'s, parsed by :mod:`supmim.data.tiny_imagenet`;
- a ``.npz`` of uint8 images: ``x`` (N, H, W) or (N, H, W, 3) with labels in ``y``,
  ``labels``, ``label`` or ``identity`` (one split, ``all``), or per-split ``x_<split>`` +
  ``y_<split>``; class names from ``classes`` / ``breeds`` / ``names`` when they fit.

Every split yields ``(PIL.Image, label)``; labels are an int64 array read without decoding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch.utils.data import Dataset

from supmim.data import (IMAGE_EXTENSIONS, ArrayDataset, FolderDataset, ImageDataset, labels_of,
                         resolve_data)
from supmim.errors import DataError
from supmim.evaluation.common import data_tag

EVAL_DATA_FORMS = (
    "Accepted forms of --data for evaluation:\n"
    "  - anything `supmim train --data` accepts (train/ + test/ or val/ folders, a .tar/.tar.gz of\n"
    "    them, fashion-mnist, digits, cifar10, cifar100); splits: train, test (or val);\n"
    "  - a folder or archive of class folders without train/ (e.g. ImageNet-A/-R/-Sketch/-V2): split all;\n"
    "  - the Tiny ImageNet layout (wnids.txt, train/<wnid>/images, val/val_annotations.txt): train, val;\n"
    "  - a .npz with uint8 images x and labels y / labels / identity (split all), or x_<split> + y_<split>."
)
_LABEL_KEYS = ("y", "labels", "label", "identity", "targets")
_NAME_KEYS = ("classes", "breeds", "class_names", "names")


@dataclass
class EvalSplit:
    """One split of a labelled dataset; ``base`` yields ``(PIL.Image, int)``."""

    base: Dataset
    labels: np.ndarray  # (N,) int64
    classes: list[str]
    split: str
    tag: str  # short dataset name, for result names and cache keys
    source: str  # where it came from (resolved path or built-in name)

    def __len__(self) -> int:
        return int(self.labels.size)

    def with_transform(self, transform: Callable | None, in_chans: int,
                       indices: np.ndarray | None = None) -> ImageDataset:
        """``(tensor, label, index)`` items: images converted to ``in_chans`` then transformed."""
        return ImageDataset(self.base, transform, in_chans, indices=indices)

    def describe(self) -> dict[str, Any]:
        return {"split": self.split, "n": len(self), "num_classes": len(self.classes)}


def load_split(spec: str, split: str, *, data_root: str | None = None, download: bool = False,
               cache_dir: str | None = None) -> EvalSplit:
    """Resolve ``--data spec`` and return its split ``split`` (see the module docstring)."""
    spec = str(spec)
    path = Path(spec).expanduser()
    tag = data_tag(spec)
    if path.is_file() and path.name.lower().endswith(".npz"):
        return _npz_split(path, split, tag)
    if path.is_file():
        from supmim.data import extract_archive  # the data package's safe, cached extraction

        if not path.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
            raise DataError(f"--data '{spec}' is a file but neither a .npz nor a .tar/.tar.gz/.tgz.\n"
                            + EVAL_DATA_FORMS)
        return _folder_split(extract_archive(path, cache_dir), split, tag, str(path.resolve()))
    if path.is_dir():
        return _folder_split(path, split, tag, str(path.resolve()))
    # a built-in name (or a path that does not exist: resolve_data names the problem)
    return _from_source(spec, split, tag, data_root, download, cache_dir)


def _from_source(spec: str, split: str, tag: str, data_root: str | None, download: bool,
                 cache_dir: str | None) -> EvalSplit:
    src = resolve_data(spec, root=data_root, download=download, cache_dir=cache_dir)
    if split == "train":
        base = src.train
    elif split == "test" or split == src.test_split:
        if src.test is None:
            raise DataError(f"'{spec}' has no test/ or val/ split; evaluate on --split train, or add one")
        base, split = src.test, src.test_split
    else:
        held = src.test_split or "none"
        raise DataError(f"'{spec}' has no split '{split}': its splits are train and {held} "
                        f"(--split test picks the held-out one)")
    return EvalSplit(base, labels_of(base), list(src.classes), split, tag, src.name)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and d.name != "__MACOSX")


def _single_child(folder: Path) -> Path:
    """Archives often hold one top-level folder: look inside it."""
    children = _visible_dirs(folder)
    files = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
    return children[0] if len(children) == 1 and not files else folder


def _folder_split(folder: Path, split: str, tag: str, source: str) -> EvalSplit:
    root = _single_child(folder)
    if (root / "train").is_dir() or (folder / "train").is_dir():
        result = _from_source(str(folder), split, tag, None, False, None)
        result.source = source  # the archive, not its extracted copy in the cache
        return result
    if split not in ("all", "test"):
        raise DataError(f"'{source}' is one folder of class folders (no train/), so its only split is "
                        f"'all' (or 'test'); got --split {split}.\n{EVAL_DATA_FORMS}")
    classes = [d.name for d in _visible_dirs(root)]
    if not classes:
        raise DataError(f"'{source}' has no class folders.\n{EVAL_DATA_FORMS}")
    paths, labels = _scan_class_folders(root, classes)
    if not paths:
        raise DataError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) under '{root}'/<class>/")
    return EvalSplit(FolderDataset(paths, labels, classes), labels, classes, "all", tag, source)


def _scan_class_folders(root: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    paths: list[str] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [os.path.join(dirpath, f) for f in filenames
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        found.sort()  # stable indices, whatever order the filesystem lists files in
        paths += found
        labels += [k] * len(found)
    return paths, np.asarray(labels, dtype=np.int64)


def _splits_of(keys: set[str]) -> list[str]:
    """The splits a .npz with these array names holds (``all`` for a lone ``x``)."""
    return sorted(k[2:] for k in keys if k.startswith("x_")) or (["all"] if "x" in keys else [])


def npz_splits(spec: str) -> list[str] | None:
    """The splits of ``--data spec`` when it is a ``.npz`` (``["all"]``: one set of images,
    no ``x_<split>`` arrays); None for any other data."""
    path = Path(spec).expanduser()
    if not (path.is_file() and path.name.lower().endswith(".npz")):
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return _splits_of(set(arrays.files))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read '{path}': {err}") from err


def _npz_split(path: Path, split: str, tag: str) -> EvalSplit:
    try:
        arrays = np.load(path, allow_pickle=False)
        keys = set(arrays.files)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read '{path}': {err}") from err
    if f"x_{split}" in keys:
        x_key, y_keys = f"x_{split}", [f"y_{split}", f"labels_{split}"]
    elif "x" in keys and split in ("all", "test"):
        x_key, y_keys = "x", list(_LABEL_KEYS)
    else:
        splits = _splits_of(keys)
        raise DataError(f"'{path}' has no split '{split}'; its splits: {', '.join(splits) or 'none'} "
                        f"(keys: {', '.join(sorted(keys))}).\n{EVAL_DATA_FORMS}")
    y_key = next((k for k in y_keys if k in keys), None)
    if y_key is None:
        raise DataError(f"'{path}' has images '{x_key}' but no labels (looked for {', '.join(y_keys)})")
    images, labels = arrays[x_key], arrays[y_key]
    if labels.ndim != 1:
        raise DataError(f"'{path}': '{y_key}' has shape {labels.shape}, not one label per image; "
                        "per-pixel labels are segmentation data: use `supmim eval segment`")
    if images.dtype != np.uint8:
        raise DataError(f"'{path}': '{x_key}' is {images.dtype}; store images as uint8 0..255")
    labels = labels.astype(np.int64)
    n_classes = int(labels.max()) + 1 if labels.size else 0
    classes = [str(i) for i in range(n_classes)]
    for key in _NAME_KEYS:
        if key in keys and arrays[key].ndim == 1 and len(arrays[key]) == n_classes:
            classes = [str(c) for c in arrays[key]]
            break
    return EvalSplit(ArrayDataset(images, labels), labels, classes, split, tag, str(path.resolve()))


def eval_transform(data_config: dict[str, Any]) -> Callable:
    """The model's own evaluation preprocessing (timm ``create_transform``, not training)."""
    from timm.data import create_transform

    from supmim.data import channel_stats

    c, h, w = (int(v) for v in data_config["input_size"])
    mean, std = channel_stats(data_config["mean"], data_config["std"], c)
    return create_transform(input_size=(c, h, w), is_training=False, mean=mean, std=std,
                            crop_pct=data_config.get("crop_pct", 1.0) or 1.0,
                            crop_mode=data_config.get("crop_mode", "center") or "center",
                            interpolation=data_config.get("interpolation", "bicubic") or "bicubic")
