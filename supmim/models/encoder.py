"""The encoder: a plain timm ``VisionTransformer``, plus a masked forward for the MIM branch.

The timm model itself is what gets exported; everything MIM-specific (the [MASK] embedding,
the decoder) lives outside it, so the exported encoder is a stock timm model.
"""

from __future__ import annotations

import timm
import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from supmim.config import ModelConfig
from supmim.errors import ConfigError


def vit_kwargs(cfg: ModelConfig, num_classes: int) -> dict:
    """The ``timm.create_model`` keyword arguments that define the architecture."""
    kwargs: dict = dict(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                        num_classes=num_classes, global_pool=cfg.global_pool)
    for name in ("embed_dim", "depth", "num_heads"):
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    return kwargs


def create_vit(cfg: ModelConfig, num_classes: int) -> VisionTransformer:
    """Build a randomly initialised timm ViT (never downloads weights)."""
    if not timm.is_model(cfg.name):
        raise ConfigError(f"model.name '{cfg.name}' is not a timm model; see "
                          "timm.list_models('vit_*') for the ViTs")
    not_vit = ConfigError(f"model.name '{cfg.name}' is not a timm VisionTransformer; supmim "
                          "needs one (e.g. vit_tiny_patch16_224, vit_base_patch16_224)")
    try:
        model = timm.create_model(cfg.name, pretrained=False, drop_path_rate=cfg.drop_path,
                                  **vit_kwargs(cfg, num_classes))
    except TypeError as err:  # a non-ViT model does not take img_size / patch_size
        raise not_vit from err
    if not isinstance(model, VisionTransformer):
        raise not_vit
    if model.dynamic_img_size or not model.patch_embed.flatten:
        raise ConfigError(f"model.name '{cfg.name}' uses dynamic image size, which the masked "
                          "forward does not support; pick a fixed-size ViT")
    return model


def grid_of(vit: VisionTransformer) -> tuple[int, int]:
    """The ``(gh, gw)`` patch grid."""
    gh, gw = vit.patch_embed.grid_size
    return int(gh), int(gw)


def visible_indices(mask: Tensor, num_visible: int | None = None) -> Tensor:
    """``(B, N)`` bool mask (True = hidden, same count per row) -> ``(B, N_vis)`` sorted indices
    of the visible positions (:func:`hidden_indices` of the inverted mask; static shape given
    ``num_visible``)."""
    return hidden_indices(~mask, num_visible)


def hidden_indices(mask: Tensor, num_hidden: int | None = None) -> Tensor:
    """``(B, N)`` bool mask (True = hidden, same count per row) -> ``(B, M)`` sorted indices
    of the hidden positions: the rows ``x[mask]`` picks, in its order, as a gather.

    Given ``num_hidden`` (= M) the shape is static: a stable sort puts the hidden positions
    first in their own order, the same indices as ``nonzero`` without its data-dependent
    shape (a torch.compile graph break, and a host sync on CUDA)."""
    if num_hidden is not None:
        return torch.argsort(mask.to(torch.uint8), dim=1, descending=True,
                             stable=True)[:, :num_hidden]
    return mask.nonzero(as_tuple=True)[1].view(mask.shape[0], -1)


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x`` (B, N, ...) at positions ``index`` (B, M) of dim 1 -> (B, M, ...)."""
    index = index.view(*index.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)


def forward_masked(vit: VisionTransformer, images: Tensor, mask: Tensor,
                   mask_token: Tensor | None, num_masked: int | None = None) -> Tensor:
    """Encode a masked image.

    images: (B, C, H, W); mask: (B, N) bool, True = hidden.
    With ``mask_token`` (1, 1, D) (BEiT-style) hidden patch embeddings are replaced by it and
    the result is (B, P + N, D); without it (MAE-style) hidden patches are dropped after the
    position embedding and the result is (B, P + N_vis, D), where P = prefix (CLS/reg) tokens.
    ``num_masked``: the hidden count of every row, when known (static shapes under compile).
    """
    x = vit.patch_embed(images)  # (B, N, D)
    if mask_token is not None:
        w = mask.unsqueeze(-1).to(x.dtype)
        x = x * (1.0 - w) + mask_token.to(x.dtype) * w
    x = vit._pos_embed(x)  # (B, P + N, D), prefix tokens first
    if mask_token is None:
        prefix = vit.num_prefix_tokens
        visible = None if num_masked is None else mask.shape[1] - num_masked
        kept = gather_rows(x[:, prefix:], visible_indices(mask, visible))  # (B, N_vis, D)
        x = torch.cat([x[:, :prefix], kept], dim=1)
    x = vit.norm_pre(x)
    if vit.grad_checkpointing and torch.is_grad_enabled():
        x = checkpoint_seq(vit.blocks, x)  # the masked pass saves memory like the clean one
    else:
        x = vit.blocks(x)
    return vit.norm(x)
