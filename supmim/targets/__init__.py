"""Frozen per-patch MIM targets: VQ tokenizer ids (the paper's), MAE pixels, MaskFeat HOG."""

from supmim.targets.base import MimTarget, patchify, unpatchify
from supmim.targets.factory import TARGET_KINDS, build_target
from supmim.targets.hog import HogTarget
from supmim.targets.pixel import PixelTarget
from supmim.targets.token_cache import TokenCache, precompute_tokens
from supmim.targets.tokenizer_train import TokenizerTrainConfig, evaluate_tokenizer, train_tokenizer
from supmim.targets.tokenizers import TOKENIZER_KINDS, Tokenizer, load_tokenizer
from supmim.targets.vq import TokenizerConfig, VQTokenizer
from supmim.targets.vq_target import VQTarget
from supmim.targets.vqgan import VQGAN, VQGANConfig
from supmim.targets.vqgan_import import FORMATS as CHECKPOINT_FORMATS
from supmim.targets.vqgan_import import import_checkpoint, import_tokenizer

__all__ = ["CHECKPOINT_FORMATS", "TARGET_KINDS", "TOKENIZER_KINDS", "HogTarget", "MimTarget",
           "PixelTarget", "TokenCache", "Tokenizer", "TokenizerConfig", "TokenizerTrainConfig",
           "VQGAN", "VQGANConfig", "VQTarget", "VQTokenizer", "build_target", "evaluate_tokenizer",
           "import_checkpoint", "import_tokenizer", "load_tokenizer", "patchify",
           "precompute_tokens", "unpatchify", "train_tokenizer"]
