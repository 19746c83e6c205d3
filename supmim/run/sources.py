"""Encoder weights from elsewhere (``train.init_from``): stages such as ImageNet-21k
pre-training -> ImageNet-1k fine-tuning, with MIM on or off in each.

Accepted sources: a supmim run directory (its latest checkpoint; EMA weights when it kept
them, as ``supmim export`` chooses), a timm model folder as written by ``supmim export``
(``model.safetensors``), a ``.safetensors`` file of timm ViT weights, or a timm start
(``timm:NAME[@FILE]``, ``hf-hub:ORG/NAME``, ``local-dir:DIR``: :mod:`supmim.run.timm_start`).
Only safetensors are read from local files: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from supmim.errors import CheckpointError
from supmim.models.pretrained import fit_encoder_state
from supmim.run.rundir import RunDir
from supmim.run.timm_start import note, timm_encoder_state, timm_start


def read_encoder_source(source: str | Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """``(weights, class names)`` of ``source``: timm-named encoder weights, and the names of
    its head's classes where the source records them (None for a bare weights file)."""
    path = Path(source)
    if RunDir.is_run(path):
        run = RunDir(path)
        if run.latest() is None:
            raise CheckpointError(f"train.init_from: run '{path}' has no checkpoint yet")
        return run.encoder_state("last", "auto"), run.info("last").classes
    if path.is_dir() and (path / "model.safetensors").is_file():
        names = None
        if (path / "config.json").is_file():
            names = json.loads((path / "config.json").read_text()).get("label_names")
        return load_file(str(path / "model.safetensors")), \
            [str(c) for c in names] if names else None
    if path.is_file() and path.suffix == ".safetensors":
        return load_file(str(path)), None
    raise CheckpointError(
        f"train.init_from '{source}' is not a supmim run directory, a timm model folder with "
        "model.safetensors (from `supmim export`), a .safetensors file, or a timm start "
        "(timm:NAME, timm:NAME@/path/weights.safetensors, hf-hub:ORG/NAME, local-dir:/path)")


def init_encoder(vit: VisionTransformer, source: str | Path,
                 classes: list[str] | None = None) -> dict[str, list[str]]:
    """Load ``source``'s encoder weights into ``vit`` in place (see
    :func:`supmim.models.pretrained.fit_encoder_state` for which head is kept). A timm
    start's report also has ``"notes"``: what timm resampled and whether the head was kept."""
    start = timm_start(str(source))
    if start is not None:
        state, notes = timm_encoder_state(vit, start, str(source))
        report = fit_encoder_state(vit, state, source=str(source), classes=classes)
        for text in notes:
            note(text)
        return {**report, "notes": notes}
    state, theirs = read_encoder_source(source)
    return fit_encoder_state(vit, state, source=str(source), theirs=theirs, classes=classes)
