"""Deprecated alias of :mod:`supmim.targets.tokenizers.train` (moved there); this path goes
in the next release."""

from supmim.targets.tokenizers.train import (  # noqa: F401
    evaluate_tokenizer, PatchDiscriminator, TokenizerTrainConfig, train_tokenizer)
