"""Hugging Face ``datasets`` saved on local disk (``Dataset.save_to_disk`` /
``DatasetDict.save_to_disk``) as a ``--data`` source: nothing is downloaded.

The image column is the one with the ``Image`` feature and the label column the one with
the ``ClassLabel`` feature (their names give the classes); a DatasetDict's ``train`` split
is trained on and its ``test`` (else ``validation``) split evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from supmim.data.readers.registry import ReadContext, register_reader
from supmim.data.source import DataSource, split_source
from supmim.errors import DataError

__all__ = ["HFImageDataset", "is_hf_folder", "load_hf"]


def is_hf_folder(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (a Dataset or DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file())


class HFImageDataset(Dataset):
    """Items ``(PIL.Image, label)`` of one split; ``labels`` read from the column, not images."""

    def __init__(self, ds: Any, image_col: str, label_col: str, classes: list[str]) -> None:
        self.ds, self.image_col, self.classes = ds, image_col, classes
        self.labels = np.asarray(ds[label_col], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        try:
            img = self.ds[int(i)][self.image_col]
            img.load()
        except Exception as e:  # noqa: BLE001 - decoding errors come in many types
            raise DataError(f"cannot read image {i} of the Hugging Face dataset: "
                            f"{type(e).__name__}: {e}") from e
        return img, int(self.labels[i])


def _columns(ds: Any, where: Path) -> tuple[str, str, list[str]]:
    """The image column, the label column and the class names of ``ds``."""
    from datasets import ClassLabel
    from datasets import Image as ImageFeature
    image = [k for k, f in ds.features.items() if isinstance(f, ImageFeature)]
    label = [k for k, f in ds.features.items() if isinstance(f, ClassLabel)]
    if not image or not label:
        raise DataError(f"Hugging Face dataset '{where}' needs an Image column and a ClassLabel "
                        f"column; it has {dict(ds.features)}. Cast them with "
                        "`ds.cast_column(name, datasets.Image())` / `datasets.ClassLabel(names=...)`")
    return image[0], label[0], list(ds.features[label[0]].names)


def load_hf(path: Path) -> tuple[HFImageDataset, HFImageDataset | None, str, list[str]]:
    """(train, test or None, test split name, classes) of a saved dataset folder."""
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as e:
        raise DataError("reading a Hugging Face dataset needs `pip install datasets` "
                        "(or supmim[data])") from e
    loaded = load_from_disk(str(path))
    splits = dict(loaded) if isinstance(loaded, DatasetDict) else {"train": loaded}
    if "train" not in splits:
        raise DataError(f"Hugging Face dataset '{path}' has splits {sorted(splits)}; a 'train' "
                        "split is needed")
    image, label, classes = _columns(splits["train"], path)
    train = HFImageDataset(splits["train"], image, label, classes)
    name = next((s for s in ("test", "validation", "val") if s in splits), None)
    test = HFImageDataset(splits[name], image, label, classes) if name else None
    return train, test, name or "test", classes


def _read(path: Path, ctx: ReadContext) -> DataSource:
    """The reader's load: a saved dataset folder as a :class:`DataSource`."""
    return split_source(ctx.name, *load_hf(path))


register_reader("huggingface", is_hf_folder, _read, order=20, in_archives=False)
