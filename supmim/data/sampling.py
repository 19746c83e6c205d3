"""The training sampler: the data order and each sample's augmentation seed are functions of
the run's seed, the epoch and a position (see :mod:`supmim.seeds`).

That is what makes a run resumable at any step (the sampler starts mid-epoch, every sample's
augmentation and every step's dropout replay exactly) and what makes a sample's augmentation
independent of which data-loader worker or which process (rank) happens to load it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from supmim.seeds import SeededSample, mix_seed, sample_seed, seed_all

__all__ = ["EpochSampler", "SeededSample", "mix_seed", "seed_all"]


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(position, sample_seed)`` for one epoch of this process's share of the data.

    The permutation is drawn from ``(seed, epoch)`` only; process ``rank`` of ``world`` takes
    every ``world``-th position of it (the tail that does not divide evenly is dropped, so
    every rank sees the same number of samples). ``sample_seed`` comes from
    ``(seed, epoch, position)``, the same whichever rank or worker loads the sample.
    ``start`` skips the first ``start`` samples of this rank's share (mid-epoch resume).
    """

    def __init__(self, size: int, *, seed: int, shuffle: bool = True, rank: int = 0,
                 world: int = 1) -> None:
        if size <= 0:
            raise ValueError(f"EpochSampler needs a non-empty dataset, got size {size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} must be in [0, world={world})")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    @property
    def per_rank(self) -> int:
        return self.size // self.world

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)

    def order(self) -> torch.Tensor:
        """This rank's positions for the current epoch, before ``start`` is applied."""
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0x5A3D))
            perm = torch.randperm(self.size, generator=g)
        else:
            perm = torch.arange(self.size)
        return perm[: self.per_rank * self.world][self.rank::self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = mix_seed(self.seed, self.epoch, 0xA06)
        for pos in self.order()[self.start:].tolist():
            yield pos, sample_seed(base, pos)
