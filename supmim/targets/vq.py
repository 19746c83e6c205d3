"""Deprecated alias of :mod:`supmim.targets.tokenizers.small_vq` (moved there); this path goes
in the next release."""

from supmim.targets.tokenizers.small_vq import (  # noqa: F401
    ChannelNorm, EMAQuantizer, FACTORS, ResBlock, TokenizerConfig, TokenizerShape,
    VQTokenizer)
