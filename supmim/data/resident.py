"""Images decoded once into one uint8 tensor, and augmented a batch at a time.

For data that fits in memory (CIFAR, Tiny ImageNet, Fashion-MNIST scale) this replaces the
per-image PIL work of data-loader workers: the images are converted and resized once (the
deterministic head of the training transform), kept on the training device, and every
batch is cropped and flipped with one gather.

The random parameters of a sample are counter hashes of ``(seed, epoch, position)``
(:func:`supmim.seeds.below`, :func:`~supmim.seeds.uniform`), so they are the same whichever
batch, process or resume computes them, and no host read is needed to draw them. They are
not torchvision's draws: a run on this path sees other (equally distributed) crops than the
same run on data-loader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms.functional import pil_to_tensor

from supmim.data.datasets import ImageDataset
from supmim.data.transforms import _ResizeIfNeeded
from supmim.seeds import below, mix_seed, uniform

__all__ = ["ResidentImages", "augment_batch", "channels_first", "crop_params", "decode", "decoded_bytes", "normalize"]

_AUG_TAG = 0xDA7A  # the stream of the batched crop / flip parameters


@dataclass
class ResidentImages:
    """``images`` (N, S, S, C) uint8, channels last (a gather then moves rows of C bytes),
    ``labels`` (N,) int64 (-1: unreadable, left out of
    evaluation), ``index`` (N,) int64 base-dataset indices (what seeds masks), on one device."""

    images: Tensor
    labels: Tensor
    index: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> "ResidentImages":
        return ResidentImages(self.images.to(device), self.labels.to(device),
                              self.index.to(device))


class _Decode:
    """PIL image -> (C, S, S) uint8: the training transform's deterministic head."""

    def __init__(self, size: int, interpolation: str) -> None:
        self.resize = _ResizeIfNeeded(size, interpolation)

    def __call__(self, img) -> Tensor:  # noqa: ANN001 - a PIL image
        return pil_to_tensor(self.resize(img))


def decoded_bytes(count: int, in_chans: int, size: int) -> int:
    """Bytes of ``count`` decoded images."""
    return count * in_chans * size * size


def decode(dataset: ImageDataset, size: int, interpolation: str, *, num_workers: int = 0,
           batch_size: int = 256) -> ResidentImages:
    """Every item of ``dataset`` converted to its mode and resized to ``size`` (short side,
    then centre crop; images already ``size`` x ``size`` untouched), on the CPU. Unreadable
    files follow the dataset's ``on_error`` (substituted or labelled -1, and logged)."""
    plain = ImageDataset(dataset.base, _Decode(size, interpolation), dataset.in_chans,
                         indices=dataset.indices, on_error=dataset.on_error,
                         bad_log=dataset.bad_log)
    images, labels, index = [], [], []
    for x, y, i in DataLoader(plain, batch_size=batch_size, num_workers=num_workers):
        images.append(x)
        labels.append(y)
        index.append(i)
    return ResidentImages(torch.cat(images).permute(0, 2, 3, 1).contiguous(),
                          torch.cat(labels).long(), torch.cat(index).long())


def crop_params(seed: int, epoch: int, positions: Tensor, *, pad: int,
                hflip: float) -> tuple[Tensor, Tensor, Tensor]:
    """(top, left, flip) of the samples at ``positions`` (B,) of ``epoch``: offsets in
    [0, 2 * pad] into the reflect-padded image and a flip with probability ``hflip``."""
    key = mix_seed(seed, epoch, _AUG_TAG)
    if pad > 0:
        top, left = below(2 * pad + 1, key, positions, 0), below(2 * pad + 1, key, positions, 1)
    else:
        top = left = torch.zeros_like(positions)
    return top, left, uniform(key, positions, 2) < hflip


def _reflect(coords: Tensor, size: int) -> Tensor:
    """Coordinates of a reflect-padded axis (no edge repeat, as ``F.pad(mode='reflect')``)
    mapped into [0, size)."""
    coords = coords.abs()
    return torch.where(coords > size - 1, 2 * (size - 1) - coords, coords)


def augment_batch(store: Tensor, items: Tensor, top: Tensor, left: Tensor, flip: Tensor,
                  pad: int) -> Tensor:
    """Images ``store[items]`` reflect-padded by ``pad``, cropped back to their size at
    (top, left) and flipped where ``flip``, in one gather: ``store`` (N, S, S, C) uint8,
    ``items`` (B,) -> (B, C, S, S) uint8. The same pixels as torchvision's
    ``RandomCrop(S, padding=pad, padding_mode='reflect')`` then ``hflip`` at those
    parameters."""
    n, s, _, c = store.shape
    ramp = torch.arange(s, device=store.device)
    rows = _reflect(top[:, None] + ramp - pad, s)  # (B, S)
    cols = _reflect(left[:, None] + ramp - pad, s)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    pixel = (items[:, None, None] * s + rows[:, :, None]) * s + cols[:, None, :]  # (B, S, S)
    out = store.view(n * s * s, c).index_select(0, pixel.reshape(-1))
    return out.view(-1, s, s, c).permute(0, 3, 1, 2).contiguous()


def channels_first(images: Tensor) -> Tensor:
    """(B, S, S, C) -> contiguous (B, C, S, S)."""
    return images.permute(0, 3, 1, 2).contiguous()


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (B, C, S, S) -> float32 normalised, the ops (and float results) of
    torchvision's ``ToTensor`` then ``Normalize``."""
    shape = (1, -1, 1, 1)
    m = torch.tensor(list(mean), device=images.device).view(shape)
    s = torch.tensor(list(std), device=images.device).view(shape)
    return images.float().div(255).sub(m).div(s)
