"""Frozen per-patch MIM targets: VQ tokenizer ids (the paper's), MAE pixels, MaskFeat HOG."""

from supmim.targets.base import MimTarget, patchify, unpatchify
from supmim.targets.factory import TARGET_KINDS, build_target
from supmim.targets.hog import HogTarget
from supmim.targets.pixel import PixelTarget
from supmim.targets.tokenizer_train import TokenizerTrainConfig, evaluate_tokenizer, train_tokenizer
from supmim.targets.vq import TokenizerConfig, VQTokenizer
from supmim.targets.vq_target import VQTarget

__all__ = ["TARGET_KINDS", "HogTarget", "MimTarget", "PixelTarget", "TokenizerConfig",
           "TokenizerTrainConfig", "VQTarget", "VQTokenizer", "build_target", "evaluate_tokenizer",
           "patchify", "unpatchify", "train_tokenizer"]
