"""MaskFeat-style HOG target: per-patch histograms of oriented gradients."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from supmim.errors import ConfigError
from supmim.targets.base import MimTarget
from supmim.targets.registry import register_target

NBINS = 9  # unsigned orientations over [0, pi), 20 degrees apart, as in Dalal-Triggs and MaskFeat
GRADIENTS = ("central", "sobel")


def default_cell(patch_size: int) -> int:
    """Cell side in pixels: half a patch (2x2 cells per patch) when patches are >= 8 px."""
    return patch_size // 2 if patch_size >= 8 else patch_size


@register_target("hog")
class HogTarget(MimTarget):
    """HOG features for each patch: (B, N, C * 9 * (p // cell)**2) float32.

    Per channel, gradients come from [-1, 0, 1] filters (or Sobel); each pixel votes its
    gradient magnitude into the 9 unsigned orientation bins, split linearly between the two
    nearest bin centres (0, 20, ..., 160 degrees, so a pure horizontal gradient lands in bin
    0 only). Votes are averaged over ``cell`` x ``cell`` pixel cells. A patch's vector is its
    cells' histograms in (cell_row, cell_col, channel, bin) order, L2-normalised, which makes
    it invariant to brightness offsets and contrast; flat patches give the zero vector.
    """

    kind = "regression"

    def __init__(self, *, img_size: int | tuple[int, int], patch_size: int, in_chans: int = 3,
                 cell: int | None = None, gradient: str = "central") -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans)
        cell = default_cell(patch_size) if cell is None else int(cell)
        if cell < 1 or patch_size % cell:
            raise ConfigError(
                f"HOG cell size {cell} does not divide the patch size {patch_size}: "
                f"pick a cell that divides it (default {default_cell(patch_size)})")
        if gradient not in GRADIENTS:
            raise ConfigError(f"unknown HOG gradient {gradient!r}: choose one of {GRADIENTS}")
        self.cell = cell
        self.gradient = gradient
        self.cells_per_side = patch_size // cell
        self.out_dim = in_chans * NBINS * self.cells_per_side**2
        if gradient == "central":
            kx = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
        else:
            kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        # (2, 1, 3, 3): d/dx (x to the right) and d/dy (y downwards); buffers so .to() moves
        # them, non-persistent so they never enter a checkpoint.
        self.register_buffer("kernels", torch.stack([kx, kx.t()])[:, None], persistent=False)

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, patch_size={self.patch_size}, cell={self.cell}, "
                f"gradient={self.gradient!r}, out_dim={self.out_dim}")

    def compute(self, images: Tensor) -> Tensor:
        b, c, h, w = images.shape
        x = images.reshape(b * c, 1, h, w)
        # Replicate padding: a border pixel gets a one-sided gradient instead of a fake edge.
        g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernels)  # (BC, 2, H, W)
        gx, gy = g[:, 0:1], g[:, 1:2]
        mag = torch.sqrt(gx * gx + gy * gy)
        # Unsigned orientation in [0, pi), in units of bins.
        t = torch.remainder(torch.atan2(gy, gx), math.pi) * (NBINS / math.pi)
        lo_f = torch.floor(t)
        frac = t - lo_f
        lo = lo_f.long() % NBINS  # t can round up to exactly NBINS
        hi = (lo + 1) % NBINS
        hist = torch.zeros(b * c, NBINS, h, w, device=images.device, dtype=images.dtype)
        hist.scatter_add_(1, lo, mag * (1.0 - frac))
        hist.scatter_add_(1, hi, mag * frac)
        hist = F.avg_pool2d(hist, self.cell)  # (BC, 9, H/cell, W/cell)

        gh, gw = self.grid
        k = self.cells_per_side
        hist = hist.reshape(b, c, NBINS, gh, k, gw, k).permute(0, 3, 5, 4, 6, 1, 2)
        feats = hist.reshape(b, gh * gw, self.out_dim)  # (B, N, k*k*C*9)
        return F.normalize(feats, dim=-1, eps=1e-6)
