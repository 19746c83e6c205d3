"""Segmentation heads on an encoder's patch-feature maps, and the encoder side that feeds them.

Feature maps come from timm's ``forward_intermediates`` (NCHW, the final norm applied), so
any timm model with that API works; a ViT gives maps of (B, D, H/p, W/p).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from supmim.evaluation.common import EvaluationError

HEADS = ("linear", "multilevel")


def default_levels(model: nn.Module, head: str, count: int = 4) -> list[int]:
    """Block indices to read: the last block for ``linear``; for ``multilevel``, ``count``
    evenly spaced blocks ending with the last (depth 12 -> 2, 5, 8, 11; depth 6 -> 1, 2, 4, 5)."""
    depth = len(getattr(model, "blocks", None) or getattr(model, "stages", None) or [])
    if depth == 0:
        raise EvaluationError(f"{type(model).__name__} exposes no blocks/stages for "
                              "forward_intermediates; segmentation needs a timm ViT-style model")
    if head == "linear":
        return [depth - 1]
    count = min(count, depth)
    return sorted({math.ceil((i + 1) * depth / count) - 1 for i in range(count)})


@contextlib.contextmanager
def any_input_size(model: nn.Module) -> Iterator[None]:
    """Let a fixed-size timm ViT take any input whose sides are multiples of its patch size.

    Switches on timm's own dynamic-size mode for the duration (the position embedding is
    resampled bicubically on every forward, nothing is written into the weights) and
    switches it off again, so the model and its ``state_dict`` stay as they were.
    """
    embed = getattr(model, "patch_embed", None)
    if embed is None or not hasattr(model, "dynamic_img_size"):
        yield  # not a ViT: convnets take any size already
        return
    from timm.layers import Format

    saved = (model.dynamic_img_size, embed.strict_img_size, embed.flatten, embed.output_fmt)
    model.dynamic_img_size = True
    embed.strict_img_size, embed.flatten, embed.output_fmt = False, False, Format.NHWC
    try:
        yield
    finally:
        model.dynamic_img_size = saved[0]
        embed.strict_img_size, embed.flatten, embed.output_fmt = saved[1:]


def patch_size_of(model: nn.Module) -> tuple[int, int]:
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "patch_size", (1, 1)) if embed is not None else (1, 1)
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))


def feature_maps(model: nn.Module, images: Tensor, levels: Sequence[int]) -> list[Tensor]:
    """images (B, C, H, W) -> one (B, D_l, h, w) map per level (ViT: h = H / patch)."""
    return model.forward_intermediates(images, indices=list(levels), norm=True,
                                       output_fmt="NCHW", intermediates_only=True)


class LinearHead(nn.Module):
    """BatchNorm + 1x1 conv on the last map: [(B, D, h, w), ...] -> (B, K, h, w) (DINOv2's linear)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels[-1])
        self.classifier = nn.Conv2d(in_channels[-1], num_classes, kernel_size=1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        return self.classifier(self.norm(maps[-1].float()))


class MultiLevelHead(nn.Module):
    """A light head over L maps: each map BN + 1x1 conv to ``width`` (resized to the finest
    map if sizes differ), concatenated, fused by a 3x3 conv + BN + ReLU, classified by a
    1x1 conv: L x (B, D_l, h, w) -> (B, K, h, w). The 3x3 conv lets a pixel's prediction
    use its neighbours, which the linear head cannot."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.project = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(c), nn.Conv2d(c, width, 1))
                                     for c in in_channels)
        self.fuse = _conv_bn_relu(width * len(in_channels), width)
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        parts = [F.interpolate(p(m.float()), size=size, mode="bilinear", align_corners=False)
                 if m.shape[-2:] != size else p(m.float()) for p, m in zip(self.project, maps)]
        return self.classifier(self.fuse(torch.cat(parts, dim=1)))


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def build_head(kind: str, in_channels: Sequence[int], num_classes: int, width: int = 64) -> nn.Module:
    if kind == "linear":
        return LinearHead(in_channels, num_classes)
    if kind == "multilevel":
        return MultiLevelHead(in_channels, num_classes, width)
    raise EvaluationError(f"unknown --head '{kind}'; use one of {', '.join(HEADS)}")
