"""Mask generators: exact counts, block shapes, per-sample reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from supmim.errors import ConfigError
from supmim.models.masking import BlockMasking, RandomMasking, build_masker, num_masked, sample_masks


@settings(max_examples=60, deadline=None)
@given(gh=st.integers(2, 16), gw=st.integers(2, 16), ratio=st.floats(0.05, 0.95),
       kind=st.sampled_from(["random", "block"]), seed=st.integers(0, 2**31))
def test_every_mask_hides_exactly_round_ratio_n(gh, gw, ratio, kind, seed):
    count = num_masked((gh, gw), ratio)
    if not 0 < count < gh * gw:
        with pytest.raises(ConfigError):
            build_masker(kind, (gh, gw), ratio)
        return
    mask = build_masker(kind, (gh, gw), ratio)(np.random.default_rng(seed))
    assert mask.shape == (gh, gw) and mask.dtype == bool
    assert int(mask.sum()) == count


def test_masks_are_a_function_of_seed_epoch_and_index():
    masker = RandomMasking((8, 8), 0.75)
    a = sample_masks(masker, [3, 7, 11], epoch=2, seed=5)
    b = sample_masks(masker, torch.tensor([11, 3]), epoch=2, seed=5)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])  # batch order does not matter
    assert not torch.equal(a, sample_masks(masker, [3, 7, 11], epoch=3, seed=5))
    assert not torch.equal(a, sample_masks(masker, [3, 7, 11], epoch=2, seed=6))
    assert a.shape == (3, 64) and a.dtype == torch.bool


def test_random_masking_is_uniform_over_positions():
    masker = RandomMasking((4, 4), 0.5)
    freq = sample_masks(masker, range(4000), epoch=0, seed=0).float().mean(0)
    assert torch.allclose(freq, torch.full((16,), 0.5), atol=0.04)


def test_block_masking_makes_contiguous_blocks():
    """Block masks are clumped: far more masked 4-neighbours than random masks have."""
    def neighbour_share(masker):
        masks = sample_masks(masker, range(300), 0, 0).view(-1, 14, 14).float()
        both = (masks[:, 1:, :] * masks[:, :-1, :]).sum() + (masks[:, :, 1:] * masks[:, :, :-1]).sum()
        return float(both / masks.sum())
    block, rand = neighbour_share(BlockMasking((14, 14), 0.4)), neighbour_share(RandomMasking((14, 14), 0.4))
    assert block > rand + 0.5, (block, rand)


def test_block_blocks_respect_aspect_and_grid():
    mask = BlockMasking((7, 7), 0.3)(np.random.default_rng(0))
    assert mask.sum() == num_masked((7, 7), 0.3)


def test_unknown_masking_kind():
    with pytest.raises(ConfigError, match="random or block"):
        build_masker("checkerboard", (4, 4), 0.5)
