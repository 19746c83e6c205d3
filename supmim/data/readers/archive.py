"""Archives as a ``--data`` source: a ``.tar``, ``.tar.gz`` or ``.tgz`` of a folder any
archive-capable reader understands (an image-folder tree, Tiny ImageNet).

:func:`extract_archive` unpacks it once, safely (tarfile's ``data`` filter), into the cache
(:func:`~supmim.data.source.cache_root`); the extracted folder is then read by the
readers registered with ``in_archives=True`` (see
:func:`~supmim.data.readers.registry.read_extracted`). Evaluation reuses
:func:`extract_archive` for its own archives.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from supmim.data.readers.registry import ReadContext, read_extracted, register_reader
from supmim.data.source import DataSource, cache_root
from supmim.errors import DataError

__all__ = ["ARCHIVE_SUFFIXES", "archive_name", "extract_archive", "is_archive"]

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def archive_name(path: Path) -> str | None:
    """``path``'s name without its archive suffix; None when it has none."""
    low = path.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if low.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a regular file named like an archive (its content is not checked)."""
    return path.is_file() and archive_name(path) is not None


def _make_parent(parent: Path) -> None:
    """Create the archive cache folder, or explain how to point it somewhere writable."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create cache folder {parent}: {e}; set SUPMIM_CACHE (or cache_dir) to a writable folder"
        ) from e


def _extract_into(path: Path, tmp: Path) -> None:
    """Extract ``path`` into ``tmp``; on any failure remove ``tmp`` (and explain tar errors)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            # filter="data" refuses absolute paths, "../" escapes, links pointing outside,
            # device files, and drops unsafe permission bits.
            tar.extractall(tmp, filter="data")
    except tarfile.FilterError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"refusing to extract {path}: unsafe member ({e}); rebuild the archive with relative paths only"
        ) from e
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot read archive {path}: {e}; check that the file is a complete .tar/.tar.gz/.tgz") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def extract_archive(path: Path, cache_dir: str | None) -> Path:
    """Extract ``path`` once into the cache and return the folder; reuse it afterwards.

    The folder name hashes (absolute path, size, mtime), so an edited archive gets a fresh
    copy. Extraction goes to a hidden temp folder that is renamed into place only when
    complete, so a crash never leaves a half-extracted folder that looks finished.
    """
    name = archive_name(path) or path.name
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    parent = cache_root(cache_dir) / "archives"
    final = parent / f"{name}-{key}"
    if final.is_dir():
        return final
    if not hasattr(tarfile, "data_filter"):
        raise DataError(
            f"safe extraction of {path} needs Python >= 3.10.12 / 3.11.4 (tarfile filter='data'); "
            "upgrade Python, or extract it yourself and pass the folder to --data"
        )
    _make_parent(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{key}-", dir=parent))
    _extract_into(path, tmp)
    try:
        os.rename(tmp, final)
    except OSError:
        # Another process finished first: use its copy.
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    return final


def _read(path: Path, ctx: ReadContext) -> DataSource:
    """The reader's load: extract, then read the folder with the archive-capable readers."""
    return read_extracted(extract_archive(path, ctx.cache_dir), ctx)


register_reader("archive", is_archive, _read, order=95, in_archives=False)
