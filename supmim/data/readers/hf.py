"""Hugging Face ``datasets`` as ``--data`` sources.

* A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
  (``load_from_disk``; nothing is downloaded).
* ``hf:BUILDER:PATH`` - ``datasets.load_dataset`` with a packaged builder
  (:data:`BUILDERS`: ``imagefolder``, ``parquet``, ``arrow``, ...): PATH is a folder
  (``data_dir``; the builder finds its splits, e.g. ``train/`` and ``test/`` sub-folders or
  ``train-*.parquet``) or a file / glob (``data_files``; one split, the training one).
* ``hf:NAME`` - a dataset on the Hub (or in the local Hub cache with
  ``HF_DATASETS_OFFLINE=1``).
* ``hf+stream:...`` (or ``data.streaming=true``) - the same, loaded with ``streaming=True``
  as an ``IterableDataset`` and trained through :mod:`supmim.data.streaming` (its epoch and
  resume semantics apply).

A DatasetDict's ``train`` split is trained on and its ``test`` (else ``validation``) split
evaluated; ``data.test_data`` (another ``hf:`` spec) gives the evaluation split instead.

Columns: ``data.image_column`` / ``data.label_column``, else the column with the ``Image``
feature (else one named image / img / picture) and the one with the ``ClassLabel`` feature
(else one named label / labels / fine_label / cls / class / target). ClassLabel names give
the classes; integer labels ``0..max`` name classes ``"0".."max"``; string labels are the
sorted distinct names.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from supmim.data.readers.registry import (ALL_OPTIONS, ReadContext, ReadOptions, need_package,
                                          register_reader)
from supmim.data.source import DataSource, cache_root, split_source
from supmim.data.streaming import OnBad, RawSample, SampleStream, StreamingImages, classes_of, survey
from supmim.errors import DataError

__all__ = ["BUILDERS", "HFImageDataset", "HFStream", "is_hf_folder", "is_hf_spec", "load_hf"]

BUILDERS = ("imagefolder", "parquet", "arrow", "csv", "json", "webdataset")
IMAGE_NAMES = ("image", "img", "picture")
LABEL_NAMES = ("label", "labels", "fine_label", "cls", "class", "target")
TEST_SPLITS = ("test", "validation", "val")
def _datasets() -> Any:
    return need_package("datasets", "reading a Hugging Face dataset")


def is_hf_folder(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (a Dataset or DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file())


def is_hf_spec(spec: str) -> bool:
    """Whether ``spec`` is an ``hf:`` / ``hf+stream:`` spec."""
    return spec.startswith(("hf:", "hf+stream:"))


class HFImageDataset(Dataset):
    """Items ``(PIL.Image, label)`` of one split; ``labels`` (int64, one per row) are read
    from the label column up front, never from the images."""

    def __init__(self, ds: Any, image_col: str, labels: np.ndarray, classes: list[str]) -> None:
        self.ds, self.image_col, self.classes = ds, image_col, classes
        self.labels = np.asarray(labels, dtype=np.int64)

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


# ------------------------------------------------------------------ columns


def _columns(features: Any, options: ReadOptions, where: str) -> tuple[str, str]:
    """The image and label column names of a dataset with ``features``."""
    datasets = _datasets()
    names = list(features)

    def pick(given: str | None, kind: type, common: tuple[str, ...], what: str, key: str) -> str:
        if given is not None:
            if given not in names:
                raise DataError(f"data.{key}={given!r} is not a column of {where}; its columns "
                                f"are {names}")
            return given
        typed = [k for k, f in features.items() if isinstance(f, kind)]
        named = [k for k in common if k in names]
        if not typed and not named:
            raise DataError(f"{where} has no {what} column (columns {names}); set data.{key}")
        return (typed or named)[0]
    image = pick(options.image_column, datasets.Image, IMAGE_NAMES, "image", "image_column")
    label = pick(options.label_column, datasets.ClassLabel, LABEL_NAMES, "label", "label_column")
    return image, label


def _label_names(features: Any, label: str) -> list[str] | None:
    """The ClassLabel names of column ``label`` (None when it is not a ClassLabel)."""
    feature = features[label]
    return list(feature.names) if isinstance(feature, _datasets().ClassLabel) else None


def _as_image(ds: Any, image: str, where: str, *, decode: bool = True) -> Any:
    """``ds`` with ``image`` cast to the Image feature (``decode=False``: raw bytes)."""
    datasets = _datasets()
    feature = ds.features[image] if ds.features is not None else None
    if isinstance(feature, datasets.Image) and feature.decode == decode:
        return ds
    try:
        return ds.cast_column(image, datasets.Image(decode=decode))
    except Exception as e:  # noqa: BLE001 - datasets raises several types for a bad cast
        raise DataError(f"column {image!r} of {where} does not hold images ({feature}); set "
                        f"data.image_column ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------ in memory / on disk


def _map_labels(raw: list[Any], names: dict[str, int] | None) -> np.ndarray:
    """Class numbers of raw labels (``names`` maps string labels)."""
    return np.asarray([names[v] if names is not None else v for v in raw], dtype=np.int64)


def _split_datasets(splits: dict[str, Any], test: Any, options: ReadOptions, where: str
                    ) -> tuple[HFImageDataset, HFImageDataset | None, str, list[str]]:
    """(train, test or None, test split name, classes) of map-style splits."""
    if "train" not in splits:
        raise DataError(f"Hugging Face dataset '{where}' has splits {sorted(splits)}; a 'train' "
                        "split is needed")
    name = next((s for s in TEST_SPLITS if s in splits), None)
    if test is not None:
        name = "test"
    else:
        test = splits[name] if name else None
    image, label = _columns(splits["train"].features, options, where)
    parts = [splits["train"]] + ([test] if test is not None else [])
    parts = [_as_image(p, image, where) for p in parts]
    named = _label_names(parts[0].features, label)
    raw = [list(p[label]) for p in parts]
    if named is not None:
        classes, names = named, None
    else:
        classes, names = classes_of([v for r in raw for v in r])
    if len(parts) > 1 and named is not None and _label_names(parts[1].features, label) not in (
            None, named):
        raise DataError(f"the test split of {where} names other classes "
                        f"({_label_names(parts[1].features, label)}) than train ({named})")
    made = [HFImageDataset(p, image, _map_labels(r, names), classes)
            for p, r in zip(parts, raw)]
    return made[0], made[1] if len(made) > 1 else None, name or "test", classes


def load_hf(path: Path, options: ReadOptions | None = None
            ) -> tuple[HFImageDataset, HFImageDataset | None, str, list[str]]:
    """(train, test or None, test split name, classes) of a saved dataset folder."""
    datasets = _datasets()
    loaded = datasets.load_from_disk(str(path))
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return _split_datasets(splits, None, options or ReadOptions(), str(path))


def _read(path: Path, ctx: ReadContext) -> DataSource:
    """The reader's load: a saved dataset folder as a :class:`DataSource`."""
    return split_source(ctx.name, *load_hf(path, ctx.options))


