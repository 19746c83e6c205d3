"""The paper's MIM target: token ids of a frozen VQ tokenizer, one per ViT patch."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supmim.device import uses_bf16
from supmim.errors import ConfigError
from supmim.targets.base import MimTarget, soft_token_loss, token_loss
from supmim.targets.registry import register_target
from supmim.targets.tokenizers.files import HOW_TO_MAKE
from supmim.targets.tokenizers.kinds import load_tokenizer

# Largest resize between the ViT's images and the tokenizer's input (either way) we accept:
# beyond it each token would describe a patch at a wildly different scale than it was trained on.
MAX_SCALE = 8.0
PRECISIONS = ("auto", "fp32", "bf16")


@register_target("vq")
class VQTarget(MimTarget):
    """Token ids (B, N) int64 in [0, codebook_size) from a frozen tokenizer.

    ``tokenizer`` is a saved tokenizer folder (or its ``.safetensors``) or anything with the :class:`~supmim.targets.tokenizers.Tokenizer`
    interface: the small trained :class:`~supmim.targets.vq.VQTokenizer` or an imported
    :class:`~supmim.targets.vqgan.VQGAN` (each maps [0, 1] images to its own input range).
    The tokenizer downsamples by ``factor`` and the ViT by ``patch_size``, so images are
    resized (bilinear, antialiased) to ``grid * factor`` pixels first: then the tokenizer's
    (gh, gw) token grid is the ViT's patch grid and token k belongs to patch k.

    ``precision``: "fp32", "bf16" (the tokenizer's convolutions under bf16 autocast; the
    nearest-code search stays float32), or "auto" = bf16 on CUDA, fp32 elsewhere.

    ``soft_temperature``: None gives hard ids (kind "tokens"). A value t gives soft targets
    (kind "soft_tokens"): (B, N, K) float32 distributions over the codebook,
    ``softmax(-d_k / (t * mean_k d_k))`` of each patch latent's squared distances d_k to the
    codes. Dividing by the mean distance makes t independent of the tokenizer's scale; the
    most likely code is always the hard id, and smaller t approaches the hard target.

    Loss: cross-entropy on the hidden positions against the hard id (with
    ``label_smoothing``) or against the soft distribution.
    """

    kind = "tokens"

    def __init__(self, tokenizer: nn.Module | str | Path | None = None, *,
                 img_size: int | tuple[int, int], patch_size: int, in_chans: int = 3,
                 precision: str = "auto", soft_temperature: float | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans)
        if tokenizer is None or str(tokenizer) == "":
            raise ConfigError(f"the 'vq' MIM target needs a trained tokenizer: {HOW_TO_MAKE}")
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer(tokenizer)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        if soft_temperature is not None:
            if soft_temperature <= 0:
                raise ConfigError(f"soft_temperature must be > 0, got {soft_temperature}")
            if not hasattr(tokenizer, "code_distances"):
                raise ConfigError(f"{type(tokenizer).__name__} has no code_distances(), which "
                                  "soft token targets need; use mim.token_loss=hard")
            self.kind = "soft_tokens"
        self.soft_temperature = soft_temperature
        for attr in ("encode", "decode", "factor", "codebook_size", "in_chans"):
            if not hasattr(tokenizer, attr):
                raise ConfigError(f"{type(tokenizer).__name__} is not a tokenizer: it has no "
                                  f"'{attr}' (see supmim.targets.tokenizers.Tokenizer)")
        if tokenizer.in_chans != in_chans:
            raise ConfigError(
                f"the tokenizer takes {tokenizer.in_chans}-channel images but the model has "
                f"in_chans={in_chans}: train a tokenizer on the same images")
        if precision not in PRECISIONS:
            raise ConfigError(f"tokenizer precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.out_dim = int(tokenizer.codebook_size)
        gh, gw = self.grid
        self.tokenizer_size = (gh * tokenizer.factor, gw * tokenizer.factor)
        scale = tokenizer.factor / patch_size
        if not 1.0 / MAX_SCALE <= scale <= MAX_SCALE:
            raise ConfigError(
                f"images of {self.img_size[0]}x{self.img_size[1]} px would be resized to "
                f"{self.tokenizer_size[0]}x{self.tokenizer_size[1]} px to give the tokenizer "
                f"(factor {tokenizer.factor}) the {gh}x{gw} patch grid: more than {MAX_SCALE:g}x "
                f"apart; use a tokenizer whose factor is nearer the patch size {patch_size}")

    @classmethod
    def options_from(cls, mim: Any) -> dict[str, Any]:
        soft = mim.token_loss == "soft"
        return {"tokenizer": mim.tokenizer, "precision": mim.tokenizer_precision,
                "soft_temperature": mim.soft_temperature if soft else None,
                "label_smoothing": 0.0 if soft else mim.label_smoothing}

    def loss(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor | None]:
        """pred (B, M, K) logits; target (B, M) ids or (B, M, K) distributions (M hidden
        patches per image)."""
        if self.soft_temperature is None:
            return token_loss(pred, target, self.label_smoothing)
        return soft_token_loss(pred, target)

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, patch_size={self.patch_size}, "
                f"tokenizer_size={self.tokenizer_size}, codebook={self.out_dim}, "
                f"precision={self.precision!r}, soft_temperature={self.soft_temperature}")

    def _resize(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                             antialias=True).clamp(0.0, 1.0)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not uses_bf16(self.precision, device):
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def compute(self, images: Tensor) -> Tensor:
        x = self._resize(images, self.tokenizer_size)
        # inference_mode: no autograd bookkeeping at all for the frozen tokenizer. Its
        # outputs cannot be saved for backward, so the ids are cloned outside it (a normal
        # tensor the cross-entropy may keep).
        with torch.inference_mode(), self._autocast(x.device):
            if self.soft_temperature is None:
                out = self.tokenizer.encode(x).flatten(1)  # (B, N) row-major = patch order
            else:
                d = self.tokenizer.code_distances(x).float().flatten(1, 2)  # (B, N, K)
                scale = d.mean(-1, keepdim=True).clamp_min(1e-12) * self.soft_temperature
                out = torch.softmax(-d / scale, dim=-1)
        return out.clone()  # outside inference mode: a normal tensor the loss may save

    def decode(self, pred: Tensor, *, reference: Tensor | None = None) -> Tensor | None:
        """pred (B, N) ids or (B, N, codebook_size) logits -> (B, C, H, W) in [0, 1], the
        tokenizer's reconstruction resized back to the ViT's image size."""
        with torch.no_grad():
            ids = pred.argmax(-1) if pred.ndim == 3 else pred
            ids = ids.long().reshape(-1, *self.grid)
            return self._resize(self.tokenizer.decode(ids).float(), self.img_size)
