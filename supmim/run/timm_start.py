"""Starting the encoder from timm's pretrained weights: ``train.init_from`` =
``timm:NAME[@FILE]``, ``hf-hub:ORG/NAME`` or ``local-dir:DIR`` (the forms are in
:mod:`supmim.init_source`).

timm builds the source model at *our* encoder's size (image size, patch size, channels, width,
depth, heads, classes) through ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=FILE))``, so timm's own checkpoint filter resamples the patch
embedding (e.g. 16 -> 14) and the position embedding and adapts the input channels; its
weights are then loaded into our encoder with the checks of any other source. The mean and std
come from the checkpoint's ``pretrained_cfg`` unless ``data.mean`` / ``data.std`` are set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from timm.models.vision_transformer import VisionTransformer

from supmim.config import RunConfig
from supmim.errors import CheckpointError
from supmim.init_source import HUB_PREFIX, LOCAL_PREFIX, TimmStart, parse_timm_start

OFFLINE_HINT = ("Without network, fetch the weights on a machine that has it and pass "
                "timm:NAME@/path/model.safetensors or local-dir:/path/folder")


def note(text: str) -> None:
    """Print ``supmim: note: text`` once (on the main process under torchrun)."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0):
        print(f"supmim: note: {text}", flush=True)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def timm_start(value: str) -> TimmStart | None:
    """``train.init_from`` as a checked timm start, or None for a path. An existing path
    wins over a bare timm name spelt the same."""
    bare = not Path(value).exists() and timm.is_model(value.partition("@")[0])
    start = parse_timm_start(value, bare=bare)
    if start is None:
        return None
    if start.file is not None and not Path(start.file).is_file():
        raise CheckpointError(f"train.init_from '{value}': the weights file '{start.file}' "
                              "does not exist")
    if start.name.startswith(LOCAL_PREFIX):
        folder = Path(start.name[len(LOCAL_PREFIX):])
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"train.init_from '{value}': '{folder}' is not a folder with "
                                  "config.json and model.safetensors (the Hub layout that "
                                  "timm's save_for_hf and `supmim export` write)")
    elif not start.name.startswith(HUB_PREFIX) and not timm.is_model(start.name):
        raise CheckpointError(f"train.init_from '{value}': '{start.name}' is not a timm model; "
                              "see timm.list_models('vit_*') for the ViTs")
    return start


def _read_config_json(path: Path, value: str) -> dict[str, Any]:
    """The ``pretrained_cfg`` of a Hub-layout ``config.json``."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"train.init_from '{value}': unreadable {path} "
                              f"({_one_line(err)})") from err
    found = cfg.get("pretrained_cfg") if isinstance(cfg, dict) else None
    return found if isinstance(found, dict) else {}


def pretrained_cfg(start: TimmStart, value: str) -> dict[str, Any]:
    """The checkpoint's ``pretrained_cfg`` (mean, std, num_classes, ...) without its weights:
    timm's registry for a name, ``config.json`` for a folder or a Hub repository."""
    if start.name.startswith(LOCAL_PREFIX):
        return _read_config_json(Path(start.name[len(LOCAL_PREFIX):]) / "config.json", value)
    if start.name.startswith(HUB_PREFIX):
        from huggingface_hub import hf_hub_download  # a timm dependency

        repo, _, revision = start.name[len(HUB_PREFIX):].partition("@")
        try:
            path = hf_hub_download(repo, "config.json", revision=revision or None)
        except Exception as err:  # offline, unknown repository, ...: several error types
            raise CheckpointError(f"train.init_from '{value}': could not fetch its config.json "
                                  f"from the Hugging Face Hub ({_one_line(err)}). Is the "
                                  f"machine offline? {OFFLINE_HINT}") from err
        return _read_config_json(Path(path), value)
    try:
        cfg = timm.models.get_pretrained_cfg(start.name)
    except RuntimeError as err:  # a pretrained tag timm does not know
        raise CheckpointError(f"train.init_from '{value}': {str(err).rstrip('.')}; "
                              f"timm.list_pretrained('{start.name.split('.')[0]}*') lists the "
                              "tags") from err
    return cfg.to_dict() if cfg is not None else {}


