"""supmim's tokenizer folder: ``tokenizer.safetensors`` + ``tokenizer.json``.

Every tokenizer kind (the small trainable VQ tokenizer, imported VQGANs) is saved the same
way, so ``--tokenizer DIR`` / ``mim.tokenizer`` accepts any of them:

    tokenizer.json = {"format": "supmim.vq_tokenizer", "version": 1,
                      "kind": "supmim-vq" | "vqgan-maskgit" | "vqgan-taming",
                      "config": {...}, "metadata": {...}, "weights_sha256": "<hex>"}

Files written before ``kind`` existed are small VQ tokenizers ("supmim-vq"). The weights'
sha256 is checked on load when the JSON records it, so a damaged copy or a JSON paired with
another tokenizer's weights is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from supmim.errors import CheckpointError
from supmim.targets.tokenizers.third_party import sha256_of

FORMAT = "supmim.vq_tokenizer"
FORMAT_VERSION = 1
WEIGHTS_NAME = "tokenizer.safetensors"
CONFIG_NAME = "tokenizer.json"
DEFAULT_KIND = "supmim-vq"
HOW_TO_MAKE = ("make one with `supmim tokenizer train --data D --out T` (or import a public "
               "VQGAN with `supmim tokenizer import`) and pass `--tokenizer T`")


def write_tokenizer(out_dir: str | Path, state: dict[str, Tensor], *, kind: str,
                    config: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Write the two files, each through a temporary name and a rename (no torn files)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    # A name of our own (not mkstemp, which makes 0600 files) in the same folder, so the
    # rename is atomic and the files get the usual permissions.
    tmp = out / f".tokenizer.{os.getpid()}.tmp"
    try:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "kind": kind})
        digest = sha256_of(tmp)
        os.replace(tmp, out / WEIGHTS_NAME)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "config": config,
                "metadata": metadata, "weights_sha256": digest}
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, out / CONFIG_NAME)
    finally:
        tmp.unlink(missing_ok=True)


def tokenizer_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, json) for a tokenizer folder, its .safetensors file or its tokenizer.json."""
    p = Path(path)
    if p.suffix == ".json" and p.is_file():  # the config file names its folder too
        p = p.parent
    if p.is_dir():
        return p / WEIGHTS_NAME, p / CONFIG_NAME
    meta_path = p.with_suffix(".json")
    if not meta_path.is_file():
        meta_path = p.with_name(CONFIG_NAME)
    return p, meta_path


def read_meta(path: str | Path) -> tuple[dict[str, Any], Path, Path]:
    """(parsed tokenizer.json, weights path, json path); CheckpointError when missing/bad."""
    weights, meta_path = tokenizer_paths(path)
    if not weights.is_file():
        raise CheckpointError(f"no tokenizer weights at {weights}: {HOW_TO_MAKE}")
    if weights.suffix != ".safetensors":
        raise CheckpointError(f"tokenizer weights must be a .safetensors file, got {weights}: "
                              f"pass the tokenizer directory or its {WEIGHTS_NAME}")
    if not meta_path.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} next to {weights}: keep the two files "
                              f"that `supmim tokenizer train` writes together")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
        if not isinstance(meta.get("config"), dict):
            raise ValueError("no 'config' object")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"unreadable tokenizer config {meta_path}: {e}; "
                              f"re-save or retrain the tokenizer") from e
    meta.setdefault("kind", DEFAULT_KIND)
    return meta, weights, meta_path


def read_weights(weights: Path, meta: dict[str, Any], meta_path: Path,
                 map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of ``weights``, checked against the sha256 that ``meta`` records."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"unreadable tokenizer weights {weights}: {e}; "
                              f"the file is damaged or not a safetensors file, retrain "
                              f"or copy it again") from e
    expected = meta.get("weights_sha256")
    if expected and sha256_of(weights) != expected:
        raise CheckpointError(f"tokenizer weights {weights} do not match the sha256 recorded in "
                              f"{meta_path}: the copy is damaged or the two files come from "
                              f"different tokenizers; copy the whole tokenizer folder again")
    return state


def parse_config(config_cls: type, meta: dict[str, Any], meta_path: Path, fix: str) -> Any:
    """``config_cls(**meta["config"])``, validated; unknown keys, wrong types and invalid
    values become a CheckpointError naming the file and ``fix``."""
    from dataclasses import fields

    from supmim.errors import ConfigError
    try:
        unknown = set(meta["config"]) - {f.name for f in fields(config_cls)}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        config = config_cls(**meta["config"])
        config.validate()
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as e:
        raise CheckpointError(f"unreadable tokenizer config {meta_path}: {e}; {fix}") from e
    return config


def load_into(model: torch.nn.Module, weights: Path, meta: dict[str, Any], meta_path: Path,
              map_location: str | torch.device) -> torch.nn.Module:
    """Load the folder's weights into ``model`` (strictly), attach its metadata and weights
    sha256 (which identifies it, e.g. for token caches); the model, moved and in eval mode."""
    state = read_weights(weights, meta, meta_path, map_location)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"tokenizer weights {weights} do not match its config "
                              f"{meta_path}: {e}") from e
    model.metadata = dict(meta.get("metadata") or {})
    model.weights_sha256 = meta.get("weights_sha256")
    return model.to(map_location).eval()
