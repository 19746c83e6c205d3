"""A run's datasets: the validation split carved from train, the training subset, and the
train / eval / test datasets with their transforms (:func:`build_run_data`).

Splits use a fixed seed (:data:`SPLIT_SEED`), so every training seed and every arm of a
comparison sees the same train / validation images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from supmim.data.datasets import ImageDataset
from supmim.data.readers.registry import ReadOptions, resolve_data
from supmim.data.source import DataSource, labels_of
from supmim.data.streaming import StreamingImages
from supmim.data.stratified import stratified_split, stratified_subset
from supmim.data.transforms import build_eval_transform, build_train_transform, channel_stats
from supmim.config import DataConfig, RunConfig
from supmim.errors import ConfigError

SPLIT_SEED = 0  # the train/val split and training subset are the same for every training seed


@dataclass
class RunData:
    """Datasets of one run; ``eval`` is what the per-epoch evaluation uses."""

    train: Dataset
    eval: Dataset | None
    eval_split: str
    test: Dataset | None
    test_split: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # the datasets carry build_train_transform / build_eval_transform of the run's config,
    # so the device-resident loader (supmim.engine.device_loader) may stand in for them
    resident: bool = False


def split_indices(cfg: RunConfig, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Training indices (after the subset) and validation indices (None without a val split)."""
    d = cfg.data
    train_idx, val_idx = np.arange(len(labels)), None
    if d.val_fraction > 0:
        train_idx, val_idx = stratified_split(labels, d.val_fraction, SPLIT_SEED)
    if d.train_samples and d.train_samples_cap and d.train_samples > len(train_idx):
        print(f"supmim: note: the preset's data.train_samples ({d.train_samples}) is more than "
              f"the {len(train_idx)} training images available: training on all of them (set "
              "data.train_samples to choose a number)")
    elif d.train_samples:
        if d.train_samples > len(train_idx):
            raise ConfigError(f"data.train_samples ({d.train_samples}) exceeds the "
                              f"{len(train_idx)} training images available; set a smaller "
                              "value, or 0 for all of them")
        train_idx = train_idx[stratified_subset(labels[train_idx], d.train_samples, SPLIT_SEED)]
    return train_idx, val_idx


def read_options(d: DataConfig) -> ReadOptions:
    """The reader options of a data config (``data.test_data``, columns, streaming)."""
    return ReadOptions(test_data=d.test_data, image_column=d.image_column,
                       label_column=d.label_column, streaming=d.streaming)


def resolve_config_data(d: DataConfig) -> DataSource:
    """``resolve_data`` of ``d.data`` with every data-config option."""
    return resolve_data(d.data, root=d.root, download=d.download, cache_dir=d.cache_dir,
                        options=read_options(d))


def _epoch_size(cfg: RunConfig, available: int) -> int:
    """A streamed training split's epoch: ``data.train_samples`` (a preset's at most the
    samples there are), else all ``available`` samples."""
    d = cfg.data
    if not d.train_samples:
        return available
    if d.train_samples > available and not d.train_samples_cap:
        raise ConfigError(f"data.train_samples ({d.train_samples}) exceeds the {available} "
                          "training samples the stream holds; set a smaller value, or 0 for all")
    return min(d.train_samples, available)


def _streamed_run_data(cfg: RunConfig, src: DataSource, train_tf: Any, eval_tf: Any,
                       mean: tuple[float, ...], std: tuple[float, ...], bad_log: Path | None,
                       train_as_eval: bool) -> RunData:
    """RunData of a streamed source: no validation split can be carved, the test split is
    evaluated (see :mod:`supmim.data.streaming`)."""
    d, m, seed = cfg.data, cfg.model, cfg.train.seed
    if src.test is None:
        raise ConfigError(f"'{d.data}' is streamed and has no test split, and a validation "
                          "split cannot be carved from a stream: give data.test_data (or "
                          "val-/test- shards beside the train- ones)")
    if d.val_fraction > 0:
        print("supmim: note: data.val_fraction does not apply to streamed data (no random "
              f"access to carve it); evaluating on the {src.test_split} split")
    train = src.train.configured(eval_tf if train_as_eval else train_tf, m.in_chans,
                                 train=not train_as_eval, seed=seed, bad_log=bad_log,
                                 count=_epoch_size(cfg, len(src.train)))
    test = src.test.configured(eval_tf, m.in_chans, train=False, seed=seed, bad_log=bad_log) \
        if isinstance(src.test, StreamingImages) else ImageDataset(
            src.test, eval_tf, m.in_chans, on_error="skip", bad_log=bad_log)
    return RunData(train=train, eval=test, eval_split=src.test_split, test=test,
                   test_split=src.test_split, classes=list(src.classes), mean=tuple(mean),
                   std=tuple(std))


def build_run_data(cfg: RunConfig, bad_log: Path | None = None, *,
                   train_as_eval: bool = False) -> RunData:
    """Resolve ``--data``, carve the validation split, apply the training subset.

    Unreadable images are replaced by the next readable one in training and left out of
    evaluation; each is appended to ``bad_log``. ``train_as_eval``: the training images
    under the evaluation transform, unreadable ones left out (feature banks, e.g. kNN).
    """
    d, m = cfg.data, cfg.model
    src = resolve_config_data(d)
    mean, std = channel_stats(d.mean or src.mean, d.std or src.std, m.in_chans)
    train_tf = build_train_transform(m.img_size, m.in_chans, mean, std, crop=d.crop, pad=d.pad,
                                     hflip=d.hflip, rand_augment=d.rand_augment,
                                     re_prob=d.re_prob, interpolation=d.interpolation)
    eval_tf = build_eval_transform(m.img_size, mean, std, crop_pct=d.crop_pct,
                                   interpolation=d.interpolation)
    if isinstance(src.train, StreamingImages):
        return _streamed_run_data(cfg, src, train_tf, eval_tf, mean, std, bad_log,
                                  train_as_eval)
    train_idx, val_idx = split_indices(cfg, labels_of(src.train))
    train = ImageDataset(src.train, eval_tf if train_as_eval else train_tf, m.in_chans,
                         indices=train_idx, on_error="skip" if train_as_eval else "substitute",
                         bad_log=bad_log)
    test = ImageDataset(src.test, eval_tf, m.in_chans, on_error="skip", bad_log=bad_log) \
        if src.test is not None else None
    val = ImageDataset(src.train, eval_tf, m.in_chans, indices=val_idx, on_error="skip",
                       bad_log=bad_log) if val_idx is not None else None
    if val is None and test is None:
        raise ConfigError(f"'{d.data}' has no test split: set data.val_fraction > 0 so a "
                          "validation split is carved from train")
    return RunData(train=train, eval=val or test, eval_split="val" if val is not None
                   else src.test_split, test=test, test_split=src.test_split,
                   classes=list(src.classes), mean=tuple(mean), std=tuple(std),
                   resident=not train_as_eval)
