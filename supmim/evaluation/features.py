"""Image-level features of a frozen encoder: pooled tokens, batched, optionally cached.

Pooling (``pool``):
- ``default``: exactly what the model's classifier sees, ``forward_head(pre_logits=True)``
  (for a ViT: its own pooling, CLS or GAP, then ``fc_norm``);
- ``cls``: the class token; ``gap``: the mean of the patch tokens. For a ViT both are
  followed by ``fc_norm`` when the model has one (a LayerNorm that GAP models apply after
  pooling instead of the final token norm), so the two are on the same footing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from supmim.evaluation.common import EvaluationError, eval_mode
from supmim.evaluation.datasets import EvalSplit, eval_transform
from supmim.evaluation.loading import LoadedModel

POOLS = ("default", "cls", "gap")


def pooled_features(model: nn.Module, images: Tensor, pool: str = "default") -> Tensor:
    """images (B, C, H, W) -> features (B, D)."""
    tokens = model.forward_features(images)
    if pool == "default":
        return model.forward_head(tokens, pre_logits=True)
    if not hasattr(model, "pool") or not hasattr(model, "num_prefix_tokens"):
        raise EvaluationError(f"--pool {pool} needs a ViT-style model (token sequence with a pool() "
                              f"method); {type(model).__name__} has none: use --pool default")
    if pool == "cls" and getattr(model, "cls_token", None) is None:
        raise EvaluationError("--pool cls: this model has no class token; use --pool gap or default")
    vec = model.pool(tokens, pool_type="token" if pool == "cls" else "avg")
    fc_norm = getattr(model, "fc_norm", None)
    return fc_norm(vec) if fc_norm is not None else vec


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows scaled to unit L2 norm: (N, D) -> (N, D)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def extract_features(model: nn.Module, loader: DataLoader, device: torch.device, *,
                     pool: str = "default", progress: bool = True,
                     desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Run the frozen model over ``loader`` (items ``(images, labels, ...)``).

    Returns features (N, D) float32 and labels (N,) int64, in loader order. The model runs
    in eval mode under ``inference_mode`` and its previous mode is restored.
    """
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    with eval_mode(model), torch.inference_mode():
        for images, y, *_ in tqdm(loader, desc=desc, disable=not progress, leave=False):
            feats.append(pooled_features(model, images.to(device), pool).float().cpu())
            labels.append(torch.as_tensor(y))
    if not feats:
        raise EvaluationError("the split is empty: no images to embed")
    return torch.cat(feats).numpy(), torch.cat(labels).numpy().astype(np.int64)


def make_loader(dataset: Any, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def split_features(loaded: LoadedModel, split: EvalSplit, device: torch.device, *,
                   pool: str = "default", batch_size: int = 256, workers: int = 0,
                   progress: bool = True, cache_dir: str | None = None,
                   use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) float32 and labels (N,) of a whole split, through the model's eval
    transform; cached on disk (keyed by weights, data, split, pool and transform) so that
    kNN, retrieval and the linear probe embed each split once."""
    transform = eval_transform(loaded.data_config)
    path = _cache_path(loaded, split, pool, repr(transform), cache_dir) if use_cache else None
    if path is not None and path.is_file():
        with np.load(path) as cached:
            if np.array_equal(cached["labels"], split.labels):
                return cached["features"], cached["labels"]
    loader = make_loader(split.with_transform(transform, loaded.in_chans), batch_size, workers, device)
    feats, labels = extract_features(loaded.model.to(device), loader, device, pool=pool,
                                     progress=progress, desc=f"embed {split.tag}/{split.split}")
    if path is not None:
        _save_atomic(path, features=feats, labels=labels)
    return feats, labels


def _cache_path(loaded: LoadedModel, split: EvalSplit, pool: str, transform: str,
                cache_dir: str | None) -> Path:
    from supmim.data import cache_root

    key = {"model": loaded.fingerprint(), "data": split.source, "split": split.split,
           "n": len(split), "labels": hashlib.sha256(split.labels.tobytes()).hexdigest()[:16],
           "pool": pool, "transform": transform, "in_chans": loaded.in_chans}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root(cache_dir) / "features" / f"{split.tag}-{split.split}-{digest}.npz"


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    except OSError:
        pass  # a cache that cannot be written only costs time
