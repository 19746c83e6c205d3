"""Tokenizers for a run: pick the downsampling factor that matches the ViT patch grid, build
the datasets the tokenizer trains on, and train it (``supmim tokenizer train``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision import transforms as T

from supmim.config import RunConfig
from supmim.data import ImageDataset, labels_of, resolve_data
from supmim.engine.trainer import split_indices
from supmim.errors import ConfigError
from supmim.targets.tokenizer_train import TokenizerTrainConfig, train_tokenizer
from supmim.targets.vq import TokenizerConfig

FACTORS = (2, 4, 8, 16)


def grid_plan(cfg: RunConfig, factor: int | None = None) -> tuple[int, int]:
    """``(factor, tokenizer_img_size)`` such that the token grid equals the patch grid.

    By default the factor equals the patch size (the tokenizer sees the image at its own
    size); for other patch sizes (e.g. 14) the largest factor in {2, 4, 8, 16} not above
    the patch size is used and the image is resized to ``grid * factor`` (ViT-B/14 at 224
    -> 16x16 grid -> an f16 tokenizer at 256, as in the paper's setting).
    """
    grid = cfg.model.img_size // cfg.model.patch_size
    if factor is None:
        fits = [f for f in FACTORS if f <= cfg.model.patch_size]
        factor = cfg.model.patch_size if cfg.model.patch_size in FACTORS else \
            (max(fits) if fits else FACTORS[0])
    if factor not in FACTORS:
        raise ConfigError(f"tokenizer factor {factor} is not supported; choose one of {FACTORS}")
    return factor, grid * factor


def tokenizer_datasets(cfg: RunConfig, size: int) -> tuple[ImageDataset, ImageDataset]:
    """The run's training images (and its val split, else the test split) as [0, 1] tensors
    at ``size`` x ``size``; no augmentation beyond a horizontal flip for training."""
    d, chans = cfg.data, cfg.model.in_chans
    src = resolve_data(d.data, root=d.root, download=d.download, cache_dir=d.cache_dir)
    train_idx, val_idx = split_indices(cfg, labels_of(src.train))
    resize = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
              T.CenterCrop(size)]
    train_tf = T.Compose(resize + [T.RandomHorizontalFlip(d.hflip), T.ToTensor()])
    eval_tf = T.Compose(resize + [T.ToTensor()])
    train = ImageDataset(src.train, train_tf, chans, indices=train_idx)
    if val_idx is not None:
        val = ImageDataset(src.train, eval_tf, chans, indices=val_idx)
    elif src.test is not None:
        val = ImageDataset(src.test, eval_tf, chans)
    else:
        raise ConfigError(f"'{d.data}' has no test split; set data.val_fraction > 0")
    return train, val


def train_tokenizer_for_run(cfg: RunConfig, out_dir: str | Path, *, steps: int = 4000,
                            factor: int | None = None, codebook_size: int = 512,
                            batch_size: int = 32, progress: bool = True,
                            **model_overrides: Any) -> dict[str, Any]:
    """Train a VQ tokenizer on a run's training images; returns its validation summary."""
    factor, size = grid_plan(cfg, factor)
    train, val = tokenizer_datasets(cfg, size)
    model_cfg = TokenizerConfig(in_chans=cfg.model.in_chans, factor=factor,
                                codebook_size=codebook_size, img_size=size, **model_overrides)
    train_cfg = TokenizerTrainConfig(steps=steps, batch_size=min(batch_size, len(train)),
                                     seed=cfg.train.seed, device=cfg.train.device)
    return train_tokenizer(model_cfg, train_cfg, train, val, out_dir, progress=progress,
                           num_workers=cfg.data.num_workers)
