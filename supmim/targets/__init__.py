"""Frozen per-patch MIM targets and their losses: VQ tokenizer ids (the paper's), MAE pixels,
MaskFeat HOG. Each target registers itself (:mod:`supmim.targets.registry`).

Names are imported on first use (PEP 562), so reading the registry's names (``supmim
--help``, config validation) does not import torch."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {  # public name -> the module that defines it
    "MimTarget": "base", "patchify": "base", "unpatchify": "base",
    "VQTarget": "vq_target", "PixelTarget": "pixel", "HogTarget": "hog",
    **{n: "registry" for n in ("TargetNames", "build_from_spec", "build_target",
                               "register_target", "target_class", "target_names",
                               "target_spec")},
    **{n: "tokenizers" for n in ("TOKENIZER_KINDS", "VQGAN", "Tokenizer", "TokenizerConfig",
                                 "VQGANConfig", "VQTokenizer", "load_tokenizer")},
    "TokenCache": "tokenizers.cache", "precompute_tokens": "tokenizers.cache",
    "import_checkpoint": "tokenizers.importers", "import_tokenizer": "tokenizers.importers",
    **{n: "tokenizers.train" for n in ("TokenizerTrainConfig", "evaluate_tokenizer",
                                       "train_tokenizer")},
}
_RENAMED = {"CHECKPOINT_FORMATS": ("tokenizers.importers", "FORMATS")}
BUILTIN_MODULES = ("vq_target", "pixel", "hog")  # registration order = order of the choices

__all__ = sorted([*_WHERE, *_RENAMED])


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module, attr = _WHERE[name], name
    elif name in _RENAMED:
        module, attr = _RENAMED[name]
    else:
        raise AttributeError(f"module 'supmim.targets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"supmim.targets.{module}"), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
