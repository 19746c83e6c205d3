"""The image-folder tree as a ``--data`` source: ``train/<class>/**`` plus ``test/`` or ``val/``.

Classes are the sorted class folders of ``train/``; images are found recursively under
each class folder by extension (:data:`~supmim.data.source.IMAGE_EXTENSIONS`), hidden files
and macOS clutter skipped. The tree may sit one folder down (as archives often hold it).
:func:`find_layout_root`, :func:`scan_split` and :func:`probe` are shared with the Tiny
ImageNet reader. This reader accepts every folder no earlier reader took, so its error is
the one a folder in no known layout gets.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from supmim.data.readers.registry import ACCEPTED_FORMS, ReadContext, register_reader
from supmim.data.source import GREY_STATS, IMAGE_EXTENSIONS, DataSource, FolderDataset, visible
from supmim.errors import DataError

__all__ = ["find_layout_root", "load_folder", "probe", "scan_split"]

HELD_OUT_SPLITS = ("test", "val")  # "test" wins over "val": it is the split meant for the final report


def find_layout_root(top: Path) -> Path | None:
    """The folder holding ``train/``: ``top`` itself or a single folder below it."""
    if (top / "train").is_dir():
        return top
    subdirs = [d for d in top.iterdir() if d.is_dir() and visible(d)]
    hits = [d for d in subdirs if (d / "train").is_dir()]
    return hits[0] if len(hits) == 1 else None


def _images_under(cdir: Path) -> list[str]:
    """Sorted image paths anywhere below ``cdir``, hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(cdir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [
            os.path.join(dirpath, f)
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    found.sort()  # os.walk order is filesystem-dependent; sorting keeps indices stable
    return found


def scan_split(split_dir: Path, class_names: list[str]) -> tuple[list[str], list[int], list[Path]]:
    """Image paths and labels under ``split_dir/<class>/**``; also the empty class folders."""
    index = {c: i for i, c in enumerate(class_names)}
    paths: list[str] = []
    labels: list[int] = []
    empty: list[Path] = []
    for cdir in sorted(d for d in split_dir.iterdir() if d.is_dir() and visible(d)):
        found = _images_under(cdir)
        if not found:
            empty.append(cdir)
        paths += found
        labels += [index[cdir.name]] * len(found)
    return paths, labels, empty


def probe(paths: list[str], k: int = 16) -> tuple[tuple[int, int] | None, bool]:
    """Guess ``(native_size, grey)`` from the headers of up to ``k`` evenly spaced files.

    Only headers are read (no decoding), so it is cheap; it is a sample, so a folder of
    mixed sizes may still report one size. Any failure just means "unknown".
    """
    if not paths:
        return None, False
    sizes, greys = set(), set()
    try:
        for i in np.linspace(0, len(paths) - 1, min(k, len(paths))).astype(int):
            with Image.open(paths[i]) as im:
                sizes.add((im.height, im.width))
                greys.add(im.mode in ("1", "L", "LA", "I", "I;16", "F"))
    except Exception:  # a probe must never stop loading; bad files surface in __getitem__
        return None, False
    return (sizes.pop() if len(sizes) == 1 else None), greys == {True}


def _class_names(split_dir: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``split_dir``."""
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and visible(d))


def _train_split(root: Path) -> FolderDataset:
    """``train/`` of the tree at ``root``; no class folders, or an empty one, is a :class:`DataError`."""
    train_dir = root / "train"
    classes = _class_names(train_dir)
    if not classes:
        raise DataError(f"{train_dir} has no class folders; put each class's images in train/<class>/")
    paths, labels, empty = scan_split(train_dir, classes)
    if empty:
        raise DataError(
            f"class folder {empty[0]} has no images ({len(empty)} empty in all); add images with one of the "
            f"extensions {' '.join(IMAGE_EXTENSIONS)} or remove the folder"
        )
    return FolderDataset(paths, np.asarray(labels), classes)


def _held_out_split(root: Path, classes: list[str]) -> tuple[FolderDataset | None, str]:
    """``(test/ or val/, its name)`` of the tree at ``root``, or ``(None, "")`` without either."""
    for split in HELD_OUT_SPLITS:
        split_dir = root / split
        if split_dir.is_dir():
            extra = [c for c in _class_names(split_dir) if c not in classes]
            if extra:
                raise DataError(
                    f"{split_dir} has class folder(s) {', '.join(repr(c) for c in extra)} that train/ lacks; "
                    f"every {split}/ class must also be in train/ (rename or remove it, or add training images)"
                )
            t_paths, t_labels, _ = scan_split(split_dir, classes)
            return FolderDataset(t_paths, np.asarray(t_labels), classes), split
    return None, ""


def load_folder(top: Path, name: str, what: str) -> DataSource:
    """The image-folder tree at ``top`` (or one folder below) as a :class:`DataSource` called ``name``.

    ``what`` ("folder", "archive") names ``top`` in the error when no ``train/`` is found.
    """
    root = find_layout_root(top)
    if root is None:
        raise DataError(
            f"{what} {name} has no train/ folder (looked in it and in its sub-folders); "
            "lay it out as train/<class>/*.jpg plus val/<class>/ or test/<class>/.\n" + ACCEPTED_FORMS
        )
    train = _train_split(root)
    test, test_split = _held_out_split(root, train.classes)
    size, grey = probe(train.paths)
    mean, std = GREY_STATS
    return DataSource(name, train, test, test_split, train.classes, mean, std, size, grey)


def _read(path: Path, ctx: ReadContext) -> DataSource:
    """The reader's load: see :func:`load_folder`."""
    return load_folder(path, ctx.name, ctx.what)


register_reader("image-folder", Path.is_dir, _read, order=90)