# ------------------------------------------------------------------ load_dataset


def _parse(spec: str) -> tuple[bool, str, dict[str, Any], str]:
    """``(streaming, builder or hub name, load_dataset keywords, path part)`` of a spec."""
    stream = spec.startswith("hf+stream:")
    body = spec.split(":", 1)[1]
    builder, sep, rest = body.partition(":")
    if builder in BUILDERS:
        if not sep or not rest:
            raise DataError(f"--data {spec!r} needs a path: hf:{builder}:FOLDER or "
                            f"hf:{builder}:FILE_GLOB")
        path = os.path.expanduser(rest)
        if Path(path).is_dir():
            return stream, builder, {"data_dir": path}, path
        if not glob.glob(path, recursive=True):
            raise DataError(f"--data {spec!r}: no file or folder matches {rest!r}")
        return stream, builder, {"data_files": path}, path
    if not body:
        raise DataError(f"--data {spec!r} names no dataset: hf:NAME or hf:BUILDER:PATH")
    return stream, body, {}, ""


def _stamps(path: str) -> list[list[Any]]:
    """Local files under/matching ``path`` with size and mtime (the survey cache key)."""
    files = sorted(str(p) for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() \
        else sorted(glob.glob(path, recursive=True)) if path else []
    return [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files[:100_000]]


def _load_dataset(spec: str, ctx: ReadContext) -> tuple[bool, dict[str, Any], str]:
    """``(streaming, {split: dataset}, cache identity)`` from ``load_dataset``."""
    datasets = _datasets()
    stream, name, kwargs, path = _parse(spec)
    stream = stream or ctx.options.streaming
    try:
        loaded = datasets.load_dataset(name, streaming=stream, **kwargs)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise DataError(f"datasets.load_dataset could not read --data {spec!r}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    splits = dict(loaded) if isinstance(loaded, (datasets.DatasetDict,
                                                 datasets.IterableDatasetDict)) \
        else {"train": loaded}
    return stream, splits, json.dumps([spec, _stamps(path)])


