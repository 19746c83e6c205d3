"""The training loader builds each sample's MIM mask beside its image, in the data-loader
workers, so the step neither draws masks on the host nor waits for them.

A mask is the same function of ``(seed, epoch, sample index)`` as
:func:`supmim.models.masking.sample_masks` draws in the step (the fallback for loaders
without an :class:`~supmim.data.EpochSampler`): the two give identical masks, whichever
worker, process or resume builds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from supmim.data import EpochSampler
from supmim.engine.build import Loaders
from supmim.engine.device_loader import DeviceTrainLoader
from supmim.models.masking import Masker
from supmim.seeds import mask_rng

__all__ = ["EpochKeys", "MaskedItems", "with_masks", "with_views"]


class EpochKeys(Sampler[tuple[int, int, int]]):
    """``sampler``'s ``(position, sample_seed)`` keys with the epoch added; the epoch is
    read in the main process, so persistent workers need no state of their own."""

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch = self.sampler.epoch
        for position, seed in self.sampler:
            yield position, seed, epoch


class MaskedItems(Dataset):
    """Items ``(image, label, index, mask)`` of ``base`` (which yields ``(image, label,
    index)`` for a ``(position, sample_seed)`` key); ``mask`` (N,) bool, True = masked."""

    def __init__(self, base: Dataset, masker: Masker, seed: int) -> None:
        self.base, self.masker, self.seed = base, masker, seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # labels, paths, ... of the wrapped dataset
        if name == "base":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Any, int, int, torch.Tensor]:
        position, sample_seed, epoch = key
        # a view replay (supmim.data.views.ViewReplay) needs the epoch too
        image, label, index = self.base[key if getattr(self.base, "keyed_by_epoch", False)
                                        else (position, sample_seed)]
        mask = self.masker(mask_rng(self.seed, epoch, index)).reshape(-1)
        return image, label, index, torch.from_numpy(mask)


def with_masks(loaders: Loaders, masker: Masker, seed: int) -> Loaders:
    """``loaders`` with a training loader whose batches carry their masks (B, N) (the
    device-resident loader draws them on the device itself)."""
    old = loaders.train
    if isinstance(old, DeviceTrainLoader):
        old.masker = masker
        return loaders
    train = DataLoader(MaskedItems(old.dataset, masker, seed), batch_size=old.batch_size,
                       sampler=EpochKeys(loaders.sampler), drop_last=old.drop_last,
                       num_workers=old.num_workers, pin_memory=old.pin_memory,
                       persistent_workers=old.persistent_workers,
                       worker_init_fn=old.worker_init_fn)
    return replace(loaders, train=train)


def with_views(loaders: Loaders, views: Any) -> Loaders:
    """``loaders`` with a training loader that replays ``views``' stored views (a
    :class:`~supmim.data.views.ViewCache`) instead of drawing augmentations: the image of
    each sample is the view whose token ids the step reads. Apply before :func:`with_masks`."""
    from supmim.data.views import ViewReplay
    from supmim.errors import ConfigError
    old = loaders.train
    if not isinstance(old, DataLoader):  # a loader that would replay views itself
        if not hasattr(old, "views"):  # (the device-resident one cannot: config refuses it)
            raise ConfigError("mim.token_cache: this loader cannot replay cached views; set "
                              "data.loader=workers")
        old.views = views
        return loaders
    train = DataLoader(ViewReplay(old.dataset, views), batch_size=old.batch_size,
                       sampler=EpochKeys(loaders.sampler), drop_last=old.drop_last,
                       num_workers=old.num_workers, pin_memory=old.pin_memory,
                       persistent_workers=old.persistent_workers,
                       worker_init_fn=old.worker_init_fn)
    return replace(loaders, train=train)
