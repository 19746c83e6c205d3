"""Data loading: resolve ``--data`` into datasets, split them, and build transforms."""

from __future__ import annotations

from supmim.data.datasets import ImageDataset, read_bad_log
from supmim.data.sampling import EpochSampler, mix_seed, seed_all
from supmim.data.sources import (
    ACCEPTED_FORMS,
    ArrayDataset,
    DataSource,
    FolderDataset,
    labels_of,
    read_idx,
    resolve_data,
    stratified_split,
    stratified_subset,
)
from supmim.data.transforms import build_eval_transform, build_train_transform, channel_stats

__all__ = [
    "ACCEPTED_FORMS",
    "ArrayDataset",
    "DataSource",
    "EpochSampler",
    "FolderDataset",
    "ImageDataset",
    "build_eval_transform",
    "build_train_transform",
    "channel_stats",
    "labels_of",
    "mix_seed",
    "read_bad_log",
    "seed_all",
    "read_idx",
    "resolve_data",
    "stratified_split",
    "stratified_subset",
]
