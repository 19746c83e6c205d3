"""The Tiny ImageNet layout as a ``--data`` source (training and evaluation share this parser).

Layout (the official ``tiny-imagenet-200`` release, or any subset of it)::

    ROOT/wnids.txt                      one wnid per line
    ROOT/words.txt                      wnid -> words (not needed)
    ROOT/train/<wnid>/images/*.JPEG     (train/<wnid>/<wnid>_boxes.txt is ignored)
    ROOT/val/images/*.JPEG
    ROOT/val/val_annotations.txt        file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1
    ROOT/test/images/*.JPEG             unlabelled in the official release: ignored

Classes are the wnids in sorted order (the same rule as an image-folder tree's sorted class
folders; ``wnids.txt`` order is not used), and ``train/`` must hold exactly the wnids of
``wnids.txt``. The held-out split is ``val``, labelled through ``val_annotations.txt``;
an annotation naming an unknown wnid or a missing file, or a val image without an
annotation, is a :class:`~supmim.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from supmim.data.readers.folder import find_layout_root, probe, scan_split
from supmim.data.readers.registry import ReadContext, register_reader
from supmim.data.source import GREY_STATS, IMAGE_EXTENSIONS, DataSource, FolderDataset, visible
from supmim.errors import DataError

__all__ = ["ANNOTATIONS", "is_tiny_imagenet", "load_tiny_imagenet"]

ANNOTATIONS = Path("val") / "val_annotations.txt"


def is_tiny_imagenet(root: Path) -> bool:
    """Whether ``root`` is laid out as Tiny ImageNet (it has ``wnids.txt`` and ``val/val_annotations.txt``)."""
    return (root / "wnids.txt").is_file() and (root / ANNOTATIONS).is_file()


def _read_text(path: Path) -> str:
    """The text of ``path``; an unreadable file is a :class:`DataError`."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e


def _train_classes(root: Path) -> list[str]:
    """The sorted wnids, checked against the class folders of ``train/``."""
    wnids = set(_read_text(root / "wnids.txt").split())
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"Tiny ImageNet folder {root} has no train/ folder; expected train/<wnid>/images/*.JPEG")
    folders = {d.name for d in train_dir.iterdir() if d.is_dir() and visible(d)}
    if not wnids:
        raise DataError(f"{root / 'wnids.txt'} lists no wnids; put one class id (e.g. n01443537) per line")
    if wnids != folders:
        missing, extra = sorted(wnids - folders)[:5], sorted(folders - wnids)[:5]
        raise DataError(
            f"{root / 'wnids.txt'} and {train_dir} disagree (wnids without a train/ folder: "
            f"{', '.join(missing) or 'none'}; train/ folders not in wnids.txt: {', '.join(extra) or 'none'}; "
            "first 5 shown); make wnids.txt list exactly the train/ class folders"
        )
    return sorted(wnids)


def _val_split(root: Path, index: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """Paths (sorted by file name) and labels of ``val/images``, from ``val_annotations.txt``."""
    ann, images = root / ANNOTATIONS, root / "val" / "images"
    listed = os.listdir(images) if images.is_dir() else []
    on_disk = {f for f in listed if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)}
    labels: dict[str, int] = {}
    for n, line in enumerate(_read_text(ann).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        name, wnid = parts[0].strip(), parts[1].strip() if len(parts) > 1 else ""
        where = f"{ann}, line {n}"
        if not wnid:
            raise DataError(f"{where}: expected 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1', got {line!r}")
        if wnid not in index:
            raise DataError(f"{where}: {name} is labelled {wnid!r}, which is not a train class "
                            f"(not a folder of {root / 'train'}); fix the line or remove the image")
        if name not in on_disk:
            raise DataError(f"{where}: names {name!r}, but {images / name} does not exist (or is not an image "
                            "file); restore the image or remove the line")
        if name in labels:
            raise DataError(f"{where}: {name} is annotated a second time; keep one line per image")
        labels[name] = index[wnid]
    unlabelled = sorted(on_disk - labels.keys())
    if unlabelled:
        raise DataError(f"{images / unlabelled[0]} has no line in {ann} ({len(unlabelled)} such image(s)); "
                        "annotate it or remove it")
    names = sorted(labels)  # file-name order, so indices do not depend on the annotation order
    return [str(images / f) for f in names], np.asarray([labels[f] for f in names], dtype=np.int64)


def load_tiny_imagenet(root: Path) -> tuple[FolderDataset, FolderDataset, str, list[str]]:
    """``(train, val, "val", classes)`` of the Tiny ImageNet folder ``root`` (see the module docstring)."""
    classes = _train_classes(root)
    paths, labels, empty = scan_split(root / "train", classes)
    if empty:
        raise DataError(f"class folder {empty[0]} has no images ({len(empty)} empty in all); "
                        "expected train/<wnid>/images/*.JPEG")
    val_paths, val_labels = _val_split(root, {w: i for i, w in enumerate(classes)})
    return (FolderDataset(paths, np.asarray(labels, dtype=np.int64), classes),
            FolderDataset(val_paths, val_labels, classes), "val", classes)


def _detect(path: Path) -> bool:
    """Whether ``path``, or the single folder below it holding ``train/``, is Tiny ImageNet."""
    root = find_layout_root(path) if path.is_dir() else None
    return root is not None and is_tiny_imagenet(root)


def _read(path: Path, ctx: ReadContext) -> DataSource:
    """The reader's load: a Tiny ImageNet folder (or the folder above one) as a :class:`DataSource`."""
    root = find_layout_root(path)
    if root is None:
        raise DataError(f"{ctx.what} {ctx.name} has no train/ folder; expected train/<wnid>/images/*.JPEG")
    train, test, split, wnids = load_tiny_imagenet(root)
    size, grey = probe(train.paths)
    mean, std = GREY_STATS
    return DataSource(ctx.name, train, test, split, wnids, mean, std, size, grey)


register_reader("tiny-imagenet", _detect, _read, order=30)
