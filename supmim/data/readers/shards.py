"""WebDataset shards: ``supmim data pack`` writes them, ``--data SHARDS/`` trains from them.

Layout written by :func:`pack` (standard WebDataset tar shards, readable by the
``webdataset`` library and any tar tool)::

    SHARDS/train-000000.tar ...   members KEY.<ext> (the original image bytes) + KEY.cls
    SHARDS/test-000000.tar ...    (or val-*)
    SHARDS/supmim_shards.json     classes, splits, and per split the shard names and an index
                                  (shard, byte offset, size, label) of every sample

supmim reads shards by that index (random access into the tar files, no extraction), so the
run's data order, mid-epoch resume, per-process sharding and bad-file skipping are the same
as for an image folder. Design choice: this is not streaming. Streaming (shard-per-worker,
sequential reads) only pays off on object stores without random access; local and network
file systems seek cheaply, and seeking keeps every guarantee of the trainer.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from supmim.data.readers.registry import ReadContext, register_reader, resolve_data
from supmim.data.source import DataSource, labels_of, split_source
from supmim.errors import DataError

__all__ = ["INDEX", "ShardDataset", "is_shard_folder", "load_shards", "pack"]

INDEX = "supmim_shards.json"


def _image_bytes(base: Any, i: int) -> tuple[bytes, str]:
    """The original file bytes of item ``i`` when the source has files, else PNG bytes."""
    paths = getattr(base, "paths", None)
    if paths is not None:
        path = Path(paths[i])
        return path.read_bytes(), path.suffix.lower().lstrip(".") or "img"
    img, _ = base[i]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), "png"


def pack(spec: str, out_dir: str | Path, *, shard_size: int = 10_000,
         progress: bool = True, **resolve: Any) -> dict[str, Any]:
    """Write every split of ``--data spec`` as WebDataset shards into ``out_dir``."""
    import webdataset as wds
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise DataError(f"shard size must be >= 1, got {shard_size}")
    src = resolve_data(spec, **resolve)
    out = Path(out_dir)
    if (out / INDEX).exists():
        raise DataError(f"'{out}' already holds packed shards; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format": "supmim-webdataset-1", "classes": list(src.classes),
                            "source": spec, "splits": {}}
    splits = {"train": src.train, src.test_split: src.test}
    for split, ds in splits.items():
        if ds is None:
            continue
        if isinstance(ds, IterableDataset):
            raise DataError(f"--data {spec!r} is streamed; `supmim data pack` needs an indexed "
                            "source (local files, not data.streaming)")
        labels = labels_of(ds)
        with wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=shard_size,
                             verbose=0) as sink:
            for i in tqdm(range(len(ds)), desc=f"pack {split}", disable=not progress):
                data, ext = _image_bytes(ds, i)
                sink.write({"__key__": f"{i:09d}", ext: data, "cls": str(int(labels[i]))})
        meta["splits"][split] = {"shards": sorted(p.name for p in out.glob(f"{split}-*.tar")),
                                 "count": len(ds)}
        meta["splits"][split]["index"] = _index(out, meta["splits"][split]["shards"])
    (out / INDEX).write_text(json.dumps(meta))
    return {"out": str(out), "splits": {k: v["count"] for k, v in meta["splits"].items()}}


def _index(folder: Path, shards: list[str]) -> list[list[int]]:
    """[[shard number, data offset, size, label], ...] in sample order."""
    rows: dict[str, list[int]] = {}
    labels: dict[str, int] = {}
    order: list[str] = []
    for n, name in enumerate(shards):
        with tarfile.open(folder / name) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                if ext == "cls":
                    labels[key] = int(tar.extractfile(m).read())
                else:
                    rows[key] = [n, m.offset_data, m.size]
                    order.append(key)
    return [rows[k] + [labels[k]] for k in order]


class ShardDataset(Dataset):
    """One split of packed shards: items ``(PIL.Image, label)`` read by index."""

    def __init__(self, folder: Path, split: dict[str, Any], classes: list[str]) -> None:
        self.folder, self.shards, self.classes = folder, list(split["shards"]), classes
        index = np.asarray(split["index"], dtype=np.int64).reshape(-1, 4)
        self.where, self.labels = index[:, :3], index[:, 3]
        self.paths = [f"{folder / self.shards[s]}@{o}" for s, o, _ in self.where]
        self._files: dict[int, Any] = {}  # opened lazily, per worker process

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}  # file handles stay in their process

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        shard, offset, size = (int(v) for v in self.where[i])
        try:
            fh = self._files.get(shard)
            if fh is None:
                fh = self._files[shard] = open(self.folder / self.shards[shard], "rb")
            fh.seek(offset)
            img = Image.open(io.BytesIO(fh.read(size)))
            img.load()
        except Exception as e:  # noqa: BLE001 - PIL raises many types for malformed data
            raise DataError(f"cannot read image {self.paths[i]}: {type(e).__name__}: {e}") from e
        return img, int(self.labels[i])


def is_shard_folder(path: Path) -> bool:
    """Whether ``path`` is a folder written by :func:`pack` (it holds :data:`INDEX`)."""
    return (path / INDEX).is_file()


def load_shards(path: Path) -> tuple[ShardDataset, ShardDataset | None, str, list[str]]:
    """(train, test or None, the test split's name, classes) of a packed folder."""
    try:
        meta = json.loads((path / INDEX).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read '{path / INDEX}': {e}; re-run `supmim data pack`") from e
    splits, classes = meta.get("splits", {}), list(meta.get("classes", []))
    if "train" not in splits:
        raise DataError(f"'{path}' has no train shards; pack a tree with a train/ split")
    missing = [s for v in splits.values() for s in v["shards"] if not (path / s).is_file()]
    if missing:
        raise DataError(f"shard files missing in '{path}': {missing[:3]}; copy the whole folder")
    train = ShardDataset(path, splits["train"], classes)
    test_name = next((s for s in ("val", "test") if s in splits), None)
    test = ShardDataset(path, splits[test_name], classes) if test_name else None
    return train, test, test_name or "test", classes


def _read(path: Path, ctx: ReadContext) -> DataSource:
    """The reader's load: a packed folder as a :class:`DataSource`."""
    return split_source(ctx.name, *load_shards(path))


register_reader("webdataset-shards", is_shard_folder, _read, order=10, in_archives=False)
