"""Named ablation studies of the paper, as sweeps: ``supmim sweep --study NAME``.

Each has its grid, what the paper found, and two sizes: ``cpu`` (the cifar10 preset on the
shared 5k/1k CIFAR-10 subset, short enough for a 2-core machine) and ``gpu`` (full CIFAR-10,
longer). Extra ``--grid`` / ``--set`` flags still apply on top.
"""

from __future__ import annotations

from typing import Any

SIZES: dict[str, list[str]] = {
    "cpu": ["train.epochs=6"],
    "gpu": ["train.epochs=50", "data.num_workers=8"],
}

STUDIES: dict[str, dict[str, Any]] = {
    "decoder-depth": {
        "grid": ["mim.decoder_depth=0,1,2,4,8"],
        "set": ["mim.mode=mask_token"],  # depth 0 (a linear head) needs the [MASK] token mode
        "paper": "a 1-layer decoder was best; deeper decoders take over the MIM task and the "
                 "encoder gains less",
    },
    "mask-ratio-pool": {
        "grid": ["mim.mask_ratio=0.25,0.4,0.5,0.6,0.75,0.9", "model.global_pool=token,avg"],
        "set": [],
        "paper": "a high mask ratio works for both; the best ratio depends on CLS vs GAP pooling",
    },
    "lambda": {
        "grid": ["mim.weight=0.1,0.3,1,3"],
        "set": [],
        "paper": "lambda = 1 (equal weights) worked well; very small lambda loses the gain",
    },
    "loss-target": {
        "grid": ["mim.target=vq,pixel,hog", "mim.label_smoothing=0,0.1"],
        "set": [],
        "paper": "discrete VQ-token targets beat pixel regression; hard token CE was used",
    },
    "passes": {
        "grid": ["mim.passes=1,2"],
        "set": [],
        "paper": "two passes (the classifier on the clean image) beat one pass (SupMAE-style, "
                 "the classifier on the masked image)",
    },
    "mode-masking": {
        "grid": ["mim.mode=drop,mask_token", "mim.masking=random,block"],
        "set": [],
        "paper": "the paper follows BEiT-style masking; both forms are compared here",
    },
}


def study(name: str) -> dict[str, Any]:
    from supmim.errors import ConfigError
    if name not in STUDIES:
        raise ConfigError(f"unknown study '{name}'; choose one of {', '.join(STUDIES)}")
    return STUDIES[name]
