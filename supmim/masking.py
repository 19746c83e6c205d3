"""Deprecated alias of :mod:`supmim.models.masking` (moved there); this path goes in the next
release."""

from supmim.models.masking import (BlockMasking, Masker, RandomMasking,  # noqa: F401
                                   build_masker, num_masked, sample_masks)
