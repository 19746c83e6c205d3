"""``supmim tokenizer cache``: build a run's view cache (:mod:`supmim.data.views`), and check
one against a run before it trains (``mim.token_cache``).

Building runs the frozen tokenizer once per stored view, batched, on the images exactly as
the training loader replays them (the same PIL operations, then the model's
``unnormalize``), under the precision rules training uses (``mim.tokenizer_precision``:
bf16 on CUDA for "auto", fp32 elsewhere). Training then reads the ids instead of running the
tokenizer. A cache describes one training split, one geometric augmentation and one
tokenizer; :func:`load_for_run` refuses any other in one line naming what differs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from supmim.config import RunConfig, validate
from supmim.data.datasets import ImageDataset
from supmim.data.splits import RunData, build_run_data
from supmim.data.views import FORMAT, VERSION, ViewCache, ViewTransform, view_seed
from supmim.device import resolve_device, uses_bf16
from supmim.errors import ConfigError

# meta key -> the config key (or what) it comes from; these must match the run
CHECKED = {"data": "data.data", "train_indices": "training split (data.val_fraction, "
           "data.train_samples)", "images": "number of training images",
           "img_size": "model.img_size", "patch_size": "model.patch_size",
           "in_chans": "model.in_chans", "crop": "data.crop", "pad": "data.pad",
           "hflip": "data.hflip", "interpolation": "data.interpolation", "mean": "data.mean",
           "std": "data.std", "tokenizer": "tokenizer (mim.tokenizer: its weights' sha256)",
           "precision": "tokenizer precision (mim.tokenizer_precision on this device)"}


def tokenizer_identity(tokenizer: str | Path | nn.Module) -> str:
    """sha256 of a tokenizer's weights: the one its ``tokenizer.json`` records (checked when
    it is loaded), else of the weights file; for an in-memory module, of its state dict."""
    if isinstance(tokenizer, nn.Module):
        h = hashlib.sha256()
        for name, t in sorted(tokenizer.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return "state:" + h.hexdigest()
    from supmim.targets.tokenizers.files import read_meta
    from supmim.targets.tokenizers.third_party import sha256_of
    meta, weights, _ = read_meta(tokenizer)
    return str(meta.get("weights_sha256") or sha256_of(weights))


def _data_name(name: str) -> str:
    """``data.data`` with a local path made absolute, so ``./d`` and ``/abs/d`` agree."""
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def _train_indices(data: RunData) -> np.ndarray:
    train = data.train
    if not isinstance(train, ImageDataset):
        raise ConfigError("mim.token_cache needs indexed training data (an image folder, "
                          "archive or built-in dataset), not a stream: drop mim.token_cache")
    return np.asarray(train.indices if train.indices is not None else np.arange(len(train)),
                      dtype=np.int64)


def run_identity(cfg: RunConfig, data: RunData, tokenizer: str | Path | nn.Module | None
                 ) -> dict[str, Any]:
    """What a run's views (and, given ``tokenizer``, its ids) depend on: the :data:`CHECKED`
    part of a cache's meta, but the ids' precision."""
    m, d = cfg.model, cfg.data
    idx = _train_indices(data)
    views = {"data": _data_name(d.data),
             "train_indices": hashlib.sha256(idx.tobytes()).hexdigest(),
             "images": int(idx.size), "img_size": m.img_size, "patch_size": m.patch_size,
             "in_chans": m.in_chans, "crop": d.crop, "pad": d.pad, "hflip": d.hflip,
             "interpolation": d.interpolation, "mean": [float(x) for x in data.mean],
             "std": [float(x) for x in data.std]}
    return views if tokenizer is None else {**views, "tokenizer": tokenizer_identity(tokenizer)}


def check_cacheable(cfg: RunConfig, out: str | Path, *, tokenizer_path: bool = True
                    ) -> RunConfig:
    """A copy of ``cfg`` as a run on the cache at ``out`` (VQ target on), validated: the
    augmentations a cache cannot replay are refused here (:func:`supmim.config.validate`)."""
    cfg = copy.deepcopy(cfg)
    cfg.mim.enabled, cfg.mim.target, cfg.mim.token_cache = True, "vq", str(out)
    validate(cfg)
    if tokenizer_path and cfg.mim.tokenizer in (None, "", "auto"):
        raise ConfigError("supmim tokenizer cache needs --tokenizer FOLDER: the tokenizer the "
                          "run will train with")
    return cfg


class _Views(Dataset):
    """Item i: the K views (K, C, S, S) of training position i, their params (K, 5) and the
    image's dataset index."""

    def __init__(self, train: ImageDataset, transform: ViewTransform, views: int,
                 seed: int) -> None:
        self.base = copy.copy(train)
        self.base.transform = None
        self.transform, self.views, self.seed = transform, views, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        img, _, index = self.base[i]
        drawn = [self.transform.sample(img, view_seed(self.seed, index, v))
                 for v in range(self.views)]
        return (torch.stack([x for _, x in drawn]),
                torch.tensor([p for p, _ in drawn], dtype=torch.int64), index)


