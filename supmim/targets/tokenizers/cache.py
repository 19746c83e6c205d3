"""Precomputed token ids for data whose preprocessing is fixed (no random crop or flip).

With fixed preprocessing a sample always gives the same tokens, so the tokenizer can run once
per image before training instead of at every step. The cache is one ``(N, gh*gw)`` integer
tensor in a safetensors file whose metadata carries a ``key`` (what the ids depend on: the
tokenizer's weights sha256, the grid, the transform); a cache whose key differs is rebuilt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from supmim.errors import CheckpointError, ConfigError


class TokenCache:
    """``ids`` (N, gh*gw): the token ids of dataset item i in row i."""

    def __init__(self, ids: Tensor, key: str) -> None:
        if ids.ndim != 2:
            raise ConfigError(f"a token cache holds (N, tokens) ids, got shape {tuple(ids.shape)}")
        self.ids = ids
        self.key = key

    def __len__(self) -> int:
        return self.ids.shape[0]

    def lookup(self, indices: Tensor) -> Tensor:
        """(B,) dataset indices -> (B, gh*gw) int64 ids (on the indices' device)."""
        return self.ids[indices.cpu().long()].long().to(indices.device)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            save_file({"ids": self.ids.contiguous()}, str(tmp), metadata={"key": self.key})
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path, key: str | None = None) -> TokenCache | None:
        """The cache at ``path``; None when it does not exist or was built for another key."""
        from safetensors import safe_open
        p = Path(path)
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="pt") as f:
                stored = (f.metadata() or {}).get("key", "")
                ids = f.get_tensor("ids")
        except Exception as e:  # damaged file: say so instead of training on garbage
            raise CheckpointError(f"unreadable token cache '{p}': {e}; delete it to rebuild") from e
        if key is not None and stored != key:
            return None
        return cls(ids, stored)


def cache_key(**parts: Any) -> str:
    """A stable string from what the ids depend on (JSON with sorted keys)."""
    return json.dumps(parts, sort_keys=True, default=str)


@torch.no_grad()
def precompute_tokens(target: Callable[[Tensor], Tensor], dataset: Dataset, *, key: str,
                      to_unit: Callable[[Tensor], Tensor] | None = None, batch_size: int = 256,
                      num_workers: int = 0, device: str | torch.device = "cpu") -> TokenCache:
    """Token ids of every item of ``dataset`` (items ``(image, ...)``; images in [0, 1], or
    mapped there by ``to_unit``, e.g. ``SupMimModel.unnormalize``), in dataset order.

    Only valid when the dataset's transform is deterministic: with random augmentation the
    cached ids would describe a different view than the encoder sees."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=lambda b: torch.stack([item[0] for item in b]))
    if hasattr(target, "to"):
        target = target.to(device)  # type: ignore[attr-defined]
    small = target.out_dim <= torch.iinfo(torch.int16).max + 1  # type: ignore[attr-defined]
    chunks = []
    for images in loader:
        images = images.to(device).float()
        if to_unit is not None:
            images = to_unit(images)
        ids = target(images).cpu()
        chunks.append(ids.to(torch.int16) if small else ids.to(torch.int32))
    if not chunks:
        raise ConfigError("cannot build a token cache for an empty dataset")
    return TokenCache(torch.cat(chunks), key)
