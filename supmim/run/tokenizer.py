"""Tokenizers for a run's data: pick the downsampling factor that matches the ViT patch grid, build
the datasets the tokenizer trains on, train it (``supmim tokenizer train``), measure any
tokenizer on a run's data (``supmim tokenizer eval``), and import public VQGAN checkpoints
(``supmim tokenizer import``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchvision import transforms as T

from supmim.config import RunConfig
from supmim.data import ImageDataset, labels_of
from supmim.data.splits import resolve_config_data
from supmim.data.splits import split_indices
from supmim.errors import ConfigError
from supmim.targets.tokenizers.train import (TokenizerTrainConfig, evaluate_tokenizer,
                                            train_tokenizer)
from supmim.targets.tokenizers.kinds import load_tokenizer
from supmim.targets.tokenizers.small_vq import TokenizerConfig

if TYPE_CHECKING:
    from supmim.run.rundir import RunDir

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
    src = resolve_config_data(d)
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


def tokenizer_recipe(cfg: RunConfig, *, steps: int = 4000, factor: int | None = None,
                     codebook_size: int = 512, batch_size: int = 32, n_train: int | None = None,
                     train_overrides: dict[str, Any] | None = None,
                     **model_overrides: Any) -> tuple[TokenizerConfig, TokenizerTrainConfig]:
    """The model and optimisation configs of the tokenizer trained for a run (``n_train``:
    training images, when fewer than ``batch_size``)."""
    factor, size = grid_plan(cfg, factor)
    model_cfg = TokenizerConfig(in_chans=cfg.model.in_chans, factor=factor,
                                codebook_size=codebook_size, img_size=size, **model_overrides)
    train_cfg = TokenizerTrainConfig(steps=steps, batch_size=min(batch_size, n_train or batch_size),
                                     seed=cfg.train.seed, device=cfg.train.device,
                                     **(train_overrides or {}))
    return model_cfg, train_cfg


def train_tokenizer_for_run(cfg: RunConfig, out_dir: str | Path, *, steps: int = 4000,
                            factor: int | None = None, codebook_size: int = 512,
                            batch_size: int = 32, progress: bool = True,
                            train_overrides: dict[str, Any] | None = None,
                            **model_overrides: Any) -> dict[str, Any]:
    """Train a VQ tokenizer on a run's training images; returns its validation summary.

    ``train_overrides``: extra :class:`TokenizerTrainConfig` fields (e.g. ``lr``,
    ``disc_weight``); ``model_overrides``: extra :class:`TokenizerConfig` fields."""
    _, size = grid_plan(cfg, factor)
    train, val = tokenizer_datasets(cfg, size)
    model_cfg, train_cfg = tokenizer_recipe(cfg, steps=steps, factor=factor,
                                            codebook_size=codebook_size, batch_size=batch_size,
                                            n_train=len(train), train_overrides=train_overrides,
                                            **model_overrides)
    return train_tokenizer(model_cfg, train_cfg, train, val, out_dir, progress=progress,
                           num_workers=cfg.data.num_workers)


def evaluate_tokenizer_for_run(cfg: RunConfig, tokenizer: str | Path, *,
                               split: str = "val", max_batches: int | None = None,
                               batch_size: int = 64) -> dict[str, Any]:
    """PSNR, codebook usage and perplexity of any saved tokenizer on a run's images, seen as
    the MIM target sees them: resized so the token grid equals the ViT's patch grid.

    ``split``: "val" (the run's validation split, else test), "test" or "train" (no flip)."""
    from supmim.device import resolve_device

    tok = load_tokenizer(tokenizer)
    if tok.in_chans != cfg.model.in_chans:
        raise ConfigError(f"the tokenizer takes {tok.in_chans}-channel images, the config's "
                          f"model {cfg.model.in_chans}: pass the matching --preset")
    size = (cfg.model.img_size // cfg.model.patch_size) * tok.factor
    train, val = tokenizer_datasets(cfg, size)
    eval_tf = val.transform  # type: ignore[attr-defined]
    if split == "train":
        train.transform = eval_tf  # type: ignore[attr-defined]
        data = train
    elif split == "test":
        d = cfg.data
        src = resolve_config_data(d)
        if src.test is None:
            raise ConfigError(f"'{d.data}' has no test split: use --split val")
        data = ImageDataset(src.test, eval_tf, cfg.model.in_chans)
    else:
        data = val
    device = resolve_device(cfg.train.device)
    tok.to(device)
    result: dict[str, Any] = evaluate_tokenizer(tok, data, batch_size=batch_size,
                                                max_batches=max_batches,
                                                num_workers=cfg.data.num_workers)
    result.update({"kind": tok.kind, "factor": tok.factor, "codebook_size": tok.codebook_size,
                   "image_size": size, "split": split, "images": len(data)})
    return result


def check_tokenizer(cfg: RunConfig, run: RunDir | None = None) -> None:
    """ConfigError for a VQ tokenizer that is not there. Before provisioning (``run`` given)
    "auto" and the run's own copy count as there; after it, only an existing path does."""
    mim = cfg.mim
    if not (mim.enabled and mim.target == "vq"):
        return
    if run is not None and (mim.tokenizer in (None, "auto")
                            or (run.tokenizer_dir / "tokenizer.json").is_file()):
        return
    if mim.tokenizer in (None, "auto"):
        raise ConfigError("mim.tokenizer is not provisioned: train through "
                          "supmim.training.train (or `supmim train`), which trains "
                          "--tokenizer auto before the loop starts")
    if not Path(mim.tokenizer).exists():
        raise ConfigError(f"mim.tokenizer '{mim.tokenizer}' does not exist; train one with "
                          "`supmim tokenizer train --data D --out TOK`, or pass --tokenizer "
                          "auto")
