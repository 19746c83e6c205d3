"""Loading weights trained elsewhere into an encoder: the position embedding is resampled to
this model's grid, and the classification head is kept only for the same label set. Where
the weights come from (a run, an export, a file) is :mod:`supmim.run.sources`' business."""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from supmim.errors import CheckpointError


def _fit_pos_embed(state: dict[str, torch.Tensor], vit: VisionTransformer) -> None:
    """Resample the position embedding when the source was trained at another grid size."""
    old = state.get("pos_embed")
    new = vit.pos_embed
    if old is None or new is None or old.shape == new.shape:
        return
    prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    state["pos_embed"] = resample_abs_pos_embed(old, new_size=list(vit.patch_embed.grid_size),
                                                num_prefix_tokens=prefix)


def fit_encoder_state(vit: VisionTransformer, state: dict[str, torch.Tensor], *, source: str,
                      theirs: list[str] | None = None,
                      classes: list[str] | None = None) -> dict[str, list[str]]:
    """Load timm-named ``state`` into ``vit`` in place.

    The classification head is kept only when it classifies the same label set: the same
    class names where both sides name them (``classes``, ``theirs``), else the same number
    of classes. Otherwise it keeps its fresh initialisation: two 10-class datasets (Tiny
    ImageNet subset -> CIFAR-10) must not share a head by accident. Any other missing or
    mismatched weight is an error naming it (``source`` names where the weights came from).
    Returns {"new": keys left freshly initialised, "loaded": keys taken from the source}.
    """
    state = dict(state)
    _fit_pos_embed(state, vit)
    own = vit.state_dict()
    other_labels = classes is not None and theirs is not None and theirs != list(classes)
    fresh = [k for k in ("head.weight", "head.bias") if k in own and (
        other_labels or k not in state or state[k].shape != own[k].shape)]
    for k in fresh:
        state.pop(k, None)
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"train.init_from '{source}' does not fit model {bad[:3]}: use "
                              "the same architecture (model.* keys) as the source")
    missing, unexpected = vit.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in fresh]
    unexpected = [k for k in unexpected if not k.startswith("head.")]
    if missing or unexpected:
        raise CheckpointError(f"train.init_from '{source}' does not match the model: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}; use the same "
                              "architecture (model.* keys) as the source")
    return {"new": fresh, "loaded": sorted(state)}