def use_pretrained_stats(cfg: RunConfig) -> str | None:
    """Fill ``cfg.data.mean`` / ``std`` that are unset from a timm start's
    ``pretrained_cfg`` (in place, so the run records them) and print a note saying so;
    returns the note, or None when nothing changed (a path source, both set, or a
    pretrained_cfg without them)."""
    d = cfg.data
    if not cfg.train.init_from or (d.mean is not None and d.std is not None):
        return None
    start = timm_start(cfg.train.init_from)
    if start is None:
        return None
    found = pretrained_cfg(start, cfg.train.init_from)
    mean, std = found.get("mean"), found.get("std")
    if not mean or not std:
        return None
    if d.mean is None:
        d.mean = [float(v) for v in mean]
    if d.std is None:
        d.std = [float(v) for v in std]
    shown = ", ".join(f"{k} ({', '.join(f'{v:.4g}' for v in vals)})"
                      for k, vals in (("mean", d.mean), ("std", d.std)))
    text = (f"normalising with the {start.name} checkpoint's {shown} from its pretrained_cfg "
            "(set data.mean / data.std to choose others)")
    note(text)
    return text


def _head_rows(file: str, value: str) -> int:
    """Classes of the ``head.weight`` in a safetensors file (0 without a head)."""
    try:
        with safe_open(file, framework="pt") as f:
            return int(f.get_slice("head.weight").get_shape()[0]) if "head.weight" in f.keys() \
                else 0
    except Exception as err:  # safetensors raises several types for damaged files
        raise CheckpointError(f"train.init_from '{value}': unreadable safetensors file "
                              f"'{file}' ({_one_line(err)})") from err


def _our_size(vit: VisionTransformer) -> dict[str, Any]:
    """The ``create_model`` arguments that make timm build the source at our encoder's size."""
    return dict(img_size=tuple(vit.patch_embed.img_size),
                patch_size=tuple(vit.patch_embed.patch_size),
                in_chans=vit.patch_embed.proj.in_channels, embed_dim=vit.embed_dim,
                depth=len(vit.blocks), num_heads=vit.blocks[0].attn.num_heads,
                global_pool=vit.global_pool, num_classes=vit.num_classes)


def timm_encoder_state(vit: VisionTransformer, start: TimmStart,
                       value: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(weights, notes)``: the start's weights as timm loads them into a model of ``vit``'s
    size (patch and position embeddings resampled), without the head unless the checkpoint's
    classifies as many classes as ``vit`` (timm checkpoints do not name their classes)."""
    n = vit.num_classes
    # timm keeps the head only when num_classes equals the pretrained_cfg's: for a local file
    # that is the file's own head, whatever the registry's default says
    overlay = {"file": start.file, "num_classes": _head_rows(start.file, value)} \
        if start.file else None
    try:
        with torch.random.fork_rng(devices=[]):  # building it must not move our RNG streams
            src = timm.create_model(start.name, pretrained=True, pretrained_cfg_overlay=overlay,
                                    **_our_size(vit))
    except Exception as err:  # timm, torch and the Hub raise many types
        if start.needs_hub and isinstance(err, OSError):  # the Hub's errors are OSErrors
            raise CheckpointError(f"train.init_from '{value}': could not fetch the weights from "
                                  f"the Hugging Face Hub ({_one_line(err)}). Is the machine "
                                  f"offline? {OFFLINE_HINT}") from err
        raise CheckpointError(f"train.init_from '{value}' does not fit the model "
                              f"({_one_line(err)}): use the same architecture (model.* keys) "
                              "as the source") from err
    if not isinstance(src, VisionTransformer):
        raise CheckpointError(f"train.init_from '{value}' is a {type(src).__name__}, not a timm "
                              "VisionTransformer")
    theirs = src.pretrained_cfg.get("num_classes")
    state = src.state_dict()
    notes = [f"train.init_from '{value}': timm built {start.name} at {vit.patch_embed.img_size[0]}"
             f" px, patch {vit.patch_embed.patch_size[0]}, and resampled the checkpoint's patch "
             "and position embeddings where they differ"]
    if theirs == n:
        notes.append(f"kept the checkpoint's {n}-class head (the same number of classes)")
    else:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        notes.append(f"the checkpoint's head classifies {theirs or 'no'} classes, not these {n}: "
                     "the head starts fresh")
    return state, notes
