"""Dataset wrappers: the tensor-producing dataset used by training and evaluation.

Sources (see ``sources.py``) yield ``(PIL.Image, int)``; :class:`ImageDataset` turns those
into ``(tensor, label, index)`` with a fixed channel count, whatever mode the file had.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from supmim.errors import DataError

__all__ = ["ImageDataset", "to_mode"]

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

    The returned index is the position in ``base``, not in this wrapper, so it stays the
    same across subsets and can seed per-sample randomness (e.g. a fixed mask per image).
    """

    def __init__(
        self,
        base: Any,
        transform: Callable[[Image.Image], Any] | None,
        in_chans: int,
        indices: np.ndarray | None = None,
    ) -> None:
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

    def __len__(self) -> int:
        return len(self.base) if self.indices is None else int(self.indices.size)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        if i < 0:  # support negative positions like a sequence does
            i += len(self)
        j = int(self.indices[i]) if self.indices is not None else int(i)
        img, label = self.base[j]
        img = to_mode(img, self.mode)
        x = self.transform(img) if self.transform is not None else img
        return x, int(label), j
