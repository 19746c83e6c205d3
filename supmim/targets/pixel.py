"""MAE pixel target: each patch's raw pixels, optionally normalised per patch."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from supmim.errors import ConfigError
from supmim.targets.base import MimTarget, patchify, unpatchify
from supmim.targets.registry import register_target

EPS = 1e-6  # MAE's epsilon under the per-patch variance


def _patch_stats(patches: Tensor) -> tuple[Tensor, Tensor]:
    """(B, N, D) -> per-patch mean and unbiased variance, each (B, N, 1), as MAE computes them."""
    return patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)


@register_target("pixel")
class PixelTarget(MimTarget):
    """MAE target: (B, N, p*p*C) float32 patch pixels in (p, p, C) order.

    With ``norm_pix`` each patch is standardised by its own mean and variance,
    ``(x - mean) / sqrt(var + 1e-6)``, which MAE found gives better features.
    """

    kind = "regression"

    def __init__(self, *, img_size: int | tuple[int, int], patch_size: int, in_chans: int = 3,
                 norm_pix: bool = True) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans)
        if patch_size * patch_size * in_chans < 2 and norm_pix:
            raise ConfigError("norm_pix needs patches of at least 2 values: use norm_pix=False")
        self.norm_pix = bool(norm_pix)
        self.out_dim = patch_size * patch_size * in_chans

    @classmethod
    def options_from(cls, mim: Any) -> dict[str, Any]:
        return {"norm_pix": bool(mim.norm_pix)}

    def extra_repr(self) -> str:
        return f"grid={self.grid}, patch_size={self.patch_size}, norm_pix={self.norm_pix}"

    def compute(self, images: Tensor) -> Tensor:
        patches = patchify(images, self.patch_size)
        if self.norm_pix:
            mean, var = _patch_stats(patches)
            patches = (patches - mean) / (var + EPS).sqrt()
        return patches

    def decode(self, pred: Tensor, *, reference: Tensor | None = None) -> Tensor | None:
        """pred (B, N, p*p*C) -> (B, C, H, W) in [0, 1].

        Normalised predictions carry no brightness or contrast, so they are mapped back with
        the per-patch mean and variance of ``reference`` (B, C, H, W), the image they came
        from; without one they cannot be shown and None is returned.
        """
        pred = pred.detach().float()
        if self.norm_pix:
            if reference is None:
                return None
            mean, var = _patch_stats(patchify(reference.detach().float(), self.patch_size))
            pred = pred * (var + EPS).sqrt() + mean
        return unpatchify(pred, self.patch_size, self.grid, self.in_chans).clamp(0.0, 1.0)
