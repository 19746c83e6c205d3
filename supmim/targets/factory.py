"""``build_target``: the MIM target named in a config."""

from __future__ import annotations

from pathlib import Path

from supmim.errors import ConfigError
from supmim.targets.base import MimTarget
from supmim.targets.hog import HogTarget
from supmim.targets.pixel import PixelTarget
from supmim.targets.tokenizer_files import HOW_TO_MAKE
from supmim.targets.tokenizers import load_tokenizer
from supmim.targets.vq_target import VQTarget

TARGET_KINDS = ("vq", "pixel", "hog")


def build_target(kind: str, *, img_size: int, patch_size: int, in_chans: int,
                 tokenizer: str | Path | None = None, norm_pix: bool = True,
                 precision: str = "auto", soft_temperature: float | None = None) -> MimTarget:
    """A frozen target in eval mode, on the CPU (move it with ``.to``).

    kind "vq": token ids of the tokenizer saved at ``tokenizer`` (its directory or its
    ``.safetensors`` file; trained or imported, any kind :func:`load_tokenizer` reads); "pixel": MAE patch pixels (``norm_pix``: per-patch normalised);
    "hog": MaskFeat HOG features. ``precision`` (vq only): "auto" (bf16 tokenizer
    convolutions on CUDA, fp32 elsewhere), "fp32" or "bf16"; ``soft_temperature`` (vq only):
    None for token ids, a temperature for distributions over the codebook (see VQTarget).
    """
    name = str(kind).lower()
    if name == "vq":
        if tokenizer is None or str(tokenizer) == "":
            raise ConfigError(f"the 'vq' MIM target needs a trained tokenizer: {HOW_TO_MAKE}")
        target: MimTarget = VQTarget(load_tokenizer(tokenizer), img_size=img_size,
                                     patch_size=patch_size, in_chans=in_chans,
                                     precision=precision, soft_temperature=soft_temperature)
    elif name == "pixel":
        target = PixelTarget(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                             norm_pix=norm_pix)
    elif name == "hog":
        target = HogTarget(img_size=img_size, patch_size=patch_size, in_chans=in_chans)
    else:
        raise ConfigError(f"unknown MIM target {kind!r}: choose one of {', '.join(TARGET_KINDS)}")
    return target.eval()
