"""Mask generators: which patches the MIM branch hides.

Each sample's mask is drawn from its own generator seeded by ``(seed, epoch, sample index)``,
so masks do not depend on batch composition, worker count or the number of processes, and a
resumed run draws the same masks. Every mask hides exactly ``round(ratio * N)`` patches: the
drop (MAE-style) encoder needs the same number of visible patches in every sample of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from supmim.errors import ConfigError
from supmim.seeds import counter_hash, mask_rng, mix_seed


def num_masked(grid: tuple[int, int], ratio: float) -> int:
    """Patches hidden per sample for a ``(gh, gw)`` grid."""
    return int(round(ratio * grid[0] * grid[1]))


class RandomMasking:
    """Uniformly random patches (MAE, SimMIM)."""

    def __init__(self, grid: tuple[int, int], ratio: float) -> None:
        self.grid, self.count = grid, num_masked(grid, ratio)
        _check_count(self.count, grid)

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """Returns a ``(gh, gw)`` bool array with exactly ``count`` True (= masked) cells."""
        n = self.grid[0] * self.grid[1]
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, self.count, replace=False)] = True
        return mask.reshape(self.grid)


class BlockMasking:
    """Block-wise masking as described for BEiT: rectangles of random area and aspect ratio
    are added until the budget is reached; any shortfall (blocks that no longer fit) is filled
    with random single patches so the count is exact."""

    def __init__(self, grid: tuple[int, int], ratio: float, min_block: int = 4,
                 aspect: float = 0.3, attempts: int = 10) -> None:
        self.grid, self.count = grid, num_masked(grid, ratio)
        _check_count(self.count, grid)
        self.min_block = min(min_block, self.count)
        self.log_aspect = (math.log(aspect), math.log(1.0 / aspect))
        self.attempts = attempts

    def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        gh, gw = self.grid
        for _ in range(self.attempts):
            area = rng.uniform(min(self.min_block, budget), budget)
            ratio = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * ratio)))
            w = int(round(math.sqrt(area / ratio)))
            if not (0 < h <= gh and 0 < w <= gw):
                continue
            top, left = rng.integers(0, gh - h + 1), rng.integers(0, gw - w + 1)
            window = mask[top:top + h, left:left + w]
            new = h * w - int(window.sum())
            if 0 < new <= budget:
                window[...] = True
                return new
        return 0

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros(self.grid, dtype=bool)
        done = 0
        while done < self.count:
            added = self._add_block(mask, self.count - done, rng)
            if added == 0:
                break
            done += added
        if done < self.count:  # top up with random free cells
            free = np.flatnonzero(~mask)
            mask.flat[rng.choice(free, self.count - done, replace=False)] = True
        return mask


def _check_count(count: int, grid: tuple[int, int]) -> None:
    n = grid[0] * grid[1]
    if not 0 < count < n:
        raise ConfigError(f"mask ratio hides {count} of {n} patches; at least one patch must "
                          "be masked and one visible (choose mim.mask_ratio in (0, 1))")


Masker = RandomMasking | BlockMasking


def build_masker(kind: str, grid: tuple[int, int], ratio: float) -> Masker:
    if kind == "random":
        return RandomMasking(grid, ratio)
    if kind == "block":
        return BlockMasking(grid, ratio)
    raise ConfigError(f"unknown masking '{kind}'; choose random or block")


def sample_masks(masker: Masker, indices: Sequence[int] | torch.Tensor, epoch: int,
                 seed: int) -> torch.Tensor:
    """Masks for a batch: ``(B, N)`` bool, True = masked, row-major patch order.

    Sample ``i`` of ``epoch`` always gets the same mask for a given ``seed``.
    """
    idx = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
    masks = [masker(mask_rng(seed, epoch, i)).reshape(-1) for i in idx]
    return torch.from_numpy(np.stack(masks))


_DEVICE_MASK_TAG = 0x3A5C


def random_masks_on(count: int, n: int, seed: int, epoch: int, index: Tensor) -> Tensor:
    """Random masks drawn on ``index``'s device: ``(B, N)`` bool, True = masked, exactly
    ``count`` per row: the ``count`` patches whose counter hash of ``(seed, epoch, sample
    index, patch)`` is smallest. A function of those values alone (no generator state, no
    host read); not the same masks as :class:`RandomMasking` draws on the host."""
    key = mix_seed(seed, epoch, _DEVICE_MASK_TAG)
    noise = counter_hash(key, index[:, None], torch.arange(n, device=index.device)[None, :])
    hidden = noise.argsort(dim=1, stable=True)[:, :count]
    return torch.zeros(index.shape[0], n, dtype=torch.bool,
                       device=index.device).scatter_(1, hidden, True)
