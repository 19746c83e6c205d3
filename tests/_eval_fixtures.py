"""Tiny models and data for the evaluation tests (made here; no shared data, no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from timm.models import save_for_hf

TINY_ARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
DATA_CONFIG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
               "crop_pct": 1.0, "crop_mode": "center", "interpolation": "bilinear"}


def tiny_vit(num_classes: int = 3, global_pool: str = "token", seed: int = 0,
             depth: int = 2) -> timm.models.VisionTransformer:
    """A random 2-block ViT (32 wide, patch 8 at 32 px: a 4x4 grid); ~30k parameters."""
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes,
                             global_pool=global_pool, **{**TINY_ARGS, "depth": depth})


def export_tiny(folder: Path, model: torch.nn.Module, label_names: list[str] | None = None) -> Path:
    """Save ``model`` as a timm 'local-dir:' folder, the way `supmim export` does."""
    args = {**TINY_ARGS, "depth": len(model.blocks), "num_classes": model.num_classes,
            "global_pool": model.global_pool}
    save_for_hf(model, str(folder), model_config={"label_names": label_names} if label_names else {},
                model_args=args, safe_serialization=True, data_config=dict(DATA_CONFIG))
    return folder


def seg_npz(path: Path, n_train: int = 24, n_test: int = 8, size: tuple[int, int] = (40, 48),
            seed: int = 0) -> Path:
    """CamVid-style arrays: the image's left part is class 0 (reddish), the right part class
    1 (greenish) at a random split column, a bright square is class 2; a 2-pixel border is
    'void' (id 3, to be ignored)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {"classes": np.array(["left", "right", "square", "void"])}
    h, w = size
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 60, size=(n, h, w, 3)).astype(np.uint8)
        y = np.zeros((n, h, w), dtype=np.uint8)
        for i in range(n):
            cut = int(rng.integers(w // 4, 3 * w // 4))
            x[i, :, :cut, 0] += 150
            x[i, :, cut:, 1] += 150
            y[i, :, cut:] = 1
            r, c = int(rng.integers(4, h - 16)), int(rng.integers(4, w - 16))
            x[i, r:r + 12, c:c + 12] = 250
            y[i, r:r + 12, c:c + 12] = 2
            y[i, :2], y[i, -2:], y[i, :, :2], y[i, :, -2:] = 3, 3, 3, 3
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    np.savez(path, **arrays)
    return path


def pets_npz(path: Path, n: int = 20, size: int = 32, seed: int = 0) -> Path:
    """Oxford-Pet-style arrays: a bright disc is the pet (trimap 1), its rim the boundary
    (3), the rest background (2); two breeds."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    x = rng.integers(0, 80, size=(n, size, size, 3)).astype(np.uint8)
    trimap = np.full((n, size, size), 2, dtype=np.uint8)
    for i in range(n):
        cy, cx, r = rng.integers(10, size - 10), rng.integers(10, size - 10), rng.integers(5, 9)
        d = np.hypot(yy - cy, xx - cx)
        x[i][d < r] = 230
        trimap[i][d < r + 1] = 3
        trimap[i][d < r - 1] = 1
    np.savez(path, x=x, trimap=trimap, y=np.arange(n) % 2, breeds=np.array(["a", "b"]))
    return path


def faces_npz(path: Path, people: int = 4, per_person: int = 5, seed: int = 0) -> Path:
    """ORL-style grey images (N, 40, 36) with an ``identity`` per image."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 255, size=(people, 40, 36))
    x = np.concatenate([np.clip(p + rng.normal(0, 20, size=(per_person, 40, 36)), 0, 255)
                        for p in protos]).astype(np.uint8)
    np.savez(path, x=x, identity=np.repeat(np.arange(people), per_person))
    return path


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class ModeRecorder:
    """Forward pre-hooks on every submodule recording whether it ran in training mode."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.modes: list[bool] = []
        self.handles = [m.register_forward_pre_hook(self._hook) for m in model.modules()]

    def _hook(self, module: torch.nn.Module, _inputs: object) -> None:
        self.modes.append(module.training)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
