"""Image transforms for training and evaluation.

The evaluation transform is timm's own ``create_transform``, so a model exported to timm
sees exactly the preprocessing we evaluated with. The training transform is built from
timm/torchvision pieces with a CIFAR-style (pad + random crop) default suited to small images.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import (
    MaybeToTensor,
    RandomResizedCropAndInterpolation,
    str_to_interp_mode,
    str_to_pil_interp,
)
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from supmim.data.datasets import to_mode
from supmim.errors import DataError

__all__ = ["CROP_MODES", "INTERPOLATIONS", "build_eval_transform", "build_train_transform", "channel_stats"]

CROP_MODES = ("pad", "rrc", "none")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def channel_stats(
    mean: Sequence[float], std: Sequence[float], in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation stats with ``in_chans`` entries.

    RGB stats become their average for greyscale input; one-channel stats are repeated
    for RGB input; matching lengths pass through.
    """
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise DataError(
            f"mean and std need 1 or 3 values each, got {len(mean)} and {len(std)}; e.g. mean=(0.5, 0.5, 0.5)"
        )
    if in_chans not in (1, 3):
        raise DataError(f"in_chans must be 1 or 3, got {in_chans}")
    if len(mean) == in_chans:
        return mean, std
    if in_chans == 1:
        return (sum(mean) / 3,), (sum(std) / 3,)
    return mean * 3, std * 3


def _check(img_size: int, mean: Sequence[float], std: Sequence[float], interpolation: str) -> None:
    if not isinstance(img_size, int) or img_size < 1:
        raise DataError(f"img_size must be a positive integer, got {img_size!r}")
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise DataError(
            f"mean/std need 1 or 3 values (one per input channel), got {len(mean)} and {len(std)}; "
            "use channel_stats(mean, std, in_chans)"
        )
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"unknown interpolation {interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")


class _ToMode:
    """Force the PIL mode, so a stray RGB image cannot become a 3-channel tensor for a 1-channel model."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return to_mode(img, self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


class _ResizeIfNeeded:
    """Resize the short side to ``size`` and centre-crop square, skipping images already that size.

    Same geometry as the eval transform at ``crop_pct=1``, so train and test see the same framing.
    """

    def __init__(self, size: int, interpolation: str) -> None:
        self.size = size
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.size == (self.size, self.size):
            return img
        img = TF.resize(img, self.size, interpolation=str_to_interp_mode(self.interpolation))
        return TF.center_crop(img, [self.size, self.size])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, interpolation={self.interpolation})"


def _auto_augment(config: str, img_size: int, mean: Sequence[float], interpolation: str) -> Callable:
    """timm's AutoAugment / RandAugment / AugMix from a config string, with timm's own hparams."""
    hparams = {
        "translate_const": int(img_size * 0.45),
        "img_mean": tuple(min(255, round(255 * m)) for m in mean),  # fill colour for geometric ops
        "interpolation": str_to_pil_interp(interpolation),
    }
    try:
        if config.startswith("rand"):
            return rand_augment_transform(config, hparams)
        if config.startswith("augmix"):
            return augment_and_mix_transform(config, {**hparams, "translate_pct": 0.3})
        return auto_augment_transform(config, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as e:
        raise DataError(
            f"cannot parse rand_augment {config!r} ({e!r}); use a timm string such as 'rand-m9-mstd0.5', "
            "'rand-m9-n2-mstd0.5-inc1', 'augmix-m5-w3' or 'original'"
        ) from e


def build_train_transform(
    img_size: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    crop: str = "pad",
    pad: int = 4,
    hflip: float = 0.5,
    rand_augment: str | None = None,
    re_prob: float = 0.0,
    interpolation: str = "bicubic",
) -> Callable[[Image.Image], torch.Tensor]:
    """Training augmentation: PIL image -> normalised float tensor ``(in_chans, img_size, img_size)``.

    Args:
        crop: ``"pad"`` resizes to ``img_size`` if needed, then reflect-pads by ``pad`` and
            random-crops back (CIFAR style); ``"rrc"`` is RandomResizedCrop with scale
            (0.08, 1) (ImageNet style); ``"none"`` only resizes.
        hflip: probability of a horizontal flip (0 disables it).
        rand_augment: a timm auto-augment string such as ``"rand-m9-mstd0.5"``; RGB only.
        re_prob: probability of timm RandomErasing (per-pixel noise, as timm's train script),
            applied after normalisation.
    """
    _check(img_size, mean, std, interpolation)
    if len(mean) != in_chans:
        raise DataError(
            f"mean/std have {len(mean)} values but in_chans is {in_chans}; use channel_stats(mean, std, in_chans)"
        )
    if crop not in CROP_MODES:
        raise DataError(f"unknown crop {crop!r}; use one of {', '.join(CROP_MODES)}")
    if rand_augment and in_chans != 3:
        raise DataError(
            f"rand_augment ({rand_augment!r}) needs RGB input (its colour ops assume 3 channels), but in_chans is "
            f"{in_chans}; drop rand_augment or use in_chans=3"
        )
    if not 0.0 <= hflip <= 1.0 or not 0.0 <= re_prob <= 1.0:
        raise DataError(f"hflip and re_prob are probabilities in [0, 1], got {hflip} and {re_prob}")

    steps: list[Callable] = [_ToMode("L" if in_chans == 1 else "RGB")]
    if crop == "pad":
        if not 0 <= pad < img_size:
            raise DataError(f"pad must be in [0, img_size) for reflect padding, got pad={pad}, img_size={img_size}")
        steps.append(_ResizeIfNeeded(img_size, interpolation))
        if pad > 0:
            steps.append(T.RandomCrop(img_size, padding=pad, padding_mode="reflect"))
    elif crop == "rrc":
        steps.append(RandomResizedCropAndInterpolation(img_size, scale=(0.08, 1.0), interpolation=interpolation))
    else:
        steps.append(_ResizeIfNeeded(img_size, interpolation))
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(p=hflip))
    if rand_augment:
        steps.append(_auto_augment(rand_augment, img_size, mean, interpolation))
    # Same tensor conversion as timm's eval pipeline.
    steps += [MaybeToTensor(), T.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))]
    if re_prob > 0:
        steps.append(RandomErasing(re_prob, mode="pixel", device="cpu"))
    return T.Compose(steps)


def build_eval_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
) -> Callable[[Image.Image], torch.Tensor]:
    """Evaluation preprocessing, exactly ``timm.data.create_transform(..., is_training=False)``.

    The channel count comes from ``len(mean)``; the caller converts images to the matching
    mode first (``ImageDataset`` does). With ``crop_pct=1`` the short side is resized to
    ``img_size`` and the centre cropped, so nothing is cut from square images.
    """
    _check(img_size, mean, std, interpolation)
    if not 0.0 < crop_pct <= 1.0:
        # timm would silently replace 0 by its 0.875 default; refuse instead.
        raise DataError(f"crop_pct must be in (0, 1], got {crop_pct}; 1.0 keeps the whole (square) image")
    return create_transform(
        input_size=(len(mean), img_size, img_size),
        is_training=False,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=crop_pct,
    )