def _read_spec(path: Path, ctx: ReadContext) -> DataSource:
    """The reader's load for ``hf:`` / ``hf+stream:`` specs."""
    o = ctx.options
    stream, splits, identity = _load_dataset(ctx.spec, ctx)
    test = None
    if o.test_data:
        if not is_hf_spec(o.test_data):
            raise DataError(f"data.test_data={o.test_data!r} must be an hf: spec like --data")
        _, test_splits, _ = _load_dataset(o.test_data, ctx)
        test = test_splits.get("train", next(iter(test_splits.values())))
    if not stream:
        return split_source(ctx.name, *_split_datasets(splits, test, o, ctx.spec))
    return split_source(ctx.name, *_stream_splits(splits, test, identity, ctx))


# ------------------------------------------------------------------ streaming


class HFStream(SampleStream):
    """One split of a Hugging Face ``IterableDataset``; units are its shards (files)."""

    def __init__(self, ds: Any, image: str, label: str, name: str, identity: str) -> None:
        self.ds, self.image, self.label, self.name = _as_image(ds, image, name, decode=False), \
            image, label, name
        self.units = [str(i) for i in range(max(int(ds.n_shards), 1))]
        self.identity = identity

    def _rows(self, unit: int) -> Any:
        n = len(self.units)
        return self.ds if n == 1 else self.ds.shard(num_shards=n, index=unit)

    def read(self, units: Sequence[int], on_bad: OnBad) -> Iterator[RawSample]:
        for unit in units:
            for j, row in enumerate(self._rows(unit)):
                where = f"{self.name}[shard {unit}, row {j}]"
                value = row[self.image] or {}
                try:
                    data = value.get("bytes") or Path(value["path"]).read_bytes()
                except (KeyError, TypeError, OSError) as e:
                    on_bad(where, e)
                    continue
                yield where, data, row[self.label]

    def labels(self) -> Iterator[Any]:
        for row in self.ds.select_columns([self.label]):
            yield row[self.label]


def _known_count(ds: Any, split: str) -> int | None:
    """The split's size when the dataset's info records it."""
    info = getattr(ds, "info", None)
    splits = getattr(info, "splits", None) or {}
    n = splits[split].num_examples if split in splits else 0
    return int(n) if n else None


def _stream_splits(splits: dict[str, Any], test: Any, identity: str, ctx: ReadContext
                   ) -> tuple[StreamingImages, StreamingImages | None, str, list[str]]:
    """(train, test or None, test split name, classes) of streamed splits."""
    if "train" not in splits:
        raise DataError(f"{ctx.spec!r} has splits {sorted(splits)}; a 'train' split is needed")
    name = "test" if test is not None else next((s for s in TEST_SPLITS if s in splits), None)
    test = test if test is not None else (splits[name] if name else None)
    if isinstance(test, _datasets().Dataset):  # data.test_data not streamed: stream it too
        test = test.to_iterable_dataset()
    train = splits["train"]
    features = train.features
    if features is None:  # not declared: the first row's columns
        features = _datasets().Features({k: _datasets().Value("string")
                                         for k in next(iter(train)).keys()})
    image, label = _columns(features, ctx.options, ctx.spec)
    named = _label_names(features, label)
    parts = [("train", train)] + ([(name or "test", test)] if test is not None else [])
    streams = [HFStream(ds, image, label, f"{ctx.spec} [{split}]", identity + split)
               for split, ds in parts]
    counts, raw = [], []
    for (split, ds), stream in zip(parts, streams):
        known = _known_count(ds, split)
        if known is not None and named is not None:
            counts.append(known)
            continue
        n, labels = survey(stream, cache_root(ctx.cache_dir))
        counts.append(n)
        raw += labels
    classes, names = (named, None) if named is not None else classes_of(raw)
    made = [StreamingImages(s, n, classes, None, 3, train=False, class_index=names)
            for s, n in zip(streams, counts)]
    return made[0], made[1] if len(made) > 1 else None, name or "test", classes


register_reader("huggingface", is_hf_folder, _read, order=20, in_archives=False,
                options=("image_column", "label_column"))
register_reader("huggingface-load", None, _read_spec, order=20, claims=is_hf_spec,
                options=ALL_OPTIONS)
