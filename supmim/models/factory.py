"""The one place a run's configuration becomes a model: :func:`build_model`.

Training, resuming, export, evaluation and visualisation all rebuild models through it (via
:class:`~supmim.run.RunDir`), so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from supmim.config import RunConfig
from supmim.models.encoder import create_vit
from supmim.models.joint import SupMimModel
from supmim.seeds import decoder_init_seed, seed_all


def model_arguments(cfg: RunConfig) -> dict[str, Any]:
    """:class:`SupMimModel`'s keyword arguments for ``cfg`` (all but encoder, statistics and
    target)."""
    m, t = cfg.mim, cfg.train
    mixing = t.mixup > 0 or t.cutmix > 0  # mixup's soft labels carry the smoothing
    return {"weight": m.weight, "passes": m.passes, "mask_token": m.mode == "mask_token",
            "decoder_dim": m.decoder_dim, "decoder_depth": m.decoder_depth,
            "decoder_heads": m.decoder_heads,
            "label_smoothing": 0.0 if mixing else t.label_smoothing,
            "init_seed": decoder_init_seed(t.seed)}


def build_model(cfg: RunConfig, *, num_classes: int, mean: Sequence[float],
                std: Sequence[float], target: nn.Module | None = None,
                init: Callable[[VisionTransformer], Any] | None = None) -> SupMimModel:
    """The joint model of ``cfg``, freshly initialised; ``target`` only when ``mim.enabled``.

    The global RNGs are seeded with ``train.seed`` right before the encoder is built, so its
    initialisation is the same with and without MIM (building the target may draw random
    numbers). ``init`` may load weights into the encoder before the model is assembled
    (``train.init_from``)."""
    seed_all(cfg.train.seed)
    vit = create_vit(cfg.model, num_classes=num_classes)
    if init is not None:
        init(vit)
    return SupMimModel(vit, mean=mean, std=std, target=target if cfg.mim.enabled else None,
                       **model_arguments(cfg))
