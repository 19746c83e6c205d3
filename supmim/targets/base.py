"""The frozen MIM target interface and patch helpers shared by every target.

Patch order everywhere is row-major over the (gh, gw) grid, the order timm's ``PatchEmbed``
produces with ``flatten(2).transpose(1, 2)``, so target row ``k`` belongs to ViT token ``k``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supmim.errors import ConfigError


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """``32 -> (32, 32)``; a pair is returned as a tuple of ints."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def patch_grid(img_size: int | tuple[int, int], patch_size: int) -> tuple[int, int]:
    """(gh, gw) of a ViT; ConfigError unless the patch size divides the image size."""
    h, w = pair(img_size)
    if patch_size < 1 or h % patch_size or w % patch_size:
        raise ConfigError(
            f"image size {h}x{w} is not a multiple of the patch size {patch_size}: "
            f"choose an img_size divisible by patch_size")
    return (h // patch_size, w // patch_size)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C); each row ordered (p, p, C) like MAE, N row-major."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int], in_chans: int) -> Tensor:
    """Inverse of :func:`patchify`: (B, N, p*p*C) -> (B, C, gh*p, gw*p)."""
    b = patches.shape[0]
    gh, gw = grid
    p = patch_size
    x = patches.reshape(b, gh, gw, p, p, in_chans).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, in_chans, gh * p, gw * p)


def regression_loss(pred: Tensor, target: Tensor) -> tuple[Tensor, None]:
    """Mean squared error over hidden patches: pred and target (B, M, D) at the M hidden
    positions of each image."""
    return F.mse_loss(pred.float(), target.float()), None


def token_loss(pred: Tensor, ids: Tensor, label_smoothing: float = 0.0
               ) -> tuple[Tensor, Tensor]:
    """Cross-entropy over hidden patches and the token accuracy there: pred (B, M, K) logits
    and ids (B, M) int64 at the M hidden positions of each image."""
    logits, ids = pred.flatten(0, 1).float(), ids.flatten()  # (B*M, K), (B*M,)
    loss = F.cross_entropy(logits, ids, label_smoothing=label_smoothing)
    return loss, (logits.argmax(-1) == ids).float().mean().detach()


def soft_token_loss(pred: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy against a distribution over the K codes, and the accuracy of the argmax
    against the distribution's mode: pred (B, M, K) logits and probs (B, M, K) at the M
    hidden positions of each image."""
    logits, p = pred.flatten(0, 1).float(), probs.flatten(0, 1).float()
    loss = F.cross_entropy(logits, p)
    return loss, (logits.argmax(-1) == p.argmax(-1)).float().mean().detach()


class MimTarget(nn.Module):
    """Per-patch MIM targets from images in [0, 1], and the loss against them. Frozen: no
    trainable parameters.

    A target is one class: it registers its name with
    :func:`supmim.targets.registry.register_target`, sets ``kind`` ("tokens": (B, N) int64
    ids in [0, out_dim); "soft_tokens": (B, N, out_dim) distributions; "regression":
    (B, N, out_dim) float32 vectors), ``out_dim``, ``grid`` = (gh, gw), ``patch_size`` and
    ``in_chans``, and implements :meth:`compute` and :meth:`loss` (regression by default).
    :meth:`options_from` names the ``mim.*`` config keys its constructor takes.
    """

    name: ClassVar[str] = ""  # the registered name (mim.target), set by register_target
    kind: str
    out_dim: int
    grid: tuple[int, int]
    patch_size: int
    in_chans: int

    def __init__(self, *, img_size: int | tuple[int, int], patch_size: int, in_chans: int) -> None:
        super().__init__()
        if in_chans < 1:
            raise ConfigError(f"in_chans must be >= 1, got {in_chans}")
        self.grid = patch_grid(img_size, patch_size)
        self.patch_size = int(patch_size)
        self.in_chans = int(in_chans)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def img_size(self) -> tuple[int, int]:
        return (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)

    def train(self, mode: bool = True) -> MimTarget:
        # Frozen: stays in eval mode whatever the parent model does (no BN/dropout/EMA updates).
        return super().train(False)

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4:
            raise ConfigError(f"MIM targets take (B, C, H, W) images, got shape {tuple(images.shape)}")
        c, h, w = images.shape[1:]
        if c != self.in_chans or (h, w) != self.img_size:
            raise ConfigError(
                f"MIM target built for {self.in_chans}x{self.img_size[0]}x{self.img_size[1]} "
                f"images got {c}x{h}x{w}: build the target with the model's img_size, "
                f"patch_size and in_chans")

    def forward(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) in [0, 1] -> (B, N) int64 or (B, N, out_dim) float32.

        Runs under ``no_grad`` (not ``inference_mode``: the loss saves targets for backward)
        and in float32 even inside an autocast region, so targets do not depend on AMP.
        """
        self._check_images(images)
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            return self.compute(images.float())

    def compute(self, images: Tensor) -> Tensor:
        """The targets for checked float32 images; see :meth:`forward`."""
        raise NotImplementedError

    def loss(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor | None]:
        """The MIM loss over hidden patches and, for token targets, the accuracy there.

        pred (B, M, out_dim) decoder outputs and target (B, M[, out_dim]) (rows of what
        :meth:`forward` returned), both at the M hidden positions of each image (the joint
        model gathers them). Returns (scalar float32 loss, scalar accuracy or None).
        """
        return regression_loss(pred, target)

    @classmethod
    def options_from(cls, mim: Any) -> dict[str, Any]:
        """Constructor keywords taken from a ``mim`` config section (a
        :class:`~supmim.config.MimConfig`); none by default."""
        return {}

    def decode(self, pred: Tensor, *, reference: Tensor | None = None) -> Tensor | None:
        """Predictions (or targets) -> (B, C, H, W) images in [0, 1] for display, or None
        when the target cannot be turned back into pixels. ``reference`` (B, C, H, W) in
        [0, 1] supplies per-patch statistics where a target needs them."""
        return None
