"""The one registry of ``--data`` readers, and :func:`resolve_data`, which dispatches to it.

A reader is a name, a ``detect(path) -> bool`` and a ``load(path, ctx) -> DataSource``.
Readers register themselves when their module is imported (``supmim.data.readers``
imports every built-in one); a reader registered with ``detect=None`` is a built-in
dataset picked by its name instead of by a path.

Dispatch (:func:`resolve_data`):

0. a spec claimed by a reader's ``claims(spec)`` (a prefix such as ``hf:``, a URL, a brace
   pattern: forms that are not paths) goes to that reader;
1. a spec that names a by-name reader (case, ``-`` and ``_`` ignored) and has no path
   separator and no leading ``.`` is that dataset, even if a same-named folder exists;
2. an existing folder or file goes to the first path reader, by ``order``, whose
   ``detect`` accepts it (shards 10, Hugging Face 20, Tiny ImageNet 30, new readers 50 by
   default, image-folder tree 90, archive 95);
3. an archive's extracted folder is read the same way, by the readers registered with
   ``in_archives=True``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from supmim.data.source import IMAGE_EXTENSIONS, DataSource
from supmim.errors import DataError

__all__ = [
    "ACCEPTED_FORMS",
    "ALL_OPTIONS",
    "DEFAULT_ORDER",
    "Detect",
    "Load",
    "ReadContext",
    "ReadOptions",
    "Reader",
    "read_extracted",
    "register_reader",
    "registered_readers",
    "resolve_data",
    "unregister_reader",
]

ACCEPTED_FORMS = (
    "Accepted forms of --data:\n"
    "  - a folder containing train/ and val/ (or test/), each with one sub-folder per class\n"
    "    holding images (" + " ".join(IMAGE_EXTENSIONS) + ");\n"
    "  - a .tar, .tar.gz or .tgz archive of such a folder (it may sit under one top-level folder);\n"
    "  - the Tiny ImageNet layout (wnids.txt, train/<wnid>/images/*.JPEG, val/images/ +\n"
    "    val/val_annotations.txt), as a folder or such an archive: classes = sorted wnids, test split = val;\n"
    "  - a folder of WebDataset shards written by `supmim data pack`;\n"
    "  - standard WebDataset shards: a folder of train-*.tar (+ val-*/test-*.tar), a brace\n"
    "    pattern (/d/train-{000000..000009}.tar), or pipe:/http(s) URLs (streamed);\n"
    "    members KEY.jpg|jpeg|png|webp + KEY.cls or KEY.json (label/cls/class field);\n"
    "  - a Hugging Face dataset saved with save_to_disk (Image + ClassLabel columns);\n"
    "  - hf:imagefolder:DIR, hf:parquet:DIR|GLOB, hf:NAME (datasets.load_dataset);\n"
    "    hf+stream:... (or data.streaming=true) streams it;\n"
    "  - fashion-mnist  (apt-get install dataset-fashion-mnist, or --data-root with the four IDX .gz files);\n"
    "  - digits         (scikit-learn's load_digits; pip install scikit-learn);\n"
    "  - cifar10 or cifar100  (torchvision; pass --download, or --data-root with the extracted files)."
)

DEFAULT_ORDER = 50


@dataclass(frozen=True)
class ReadOptions:
    """Reader options from the data config; each reader lists those it understands
    (:attr:`Reader.options`) and :func:`resolve_data` refuses the others.

    ``test_data``: the evaluation split, in the form of ``--data`` (patterns, URLs, ``hf:``);
    ``image_column`` / ``label_column``: the image / label column (Hugging Face) or member
    extension / JSON field (WebDataset); ``streaming``: read front to back instead of indexed.
    """

    test_data: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    streaming: bool = False

    def given(self) -> list[str]:
        """The names of the options that are set."""
        return [f.name for f in fields(self) if getattr(self, f.name) not in (None, False)]


#: every :class:`ReadOptions` field: what a reader that understands them all declares
ALL_OPTIONS = tuple(f.name for f in fields(ReadOptions))


def need_package(module: str, what: str) -> Any:
    """``import module`` for a reader of the ``data`` extra, or a one-line DataError saying
    that ``what`` needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DataError(f"{what} needs `pip install {module}` (or supmim[data])") from e


@dataclass(frozen=True)
class ReadContext:
    """What a reader's ``load`` gets besides the path.

    ``name`` is the :attr:`DataSource.name` to give (the resolved path of the folder or
    archive the user passed, or the dataset's name); ``what`` is ``"folder"``, ``"file"``,
    ``"archive"`` (an archive's extracted folder), ``"builtin"`` or ``"spec"`` (a
    claimed non-path spec), for error messages.
    ``root``, ``download`` and ``cache_dir`` are :func:`resolve_data`'s arguments.
    """

    spec: str
    name: str
    what: str
    root: str | None = None
    download: bool = False
    cache_dir: str | None = None
    options: ReadOptions = field(default_factory=ReadOptions)


Detect = Callable[[Path], bool]
Load = Callable[[Path, ReadContext], DataSource]
Claims = Callable[[str], bool]


@dataclass(frozen=True)
class Reader:
    """One registered source format; see :func:`register_reader`."""

    name: str
    detect: Detect | None
    load: Load
    order: int = DEFAULT_ORDER
    in_archives: bool = True
    claims: Claims | None = None
    options: frozenset[str] = frozenset()

    @property
    def by_name(self) -> bool:
        """Whether this is a built-in dataset selected by its name rather than by a path."""
        return self.detect is None and self.claims is None


