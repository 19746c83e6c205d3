"""The tokenizer interface every VQ target uses, and loading any saved tokenizer by its kind."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from supmim.errors import CheckpointError
from supmim.targets.tokenizers.files import read_meta
from supmim.targets.tokenizers.small_vq import VQTokenizer
from supmim.targets.tokenizers.vqgan import VQGAN


@runtime_checkable
class Tokenizer(Protocol):
    """What :class:`~supmim.targets.vq_target.VQTarget` needs from a frozen tokenizer.

    ``encode`` takes images in [0, 1] whatever range the network was trained on (each
    tokenizer maps to its own: MaskGIT [0, 1], taming [-1, 1]) and ``decode`` returns [0, 1].
    """

    kind: str
    factor: int  # (H, W) images give (H / factor, W / factor) tokens
    codebook_size: int
    in_chans: int

    def encode(self, images01: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, H/f, W/f) int64 ids."""
        ...

    def code_distances(self, images01: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, H/f, W/f, codebook_size) float32 squared distances
        from each position's latent to every code (argmin = ``encode``); soft targets."""
        ...

    def decode(self, ids: Tensor) -> Tensor:
        """(B, h, w) int64 ids -> (B, C, h*f, w*f) images in [0, 1]."""
        ...

    def eval(self) -> Tokenizer: ...

    def requires_grad_(self, requires_grad: bool = True) -> Tokenizer: ...


# kind in tokenizer.json -> class with a ``load(path, map_location)`` classmethod
TOKENIZER_KINDS: dict[str, type] = {"supmim-vq": VQTokenizer, "vqgan-maskgit": VQGAN,
                                    "vqgan-taming": VQGAN}


def load_tokenizer(path: str | Path, map_location: str | torch.device = "cpu") -> Tokenizer:
    """Any supmim tokenizer folder (trained with ``supmim tokenizer train`` or imported with
    ``supmim tokenizer import``), in eval mode; CheckpointError naming the problem."""
    meta, _, meta_path = read_meta(path)
    kind = meta["kind"]
    if kind not in TOKENIZER_KINDS:
        raise CheckpointError(f"{meta_path} holds a tokenizer of kind {kind!r}, which this "
                              f"supmim does not know (known: {', '.join(TOKENIZER_KINDS)}); "
                              f"upgrade supmim or re-import the checkpoint")
    return TOKENIZER_KINDS[kind].load(path, map_location=map_location)
