"""The device-resident loaders of ``data.loader=device`` (the default where the data allows).

The training and evaluation images are decoded once (:mod:`supmim.data.resident`) onto the
training device. A training batch is then a slice of the epoch's order, one gather for the
pad-crop and flip, the normalisation, and (for a MIM run) its masks, all on the device
(random masks; block masks are drawn on the host, as on the workers): no worker processes,
no per-image PIL work, no host-to-device copy of pixels.

Order, crops, flips and masks are functions of ``(seed, epoch, position or index)``: the
order is :class:`~supmim.data.EpochSampler`'s, so resuming mid-epoch, the process count and
the two arms of a comparison see what they see on data-loader workers; the crop, flip and
random-mask draws are counter hashes (not the workers' torchvision / NumPy draws).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from supmim.config import RunConfig, device_unbatchable
from supmim.data import EpochSampler
from supmim.data.datasets import ImageDataset
from supmim.data.resident import (ResidentImages, augment_batch, channels_first, crop_params,
                                  decode, decoded_bytes, normalize)
from supmim.data.splits import RunData
from supmim.errors import ConfigError
from supmim.models.masking import Masker, RandomMasking, random_masks_on, sample_masks

__all__ = ["DeviceEvalLoader", "DeviceTrainLoader", "device_loader_refusal", "resident_eval"]

Batch = tuple[Tensor, ...]


class DeviceTrainLoader:
    """Batches ``(images (B,C,S,S) float, labels (B,), index (B,)[, mask (B,N) bool])`` of
    one epoch of ``sampler`` (this process's share, from its ``start``), full batches only.
    ``masker`` (set by :func:`~supmim.engine.masked_loader.with_masks`) adds the masks."""

    def __init__(self, data: ResidentImages, sampler: EpochSampler, batch_size: int, *,
                 seed: int, pad: int, hflip: float, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        self.data, self.sampler, self.batch_size = data, sampler, batch_size
        self.seed, self.pad, self.hflip, self.mean, self.std = seed, pad, hflip, mean, std
        self.host_index = data.index.cpu()  # block masks are drawn on the host
        self.masker: Masker | None = None

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        epoch, b = self.sampler.epoch, self.batch_size
        order = self.sampler.order()[self.sampler.start:][: len(self) * b]
        on_device = order.to(self.data.images.device)  # one copy per epoch
        for i in range(len(self)):
            yield self.batch(on_device[i * b:(i + 1) * b], order[i * b:(i + 1) * b], epoch)

    def batch(self, positions: Tensor, host_positions: Tensor, epoch: int) -> Batch:
        """The batch of the samples at ``positions`` (B,) of ``epoch``, on the device
        (``host_positions``: the same on the host, for masks drawn there)."""
        d = self.data
        top, left, flip = crop_params(self.seed, epoch, positions, pad=self.pad, hflip=self.hflip)
        images = normalize(augment_batch(d.images, positions, top, left, flip, self.pad),
                           self.mean, self.std)
        index = d.index[positions]
        out: tuple[Tensor, ...] = (images, d.labels[positions], index)
        if self.masker is not None:
            out += (self._masks(index, host_positions, epoch),)
        return out

    def _masks(self, index: Tensor, host_positions: Tensor, epoch: int) -> Tensor:
        m = self.masker
        if isinstance(m, RandomMasking):
            return random_masks_on(m.count, m.grid[0] * m.grid[1], self.seed, epoch, index)
        masks = sample_masks(m, self.host_index[host_positions], epoch, self.seed)
        return masks.to(index.device, non_blocking=True)


class DeviceEvalLoader:
    """Batches ``(images, labels, index)`` of this process's shard (positions rank, rank +
    world, ...) of a resident evaluation set, unshuffled; labels -1 mark unreadable files."""

    def __init__(self, data: ResidentImages, batch_size: int, *, mean: tuple[float, ...],
                 std: tuple[float, ...], rank: int = 0, world: int = 1) -> None:
        self.data, self.batch_size, self.mean, self.std = data, batch_size, mean, std
        self.positions = torch.arange(rank, len(data), world, device=data.images.device)

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        d, b = self.data, self.batch_size
        for i in range(len(self)):
            p = self.positions[i * b:(i + 1) * b]
            yield normalize(channels_first(d.images[p]), self.mean, self.std), d.labels[p], d.index[p]


def _train_refusal(cfg: RunConfig, data: RunData) -> str | None:
    if not data.resident or not isinstance(data.train, ImageDataset):
        return "the training data is not an indexed image dataset with the standard transforms"
    found = device_unbatchable(cfg)
    return None if found is None else " ".join(found)


def resident_eval(cfg: RunConfig, ds: Any) -> bool:
    """Whether an evaluation set can be served from the device: the eval transform must be
    the plain resize (crop_pct 1), which is what decoding does."""
    return isinstance(ds, ImageDataset) and cfg.data.crop_pct == 1.0


def device_loader_refusal(cfg: RunConfig, data: RunData, steps: int) -> str | None:
    """Why this run does not use the device-resident loader (None: it does). ``steps``:
    optimizer steps the run will take. ``data.loader=device`` refuses only what cannot be
    batched (a ConfigError: options already in :func:`supmim.config.validate`, here the data
    itself); ``auto`` also leaves out data over ``data.device_max_mb`` and
    runs too short to read every training image once (decoding would cost more than it
    saves)."""
    d = cfg.data
    if d.loader == "workers":
        return "data.loader=workers"
    why = _train_refusal(cfg, data)
    if why is not None and d.loader == "device":
        raise ConfigError(f"data.loader=device cannot be used: {why}; use data.loader=auto "
                          "or workers")
    if why is not None or d.loader == "device":
        return why
    sets = [data.train] + [ds for ds in {id(x): x for x in (data.eval, data.test)}.values()
                           if resident_eval(cfg, ds)]
    size = decoded_bytes(sum(len(ds) for ds in sets), cfg.model.in_chans, cfg.model.img_size)
    if size > d.device_max_mb * 2**20:
        return (f"the decoded data ({size / 2**20:.0f} MiB) is over data.device_max_mb "
                f"({d.device_max_mb})")
    if steps * d.batch_size * cfg.train.accum_steps < len(data.train):
        return "the run reads fewer images than the training set holds"
    return None


def resident(cfg: RunConfig, ds: ImageDataset, device: torch.device) -> ResidentImages:
    """``ds`` decoded at the model's size, on ``device``."""
    d = cfg.data
    return decode(ds, cfg.model.img_size, d.interpolation, num_workers=d.num_workers).to(device)
