"""Deprecated alias of :mod:`supmim.targets.tokenizers.vqgan` (moved there); this path goes
in the next release."""

from supmim.targets.tokenizers.vqgan import (  # noqa: F401
    ARCHS, AttnBlock, Codebook, Decoder, Downsample, Encoder, GN_EPS, Mid, ResBlock,
    Stage, Upsample, VQGAN, VQGANConfig)
