"""Streaming sources: data that can only be read front to back (WebDataset shards behind
``pipe:`` or http(s) URLs, Hugging Face ``IterableDataset``s) as a torch ``IterableDataset``
the trainer trains and evaluates on.

A source is a :class:`SampleStream`: a list of *units* (shards) and a way to read some of
them in order as ``(where, image bytes, raw label)``. :class:`StreamingImages` turns it into
``(tensor, label, index)`` items, ``index`` a stable 63-bit hash of ``where`` (it seeds the
sample's augmentation and MIM mask, as a position does for indexed sources).

Epochs and processes:

* an epoch is ``len(dataset)`` samples: ``data.train_samples`` when set, else the count a
  survey pass (:func:`survey`) found once and cached under ``data.cache_dir``; every rank
  trains ``count // world // local_batch // accum`` optimizer steps;
* each pass permutes the units by ``(seed, epoch, pass)``; with at least ``world x
  workers`` units, slot ``(rank, worker)`` reads every ``world x workers``-th unit, with
  fewer every slot reads all units and keeps every ``world x workers``-th sample
  (:func:`stream_share`): either way a pass gives each sample to exactly one slot;
* a training slot repeats passes until the epoch's steps are done (so ranks never run out
  at different steps), each pass through a shuffle buffer seeded by ``(seed, epoch, pass,
  rank, worker)`` (:data:`SHUFFLE_BUFFER` samples);
* evaluation reads one pass, unshuffled.

Resume: exact at epoch boundaries. Mid-epoch, the stream is read again from the epoch's
start and the samples already trained on are dropped before decoding (workers' batches
arrive round-robin, so worker ``w`` drops its share of the first ``start`` batches): the
rest of the epoch - samples, order, augmentation, masks - is that of an uninterrupted run,
as long as the number of processes and ``data.num_workers`` are unchanged. The dropped
samples are still downloaded.

Unreadable samples (a tar member cut short, an image that does not decode, a missing or
unknown label) are skipped, not substituted, and listed in the bad-file log like bad files
of indexed sources.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from supmim.data.datasets import append_bad, to_mode
from supmim.seeds import SeededSample, mix_seed, sample_seed
from supmim.errors import DataError

__all__ = ["SHUFFLE_BUFFER", "SampleStream", "StreamingImages", "classes_of", "key_index",
           "stream_share", "survey"]

SHUFFLE_BUFFER = 1000  # samples each training slot shuffles among
SHUFFLE_INITIAL = 100  # samples buffered before the first one is given out

RawSample = tuple[str, bytes, Any]  # (where: names the sample, image file bytes, raw label)
OnBad = Callable[[str, Exception], None]


class SampleStream(ABC):
    """A source read front to back: ``units`` (shard names) and :meth:`read`.

    ``identity`` names the data for the survey cache (URLs, a dataset name and split)."""

    name: str
    units: list[str]
    identity: str

    @abstractmethod
    def read(self, units: Sequence[int], on_bad: OnBad) -> Iterator[RawSample]:
        """The samples of ``units`` (positions in :attr:`units`), in order; a sample that
        cannot be read is reported to ``on_bad(where, error)`` and left out."""

    def labels(self) -> Iterator[Any]:
        """Every sample's raw label in one pass (a survey); readers may read less than
        the images."""
        for _, _, label in self.read(range(len(self.units)), lambda where, err: None):
            yield label


def stream_share(n_units: int, *, seed: int, epoch: int, rank: int, world: int, worker: int,
                 workers: int, pass_: int = 0, shuffle: bool = True) -> tuple[list[int], int, int]:
    """What slot ``(rank, worker)`` reads of one pass: ``(units, every, offset)`` - read
    those unit positions in order and keep sample ``j`` (counted over them) when
    ``j % every == offset``. Over all ``world x workers`` slots each sample is kept once."""
    if not (0 <= rank < world and 0 <= worker < workers):
        raise ValueError(f"slot (rank {rank}, worker {worker}) outside ({world}, {workers})")
    order = list(range(n_units))
    if shuffle:
        random.Random(mix_seed(seed, epoch, pass_, 0x57A)).shuffle(order)
    slots, slot = world * workers, rank * workers + worker
    if n_units >= slots:
        return order[slot::slots], 1, 0
    return order, slots, slot


def key_index(where: str) -> int:
    """A stable non-negative 63-bit integer naming the sample ``where``."""
    digest = hashlib.blake2b(where.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def classes_of(labels: Iterable[Any]) -> tuple[list[str], dict[str, int] | None]:
    """Class names and, for string labels, their index: integer labels ``0..max`` name
    classes ``"0".."max"``; string labels are the sorted distinct names."""
    values = set(labels)
    if not values:
        raise DataError("the stream holds no labelled sample; check the label field "
                        "(data.label_column)")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise DataError(f"labels must be >= 0, found {min(values)}")
        return [str(i) for i in range(max(values) + 1)], None
    if all(isinstance(v, str) for v in values):
        names = sorted(values)
        return names, {n: i for i, n in enumerate(names)}
    raise DataError(f"labels mix integers and names ({sorted(map(str, values))[:4]}); use one "
                    "kind")


def survey(stream: SampleStream, cache_dir: Path | None) -> tuple[int, list[Any]]:
    """``(number of samples, distinct raw labels)`` of ``stream``, read once and cached in
    ``cache_dir`` (keyed by :attr:`SampleStream.identity`)."""
    key = hashlib.sha1(stream.identity.encode()).hexdigest()[:20]
    path = cache_dir / "streams" / f"{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text())
            return int(cached["count"]), list(cached["labels"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable cache: survey again
    count, labels = 0, set()
    for label in stream.labels():
        count += 1
        labels.add(label)
    found = sorted(labels, key=lambda v: (isinstance(v, str), v))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"count": count, "labels": found, "of": stream.identity}))
        tmp.replace(path)
    return count, found


class StreamingImages(IterableDataset):
    """Items ``(image tensor (C,H,W), label, index)`` of a :class:`SampleStream`.

    ``train``: endless seeded-shuffled passes (the loop takes the epoch's steps), each
    sample's augmentation drawn from ``(seed, epoch, index)``; else one unshuffled pass.
    ``count`` is ``len()``: the samples of an epoch (train) or of the split (evaluation).
    ``class_index`` maps string labels to class numbers (None: labels are numbers).
    :meth:`place` and :meth:`set_epoch` are called in the main process; the dataset is
    copied into the workers at each epoch's start (the loader's workers are not
    persistent), so they see both.
    """

    def __init__(self, stream: SampleStream, count: int, classes: list[str],
                 transform: Callable[[Image.Image], Any] | None, in_chans: int, *, train: bool,
                 seed: int = 0, class_index: dict[str, int] | None = None,
                 bad_log: str | Path | None = None) -> None:
        if count < 1:
            raise DataError(f"the stream {stream.name} has no samples")
        self.stream, self.count, self.classes = stream, count, classes
        self.transform, self.mode = transform, "L" if in_chans == 1 else "RGB"
        self.train, self.seed, self.class_index = train, seed, class_index
        self.bad_log = Path(bad_log) if bad_log is not None else None
        self.rank, self.world, self.batch = 0, 1, 1
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.count

    def configured(self, transform: Callable[[Image.Image], Any] | None, in_chans: int, *,
                   train: bool, seed: int, bad_log: str | Path | None,
                   count: int | None = None) -> StreamingImages:
        """A copy that yields tensors through ``transform`` (a run's train or eval split);
        ``count``: another epoch size (``data.train_samples``)."""
        return StreamingImages(self.stream, count or self.count, self.classes, transform,
                               in_chans, train=train, seed=seed, class_index=self.class_index,
                               bad_log=bad_log)

    def place(self, rank: int, world: int, batch: int = 1) -> None:
        """This process's slot among ``world`` and its loader's (micro-)batch size."""
        self.rank, self.world, self.batch = rank, world, batch

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Read ``epoch``, skipping this rank's first ``start`` samples (mid-epoch resume)."""
        self.epoch, self.start = epoch, start

    def skipped(self, worker: int, workers: int) -> int:
        """How many of its samples worker ``worker`` drops (its share of ``start``)."""
        batches = self.start // self.batch
        return len(range(worker, batches, workers)) * self.batch

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.train:
            raw: Iterator[RawSample] = itertools.islice(self._passes(worker, workers),
                                                        self.skipped(worker, workers), None)
        else:
            raw = self._pass(0, worker, workers)
        for where, data, label in raw:
            item = self._item(where, data, label)
            if item is not None:
                yield item

    def _pass(self, pass_: int, worker: int, workers: int) -> Iterator[RawSample]:
        units, every, offset = stream_share(len(self.stream.units), seed=self.seed,
                                            epoch=self.epoch, rank=self.rank, world=self.world,
                                            worker=worker, workers=workers, pass_=pass_,
                                            shuffle=self.train)
        for j, sample in enumerate(self.stream.read(units, self._bad)):
            if j % every == offset:
                yield sample

    def _passes(self, worker: int, workers: int) -> Iterator[RawSample]:
        """Endless passes, each through its own seeded shuffle buffer (so a pass ends
        before the next begins: the first pass of an epoch holds no sample twice)."""
        import webdataset as wds
        for pass_ in itertools.count():
            got = 0
            rng = random.Random(mix_seed(self.seed, self.epoch, pass_, self.rank, worker, 0x5B))
            shuffled = wds.shuffle(SHUFFLE_BUFFER, SHUFFLE_INITIAL, rng=rng)(
                self._pass(pass_, worker, workers))
            for sample in shuffled:
                got += 1
                yield sample
            if got == 0:
                raise DataError(f"process {self.rank} worker {worker} read no sample in a whole "
                                f"pass over {self.stream.name}; check the bad-file log, or lower "
                                "data.num_workers")

    def _label(self, raw: Any) -> int:
        if self.class_index is not None and isinstance(raw, str):
            if raw not in self.class_index:
                raise DataError(f"label {raw!r} is not one of the surveyed classes")
            return self.class_index[raw]
        if not isinstance(raw, int) or not 0 <= raw < len(self.classes):
            raise DataError(f"label {raw!r} is not a class number in [0, {len(self.classes)})")
        return raw

    def _item(self, where: str, data: bytes, raw_label: Any) -> tuple[Any, int, int] | None:
        """The decoded, transformed sample, or None (recorded as bad)."""
        index = key_index(where)
        try:
            label = self._label(raw_label)
            img = Image.open(io.BytesIO(data))
            img.load()
            img = to_mode(img, self.mode)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for malformed data
            self._bad(where, e)
            return None
        if self.transform is None:
            return img, label, index
        if not self.train:
            return self.transform(img), label, index
        with SeededSample(sample_seed(mix_seed(self.seed, self.epoch, 0xA06), index)):
            return self.transform(img), label, index

    def _bad(self, where: str, err: Exception) -> None:
        if self.bad_log is not None:
            append_bad(self.bad_log, where, f"{type(err).__name__}: {err}")

