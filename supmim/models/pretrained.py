"""Start an encoder from another run or model (``train.init_from``): stages such as
ImageNet-21k pre-training -> ImageNet-1k fine-tuning, with MIM on or off in each.

Accepted sources: a supmim run directory (its latest checkpoint; EMA weights when it kept
them), a timm model folder as written by ``supmim export`` (``model.safetensors``), or a
``.safetensors`` file of timm ViT weights. Only safetensors are read: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from supmim.errors import CheckpointError


def read_encoder_state(source: str | Path) -> dict[str, torch.Tensor]:
    """The timm-named encoder weights held by ``source`` (see the module docstring)."""
    path = Path(source)
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        from supmim.engine.checkpoint import latest_checkpoint
        folder = latest_checkpoint(path)
        if folder is None:
            raise CheckpointError(f"train.init_from: run '{path}' has no checkpoint yet")
        if (folder / "ema.safetensors").is_file():
            return load_file(str(folder / "ema.safetensors"))
        state = load_file(str(folder / "model.safetensors"))
        return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if path.is_dir() and (path / "model.safetensors").is_file():
        return load_file(str(path / "model.safetensors"))
    if path.is_file() and path.suffix == ".safetensors":
        return load_file(str(path))
    raise CheckpointError(
        f"train.init_from '{source}' is not a supmim run directory, a timm model folder with "
        "model.safetensors (from `supmim export`), or a .safetensors file")


def _fit_pos_embed(state: dict[str, torch.Tensor], vit: VisionTransformer) -> None:
    """Resample the position embedding when the source was trained at another grid size."""
    old = state.get("pos_embed")
    new = vit.pos_embed
    if old is None or new is None or old.shape == new.shape:
        return
    prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    state["pos_embed"] = resample_abs_pos_embed(old, new_size=list(vit.patch_embed.grid_size),
                                                num_prefix_tokens=prefix)


def source_classes(source: str | Path) -> list[str] | None:
    """The class names of ``source``'s head, where it records them: a run's ``classes.json``
    or an export's ``config.json`` ``label_names``; None for a bare weights file."""
    path = Path(source)
    if (path / "classes.json").is_file():
        return [str(c) for c in json.loads((path / "classes.json").read_text())]
    if (path / "config.json").is_file():
        names = json.loads((path / "config.json").read_text()).get("label_names")
        return [str(c) for c in names] if names else None
    return None


def init_encoder(vit: VisionTransformer, source: str | Path,
                 classes: list[str] | None = None) -> dict[str, list[str]]:
    """Load ``source``'s encoder weights into ``vit`` in place.

    The classification head is kept only when it classifies the same label set: the same
    class names where both sides name them (``classes``, :func:`source_classes`), else the
    same number of classes. Otherwise it keeps its fresh initialisation: two 10-class
    datasets (Tiny ImageNet subset -> CIFAR-10) must not share a head by accident. Any other
    missing or mismatched weight is an error naming it. Returns {"new": keys left freshly
    initialised, "loaded": keys taken from the source}.
    """
    state = read_encoder_state(source)
    _fit_pos_embed(state, vit)
    own = vit.state_dict()
    theirs = source_classes(source)
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
