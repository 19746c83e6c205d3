"""Frozen image tokenizers for the VQ target: the small trainable VQ model (``small_vq``),
MaskGIT/taming VQGANs (``vqgan``), their saved folder format (``files``), training
(``train``), importing public checkpoints (``importers``, reading third-party files with
``third_party``) and precomputed token ids (``cache``)."""

from supmim.targets.tokenizers.kinds import TOKENIZER_KINDS, Tokenizer, load_tokenizer
from supmim.targets.tokenizers.small_vq import TokenizerConfig, VQTokenizer
from supmim.targets.tokenizers.vqgan import VQGAN, VQGANConfig

__all__ = ["TOKENIZER_KINDS", "Tokenizer", "TokenizerConfig", "VQGAN", "VQGANConfig",
           "VQTokenizer", "load_tokenizer"]