@torch.no_grad()
def build_view_cache(cfg: RunConfig, tokenizer: str | Path | nn.Module, *, views: int,
                     out: str | Path, batch: int = 256, device: str | torch.device | None = None,
                     progress: bool = True, data: RunData | None = None,
                     limit: int | None = None) -> dict[str, Any]:
    """Build ``out/views.safetensors``: ``views`` views of every training image of ``cfg``
    (drawn from ``train.seed``) and the tokenizer's ids of each; returns a summary (images,
    views, seconds, bytes, bytes per image). ``batch``: views per tokenizer forward.
    ``limit``: only the first ``limit`` training images (benchmarks; such a cache is not for
    training)."""
    from tqdm.auto import tqdm

    from supmim.targets.vq_target import VQTarget
    if views < 1:
        raise ConfigError(f"--views must be >= 1, got {views}")
    cfg = check_cacheable(cfg, out, tokenizer_path=not isinstance(tokenizer, nn.Module))
    m, d = cfg.model, cfg.data
    dev = resolve_device(str(device or cfg.train.device))
    data = data or build_run_data(cfg)
    meta = run_identity(cfg, data, tokenizer)
    target = VQTarget(tokenizer, img_size=m.img_size, patch_size=m.patch_size,
                      in_chans=m.in_chans, precision=cfg.mim.tokenizer_precision).to(dev)
    transform = ViewTransform(img_size=m.img_size, in_chans=m.in_chans, mean=data.mean,
                              std=data.std, crop=d.crop, pad=d.pad, hflip=d.hflip,
                              interpolation=d.interpolation)
    source: Dataset = _Views(data.train, transform, views, cfg.train.seed)  # type: ignore[arg-type]
    n = len(source) if limit is None else min(limit, len(source))
    if limit is not None:
        source = torch.utils.data.Subset(source, range(n))
    loader = DataLoader(source, batch_size=max(1, batch // views), shuffle=False,
                        num_workers=d.num_workers)
    # the model's unnormalize (SupMimModel): the same buffers, the same ops
    chans = m.in_chans
    mean = torch.tensor(list(data.mean)).view(1, chans, 1, 1).to(dev)
    std = torch.tensor(list(data.std)).view(1, chans, 1, 1).to(dev)
    params, ids = [], []
    start = time.perf_counter()
    for images, p, _ in tqdm(loader, desc=f"token views (K={views})", disable=not progress,
                             dynamic_ncols=True, leave=False):
        x = images.flatten(0, 1).to(dev)
        with torch.autocast(dev.type, enabled=False):  # = SupMimModel.mim_targets
            got = target((x.float() * std + mean).clamp(0.0, 1.0))
        ids.append(got.cpu().reshape(p.shape[0], views, -1))
        params.append(p)
    seconds = time.perf_counter() - start
    if not ids:
        raise ConfigError("cannot build a view cache for an empty training split")
    meta.update({"format": FORMAT, "version": VERSION, "views": views,
                 "view_seed": cfg.train.seed, "tokens": int(ids[0].shape[-1]),
                 "codebook_size": int(target.out_dim),
                 "precision": "bf16" if uses_bf16(cfg.mim.tokenizer_precision, dev) else "fp32",
                 "device": str(dev), "build_seconds": round(seconds, 3)})
    if limit is not None:
        meta["images"] = n  # a partial cache never matches a run
    indices = torch.from_numpy(_train_indices(data)[:n].copy())
    path = ViewCache(torch.cat(params), torch.cat(ids), indices, meta).save(out)
    size = path.stat().st_size
    return {"path": str(path), "images": n, "views": views, "tokens": meta["tokens"],
            "seconds": seconds, "seconds_per_view": seconds / (n * views), "bytes": size,
            "bytes_per_image": size / n, "precision": meta["precision"], "device": str(dev)}


def load_for_run(cfg: RunConfig, data: RunData, device: torch.device) -> ViewCache:
    """The run's view cache (``mim.token_cache``) on ``device``; ConfigError in one line when
    it was built for other data, augmentation or model grid, or (MIM on) another tokenizer
    or precision. With MIM off (a baseline arm) only the views are loaded, to replay."""
    folder = str(cfg.mim.token_cache)
    cache = ViewCache.load(folder, seed=cfg.train.seed)
    mim = cfg.mim.enabled
    ours = run_identity(cfg, data, (cfg.mim.tokenizer or "") if mim else None)
    if mim:  # the ids a live step would compute (build_view_cache records the same)
        ours["precision"] = "bf16" if uses_bf16(cfg.mim.tokenizer_precision, device) else "fp32"
    differ = [key for key in CHECKED if key in ours and cache.meta.get(key) != ours[key]]
    if cache.meta.get("format") != FORMAT or cache.meta.get("version") != VERSION:
        differ.insert(0, "format")
    if differ:
        key = differ[0]
        what = "file format" if key == "format" else CHECKED[key]
        detail = "" if key in ("train_indices", "tokenizer", "format") else \
            f" ({json.dumps(ours[key])} here, {json.dumps(cache.meta.get(key))} in the cache)"
        more = f" and {len(differ) - 1} more" if len(differ) > 1 else ""
        raise ConfigError(
            f"mim.token_cache '{folder}' was built for a different {what}{detail}{more}; rebuild it "
            f"for this run: `supmim tokenizer cache --data {cfg.data.data} --tokenizer "
            f"{cfg.mim.tokenizer} --views {cache.views} --out {folder}` with this run's "
            "--preset/--config/--set")
    return cache.to(device) if mim else cache.params_only().to(device)
