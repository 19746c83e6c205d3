"""Data loading: resolve ``--data`` into datasets, split them, and build transforms.

``--data`` is read by the reader registry (:mod:`supmim.data.readers`); a new source
format registers with :func:`register_reader`.
"""

from __future__ import annotations

from supmim.data.datasets import ImageDataset, read_bad_log
from supmim.data.readers import (
    ACCEPTED_FORMS,
    ReadContext,
    ReadOptions,
    Reader,
    extract_archive,
    read_idx,
    register_reader,
    registered_readers,
    resolve_data,
    unregister_reader,
)
from supmim.data.sampling import EpochSampler, mix_seed, seed_all
from supmim.data.source import (
    IMAGE_EXTENSIONS,
    ArrayDataset,
    DataSource,
    FolderDataset,
    cache_root,
    labels_of,
)
from supmim.data.streaming import StreamingImages
from supmim.data.stratified import stratified_split, stratified_subset
from supmim.data.transforms import build_eval_transform, build_train_transform, channel_stats

__all__ = [
    "ACCEPTED_FORMS",
    "ArrayDataset",
    "DataSource",
    "EpochSampler",
    "FolderDataset",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ReadContext",
    "ReadOptions",
    "Reader",
    "build_eval_transform",
    "build_train_transform",
    "cache_root",
    "channel_stats",
    "extract_archive",
    "labels_of",
    "mix_seed",
    "read_bad_log",
    "read_idx",
    "register_reader",
    "registered_readers",
    "resolve_data",
    "StreamingImages",
    "seed_all",
    "stratified_split",
    "stratified_subset",
    "unregister_reader",
]
