"""``--tokenizer auto`` without the wait: trained tokenizers kept in a cache, keyed by what they
were trained on and how.

A run with the VQ target and no tokenizer trains one on its own training split. The same data
and recipe always give the same tokenizer (training is seeded), so the result is stored under
``CACHE/tokenizers/KEY/`` (``CACHE``: ``data.cache_dir``, else ``$SUPMIM_CACHE``, else
``~/.cache/supmim``) and the next ``train``, ``compare`` or ``sweep`` arm on that data copies it
instead of training again. ``KEY`` hashes:

- the training images' content: the pixels of in-memory datasets; the bytes of image files
  (for folders over :data:`CONTENT_LIMIT` bytes, their paths, sizes and modification times,
  since reading ImageNet for a key would cost more than the tokenizer);
- which images are the training split (indices, after ``data.val_fraction`` and
  ``data.train_samples``) and the labels;
- the tokenizer recipe: every field of its model and optimisation configs, the grid plan, the
  flip probability and the seed.

Concurrent runs (``sweep --parallel``) wait on a lock per key, so one trains and the others
reuse its result.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from supmim.config import RunConfig
from supmim.data import labels_of
from supmim.data.splits import resolve_config_data
from supmim.data.source import ArrayDataset, FolderDataset, cache_root
from supmim.data.splits import split_indices
from supmim.run.lock import RunLock
from supmim.run.tokenizer import tokenizer_recipe, train_tokenizer_for_run

CONTENT_LIMIT = 4 * 2**30  # folders up to 4 GiB are keyed by their files' bytes
SAMPLED = 256  # datasets of unknown type: keyed by this many decoded images, evenly spaced
VERSION = 1  # bump when the recipe's meaning changes without its fields changing


def cache_dir(cfg: RunConfig) -> Path:
    """Where cached tokenizers live: ``CACHE/tokenizers``."""
    return cache_root(cfg.data.cache_dir) / "tokenizers"


def recipe_key(cfg: RunConfig) -> str:
    """The cache key of the tokenizer ``--tokenizer auto`` would train for ``cfg``."""
    model_cfg, train_cfg = tokenizer_recipe(cfg, steps=cfg.mim.tokenizer_steps)
    optim = {k: v for k, v in asdict(train_cfg).items() if k not in ("device", "log_every")}
    recipe = {"version": VERSION, "model": asdict(model_cfg), "train": optim,
              "hflip": cfg.data.hflip}
    h = xxhash.xxh3_128(json.dumps(recipe, sort_keys=True).encode())
    h.update(data_digest(cfg).encode())
    return h.hexdigest()


def data_digest(cfg: RunConfig) -> str:
    """A digest of the run's training split: content, membership and labels."""
    d = cfg.data
    src = resolve_config_data(d)
    labels = labels_of(src.train)
    train_idx, _ = split_indices(cfg, labels)
    h = xxhash.xxh3_128()
    h.update(np.asarray(train_idx, dtype=np.int64).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    _hash_images(h, src.train, np.asarray(train_idx))
    return h.hexdigest()


def _hash_images(h: Any, dataset: Any, idx: np.ndarray) -> None:
    if isinstance(dataset, ArrayDataset):
        h.update(np.ascontiguousarray(dataset.images[idx]).tobytes())
        return
    if isinstance(dataset, FolderDataset):
        paths = [dataset.paths[i] for i in idx]
        stats = [os.stat(p) for p in paths]
        if sum(s.st_size for s in stats) <= CONTENT_LIMIT:
            for p in paths:
                h.update(Path(p).read_bytes())
        else:
            h.update("\n".join(f"{p}\0{s.st_size}\0{s.st_mtime_ns}"
                               for p, s in zip(paths, stats)).encode())
        return
    data = getattr(dataset, "data", None)  # torchvision's CIFAR / MNIST keep the pixels here
    if isinstance(data, np.ndarray) or hasattr(data, "numpy"):
        h.update(np.ascontiguousarray(np.asarray(data)[idx]).tobytes())
        return
    h.update(f"{type(dataset).__qualname__}\0{len(dataset)}".encode())
    for i in np.unique(np.linspace(0, len(idx) - 1, min(SAMPLED, len(idx))).astype(int)):
        h.update(np.asarray(dataset[int(idx[i])][0]).tobytes())


def provide(cfg: RunConfig, dest: Path, *, progress: bool = True) -> str:
    """Put ``--tokenizer auto``'s tokenizer in ``dest``: copied from the cache, or trained
    there and then cached. Returns the note to print (what happened, how to pass one)."""
    key = recipe_key(cfg)
    root = cache_dir(cfg)
    entry = root / key
    # wait as long as it takes: the holder is training this very tokenizer
    lock = RunLock(cache_root(cfg.data.cache_dir) / "locks" / f"tokenizer-{key}", wait=math.inf)
    with lock:
        if (entry / "tokenizer.json").is_file() and (entry / "tokenizer.safetensors").is_file():
            _copy_folder(entry, dest)
            return (f"reused the tokenizer trained earlier on this data with this recipe "
                    f"({entry}); pass --tokenizer FOLDER to use another")
        summary = train_tokenizer_for_run(cfg, dest, steps=cfg.mim.tokenizer_steps,
                                          progress=progress)
        try:
            _copy_folder(dest, entry)
            where = f"cached it in {entry} for the next run on this data"
        except OSError as err:  # a read-only or full cache never fails the run
            where = f"could not cache it ({err})"
    return (f"no tokenizer given: trained one on the training split ({cfg.mim.tokenizer_steps} "
            f"steps, PSNR {summary['psnr']:.2f} dB, codebook usage "
            f"{summary['usage']:.0f}%) and {where}; pass --tokenizer FOLDER to use "
            "your own")


def _copy_folder(src: Path, dest: Path) -> None:
    """Copy ``src``'s files into ``dest`` through a temporary folder and a rename, so a reader
    never sees half a tokenizer."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
