"""``--data`` readers, one module per source format, and the registry they register in.

Importing this package imports every built-in reader, so each has registered itself
(:func:`register_reader`) before :func:`resolve_data` dispatches. The modules form a DAG:
each reader imports only :mod:`supmim.data.source` (and :mod:`supmim.data.stratified`),
:mod:`~supmim.data.readers.registry`, and - Tiny ImageNet - :mod:`~supmim.data.readers.folder`;
nothing below imports this package. A new format is one new module calling
:func:`register_reader`, added to the import list below (or, outside supmim, any module
calling it before :func:`resolve_data` runs).
"""

from __future__ import annotations

from types import ModuleType

from supmim.data.readers import archive, builtin, folder, hf, shards, tiny_imagenet, wds
from supmim.data.readers.archive import ARCHIVE_SUFFIXES, extract_archive
from supmim.data.readers.builtin import read_idx
from supmim.data.readers.registry import (
    ACCEPTED_FORMS,
    DEFAULT_ORDER,
    Detect,
    Load,
    ReadContext,
    ReadOptions,
    Reader,
    register_reader,
    registered_readers,
    resolve_data,
    unregister_reader,
)

#: The built-in reader modules; importing them registered their readers.
READER_MODULES: tuple[ModuleType, ...] = (shards, wds, hf, tiny_imagenet, folder, archive,
                                          builtin)

__all__ = [
    "ACCEPTED_FORMS",
    "ARCHIVE_SUFFIXES",
    "DEFAULT_ORDER",
    "Detect",
    "Load",
    "ReadContext",
    "ReadOptions",
    "READER_MODULES",
    "Reader",
    "extract_archive",
    "read_idx",
    "register_reader",
    "registered_readers",
    "resolve_data",
    "unregister_reader",
]
