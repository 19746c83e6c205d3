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
from supmim.models.masking import Masker
from supmim.seeds import mask_rng

__all__ = ["EpochKeys", "MaskedItems", "with_masks"]


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
        image, label, index = self.base[(position, sample_seed)]
        mask = self.masker(mask_rng(self.seed, epoch, index)).reshape(-1)
        return image, label, index, torch.from_numpy(mask)


def with_masks(loaders: Loaders, masker: Masker, seed: int) -> Loaders:
    """``loaders`` with a training loader whose batches carry their masks (B, N)."""
    old = loaders.train
    train = DataLoader(MaskedItems(old.dataset, masker, seed), batch_size=old.batch_size,
                       sampler=EpochKeys(loaders.sampler), drop_last=old.drop_last,
                       num_workers=old.num_workers, pin_memory=old.pin_memory,
                       persistent_workers=old.persistent_workers,
                       worker_init_fn=old.worker_init_fn)
    return replace(loaders, train=train)
