"""Deprecated: moved to supmim.data.source, supmim.data.stratified and supmim.data.readers
(registry, folder, archive, builtin); this alias goes in the next release."""

from supmim.data.readers.archive import ARCHIVE_SUFFIXES, extract_archive
from supmim.data.readers.builtin import read_idx
from supmim.data.readers.registry import ACCEPTED_FORMS, resolve_data
from supmim.data.source import (
    GREY_STATS,
    IMAGE_EXTENSIONS,
    ArrayDataset,
    DataSource,
    FolderDataset,
    cache_root,
    labels_of,
)
from supmim.data.stratified import stratified_split, stratified_subset

__all__ = [
    "ACCEPTED_FORMS", "ARCHIVE_SUFFIXES", "ArrayDataset", "DataSource", "FolderDataset", "GREY_STATS",
    "IMAGE_EXTENSIONS", "cache_root", "extract_archive", "labels_of", "read_idx", "resolve_data",
    "stratified_split", "stratified_subset",
]  # fmt: skip