_READERS: dict[str, Reader] = {}


def name_key(name: str) -> str:
    """The form a dataset name is matched in: lower case, without ``-`` and ``_``."""
    return name.lower().replace("-", "").replace("_", "")


def register_reader(name: str, detect: Detect | None, load: Load, *, order: int = DEFAULT_ORDER,
                    in_archives: bool = True, claims: Claims | None = None,
                    options: tuple[str, ...] = ()) -> Reader:
    """Add (or, under a name already taken, replace) a reader and return it.

    ``detect(path)`` is called with any existing file or folder and must not raise for
    ones it does not read; ``None`` makes ``name`` a built-in dataset, chosen when
    ``--data`` is that name (then ``load`` gets ``Path(spec)``). Path readers are tried
    by ascending ``order``, ties in registration order. ``in_archives``: also try it on
    the folder an archive extracts to. ``claims(spec)``: this reader takes specs that are
    not paths (then ``load`` gets ``Path(spec)`` and reads ``ctx.spec``). ``options``: the
    :class:`ReadOptions` names it understands.
    """
    reader = Reader(name, detect, load, order, in_archives, claims, frozenset(options))
    _READERS[name] = reader
    return reader


def unregister_reader(name: str) -> Reader | None:
    """Remove the reader called ``name``; return it (None when there was none)."""
    return _READERS.pop(name, None)


def registered_readers() -> list[Reader]:
    """Every reader, built-in datasets first, then path readers in dispatch order."""
    return sorted(_READERS.values(), key=lambda r: (not r.by_name, r.order))


def _by_name(spec: str) -> Reader | None:
    """The by-name reader ``spec`` names, unless it is written as a path."""
    if os.sep in spec or spec.startswith("."):
        return None
    key = name_key(spec)
    return next((r for r in registered_readers() if r.by_name and name_key(r.name) == key), None)


def _detecting(path: Path, *, extracted: bool) -> Reader | None:
    """The first path reader that accepts ``path`` (only ``in_archives`` ones if ``extracted``)."""
    for reader in registered_readers():
        if reader.detect is None or (extracted and not reader.in_archives):
            continue
        if reader.detect(path):
            return reader
    return None


def read_extracted(folder: Path, ctx: ReadContext) -> DataSource:
    """Read an archive's extracted ``folder`` with the readers that accept archives."""
    reader = _detecting(folder, extracted=True)
    if reader is None:
        raise DataError(f"archive {ctx.name} holds no layout supmim reads.\n" + ACCEPTED_FORMS)
    return reader.load(folder, replace(ctx, what="archive"))


def _claiming(spec: str) -> Reader | None:
    """The first reader, by ``order``, whose ``claims`` takes ``spec``."""
    return next((r for r in registered_readers() if r.claims is not None and r.claims(spec)),
                None)


def _load(reader: Reader, path: Path, ctx: ReadContext) -> DataSource:
    """``reader.load``, after refusing the options it does not understand."""
    unknown = [o for o in ctx.options.given() if o not in reader.options]
    if unknown:
        raise DataError(f"data.{unknown[0]} does not apply to --data {ctx.spec!r} (read as "
                        f"{reader.name}); it applies to WebDataset patterns/URLs and hf: "
                        "sources. Remove it")
    return reader.load(path, ctx)


def _read_path(path: Path, ctx: ReadContext) -> DataSource:
    """Read an existing file or folder with the first path reader that accepts it."""
    reader = _detecting(path, extracted=False)
    if reader is not None:
        return _load(reader, path, ctx)
    if ctx.what == "file":
        raise DataError(f"--data {ctx.spec!r} is a file but not a .tar/.tar.gz/.tgz archive.\n" + ACCEPTED_FORMS)
    raise DataError(f"--data {ctx.spec!r} is a folder in no layout supmim reads.\n" + ACCEPTED_FORMS)


def resolve_data(
    spec: str, *, root: str | None = None, download: bool = False, cache_dir: str | None = None,
    options: ReadOptions | None = None,
) -> DataSource:
    """Turn ``--data`` into a :class:`DataSource`; see :data:`ACCEPTED_FORMS`.

    A built-in name wins over a same-named folder in the working directory; write
    ``./cifar10`` to mean the folder. ``root`` (``--data-root``) only matters for the
    built-in datasets; ``cache_dir`` holds extracted archives, downloads and shard indexes.
    ``options``: reader options (:class:`ReadOptions`) from the data config.
    """
    spec, options = str(spec).strip(), options or ReadOptions()
    claimed = _claiming(spec)
    if claimed is not None:
        return _load(claimed, Path(spec), ReadContext(spec, spec, "spec", root, download,
                                                      cache_dir, options))
    named = _by_name(spec)
    if named is not None:
        return _load(named, Path(spec), ReadContext(spec, named.name, "builtin", root, download,
                                                    cache_dir, options))
    path = Path(spec).expanduser()
    if path.is_dir() or path.is_file():
        what = "folder" if path.is_dir() else "file"
        return _read_path(path, ReadContext(spec, str(path.resolve()), what, root, download,
                                            cache_dir, options))
    if path.exists():
        raise DataError(f"--data {spec!r} is neither a folder nor a regular file.\n" + ACCEPTED_FORMS)
    raise DataError(f"--data {spec!r}: no such folder or file, and not a built-in dataset name.\n" + ACCEPTED_FORMS)
