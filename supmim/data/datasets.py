"""Dataset wrappers: the tensor-producing dataset used by training and evaluation.

Sources (see ``sources.py``) yield ``(PIL.Image, int)``; :class:`ImageDataset` turns those
into ``(tensor, label, index)`` with a fixed channel count, whatever mode the file had.

Unreadable files (truncated, zero bytes, not an image) need not stop a run: with
``on_error="substitute"`` (training) the next readable sample takes the bad one's place so
batches stay full; with ``on_error="skip"`` (evaluation) a blank image with label -1 is
returned and metrics ignore it. Either way the file is listed in ``bad_log``, one line per
failure, appended atomically so data-loader workers and processes can share one file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from supmim.data.sampling import SeededSample
from supmim.errors import DataError

__all__ = ["ImageDataset", "append_bad", "read_bad_log", "to_mode"]

ON_ERROR = ("raise", "substitute", "skip")

# 16/32-bit integer greyscale modes: PIL's own convert("L") clips these at 255 instead of
# scaling, which would turn most 16-bit images white, so we rescale them ourselves.
_WIDE_GREY = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert ``img`` to ``mode`` ('L' or 'RGB'), handling alpha, palettes and 16-bit grey.

    Alpha is dropped (the colour under it is kept), as torchvision's default loader does.
    """
    if img.mode == mode:
        return img
    if img.mode in _WIDE_GREY:
        # Assume the full 16-bit range: 65535 -> 255.
        arr = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        return img if mode == "L" else img.convert(mode)
    if img.mode == "P" and "transparency" in img.info:
        # Going through RGBA avoids PIL's "palette with transparency" warning.
        img = img.convert("RGBA")
    return img.convert(mode)


class ImageDataset(Dataset):
    """Wrap a dataset of ``(PIL.Image, label)`` into ``(tensor, label, index)``.

    Args:
        base: any dataset whose items are ``(PIL.Image.Image, int)``.
        transform: callable applied to the converted image (e.g. from ``transforms.py``);
            ``None`` returns the converted PIL image.
        in_chans: 1 converts every image to 'L', 3 to 'RGB', so mixed-mode folders
            (grey, RGBA, palette) batch cleanly.
        indices: optional positions in ``base`` to expose (a split or subset).
        on_error: "raise", "substitute" or "skip" (see the module docstring).
        bad_log: file that failures are appended to (``None``: only kept in ``self.bad``).

    Items may be requested as ``i`` or as ``(i, seed)`` (what :class:`EpochSampler` yields):
    with a seed, the random transforms draw from generators seeded by it, so the sample's
    augmentation is a function of the seed alone.

    The returned index is the position in ``base``, not in this wrapper, so it stays the
    same across subsets and can seed per-sample randomness (e.g. a fixed mask per image).
    """

    def __init__(
        self,
        base: Any,
        transform: Callable[[Image.Image], Any] | None,
        in_chans: int,
        indices: np.ndarray | None = None,
        *,
        on_error: str = "raise",
        bad_log: str | Path | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise DataError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if in_chans not in (1, 3):
            raise DataError(f"in_chans must be 1 (greyscale) or 3 (RGB), got {in_chans}; pass 1 or 3")
        self.base = base
        self.transform = transform
        self.in_chans = in_chans
        self.mode = "L" if in_chans == 1 else "RGB"
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            if indices.ndim != 1:
                raise DataError(f"indices must be a 1-D array of positions, got shape {indices.shape}")
            n = len(base)
            if indices.size and (indices.min() < 0 or indices.max() >= n):
                raise DataError(
                    f"indices must lie in [0, {n}) for a base dataset of {n} items; "
                    "build them from labels_of(base)"
                )
        self.indices = indices
        self.on_error = on_error
        self.bad_log = Path(bad_log) if bad_log is not None else None
        self.bad: list[str] = []  # failures seen by this process (workers keep their own)

    def __len__(self) -> int:
        return len(self.base) if self.indices is None else int(self.indices.size)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int, int]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        if i < 0:  # support negative positions like a sequence does
            i += len(self)
        if seed is None:
            return self._item(i)
        with SeededSample(seed):
            return self._item(i)

    def _base_index(self, i: int) -> int:
        return int(self.indices[i]) if self.indices is not None else int(i)

    def _read(self, j: int) -> tuple[Image.Image, int]:
        img, label = self.base[j]
        try:
            return to_mode(img, self.mode), int(label)
        except Exception as e:  # noqa: BLE001 - a decodable file PIL cannot convert is bad too
            raise DataError(f"cannot convert item {j} (mode {img.mode}) to {self.mode}: "
                            f"{e}") from e

    def _item(self, i: int) -> tuple[Any, int, int]:
        j = self._base_index(i)
        try:
            img, label = self._read(j)
        except DataError as err:
            if self.on_error == "raise":
                raise
            self._record(j, err)
            if self.on_error == "skip":
                # a blank of the right shape; label -1 tells evaluation to leave it out
                blank = Image.new(self.mode, (32, 32))
                return (self.transform(blank) if self.transform is not None else blank), -1, j
            img, label, j = self._substitute(i)
        x = self.transform(img) if self.transform is not None else img
        return x, label, j

    def _substitute(self, i: int) -> tuple[Image.Image, int, int]:
        """The next readable sample after position ``i`` (wrapping around)."""
        n = len(self)
        for step in range(1, n):
            j = self._base_index((i + step) % n)
            try:
                img, label = self._read(j)
                return img, label, j
            except DataError as err:
                self._record(j, err)
        raise DataError("no readable image left in the dataset; check the files")

    def _record(self, j: int, err: Exception) -> None:
        paths = getattr(self.base, "paths", None)
        where = str(paths[j]) if paths is not None else f"{type(self.base).__name__}[{j}]"
        self.bad.append(where)
        if self.bad_log is not None:
            append_bad(self.bad_log, where, err)


def append_bad(bad_log: str | Path, where: str, err: Exception | str) -> None:
    """Append one ``where<TAB>reason`` line to the bad-file log ``bad_log``."""
    line = (where.replace("\n", " ") + "\t" + str(err).replace("\n", " ")[:300] + "\n")
    # O_APPEND: each short write lands whole even with several writers
    fd = os.open(bad_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    finally:
        os.close(fd)


def read_bad_log(path: str | Path) -> dict[str, str]:
    """``{file: reason}`` of every failure in a bad-file log (duplicates collapse)."""
    path = Path(path)
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        where, _, reason = line.partition("\t")
        if where:
            out[where] = reason
    return out
