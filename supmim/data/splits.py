"""A run's datasets: the validation split carved from train, the training subset, and the
train / eval / test datasets with their transforms (:func:`build_run_data`).

Splits use a fixed seed (:data:`SPLIT_SEED`), so every training seed and every arm of a
comparison sees the same train / validation images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import numpy as np
from torch.utils.data import Dataset

from supmim.data.datasets import ImageDataset
from supmim.data.readers.registry import resolve_data
from supmim.data.source import labels_of
from supmim.data.stratified import stratified_split, stratified_subset
from supmim.data.transforms import build_eval_transform, build_train_transform, channel_stats
from supmim.config import RunConfig
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


def build_run_data(cfg: RunConfig, bad_log: Path | None = None, *,
                   train_as_eval: bool = False) -> RunData:
    """Resolve ``--data``, carve the validation split, apply the training subset.

    Unreadable images are replaced by the next readable one in training and left out of
    evaluation; each is appended to ``bad_log``. ``train_as_eval``: the training images
    under the evaluation transform, unreadable ones left out (feature banks, e.g. kNN).
    """
    d, m = cfg.data, cfg.model
    src = resolve_data(d.data, root=d.root, download=d.download, cache_dir=d.cache_dir)
    mean, std = channel_stats(d.mean or src.mean, d.std or src.std, m.in_chans)
    train_idx, val_idx = split_indices(cfg, labels_of(src.train))
    train_tf = build_train_transform(m.img_size, m.in_chans, mean, std, crop=d.crop, pad=d.pad,
                                     hflip=d.hflip, rand_augment=d.rand_augment,
                                     re_prob=d.re_prob, interpolation=d.interpolation)
    eval_tf = build_eval_transform(m.img_size, mean, std, crop_pct=d.crop_pct,
                                   interpolation=d.interpolation)
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
                   classes=list(src.classes), mean=tuple(mean), std=tuple(std))
