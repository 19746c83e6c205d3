"""Named ablation studies of the paper, as sweeps: ``supmim sweep --study NAME``.

Each has its grid, what the paper found, and two sizes: ``cpu`` (the cifar10 preset on the
shared 5k/1k CIFAR-10 subset, short enough for a 2-core machine) and ``gpu`` (full CIFAR-10,
longer). Extra ``--grid`` / ``--set`` flags still apply on top.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

SIZES: dict[str, list[str]] = {
    "cpu": ["train.epochs=6"],
    "gpu": ["train.epochs=50", "data.num_workers=8"],
}

STUDIES: dict[str, dict[str, Any]] = {
    "decoder-depth": {
        "grid": ["mim.decoder_depth=0,1,2,4,8"],
        "set": ["mim.mode=mask_token"],  # depth 0 (a linear head) needs the [MASK] token mode
        "paper": "a 1-layer decoder was best; a deeper decoder may take over the MIM task, "
                 "leaving the encoder less to learn",
    },
    "mask-ratio-pool": {
        "grid": ["mim.mask_ratio=0.25,0.4,0.5,0.6,0.75,0.9", "model.global_pool=token,avg"],
        "set": [],
        "paper": "the best mask ratio interacts with the pooling (CLS vs GAP)",
    },
    "lambda": {
        "grid": ["mim.weight=0.1,0.3,1,3"],
        "set": [],
        "paper": "the loss weight lambda is ablated; equal weights (lambda = 1) is the default",
    },
    "loss-target": {
        "grid": [],
        "arms": ["mim.token_loss=hard", "mim.label_smoothing=0.1",
                 "mim.token_loss=soft;mim.soft_temperature=0.03",
                 "mim.token_loss=soft;mim.soft_temperature=0.01",
                 "mim.target=pixel", "mim.target=hog"],
        "set": [],
        "paper": "discrete VQ-token targets with a hard token cross-entropy; the issue asks "
                 "for label-smoothed and codebook-distance soft targets and pixel / HOG "
                 "regression as the alternatives",
    },
    "passes": {
        "grid": ["mim.passes=1,2"],
        "set": [],
        "paper": "the paper's design is two passes (the classifier on the clean image); "
                 "SupMAE classifies the masked image in one pass",
    },
    "mode-masking": {
        "grid": ["mim.mode=drop,mask_token", "mim.masking=random,block"],
        "set": [],
        "paper": "BEiT uses a [MASK] token with block masking, MAE drops random patches; "
                 "both forms are compared here",
    },
}


# Two-stage study: pre-train on one dataset (``--pretrain-data``), fine-tune on ``--data``
# from the pre-trained encoder (a new head), with MIM on or off in each stage. Arms are named
# by stage: "pre=sup,ft=mim" etc.; "pre=none" arms train from scratch on --data.
STAGE_ARMS: dict[str, tuple[bool | None, bool]] = {
    "pre=none,ft=mim": (None, True),
    "pre=sup,ft=sup": (False, False),
    "pre=sup,ft=mim": (False, True),
    "pre=mim,ft=sup": (True, False),
    "pre=mim,ft=mim": (True, True),
}
STAGES_PAPER = ("the paper ablates MIM in pre-training only, fine-tuning only and both "
                "(ImageNet-21k pre-training, ImageNet-1k fine-tuning)")
STUDIES["stages"] = {"grid": [], "set": [], "stages": True, "paper": STAGES_PAPER}


def study(name: str) -> dict[str, Any]:
    from supmim.errors import ConfigError
    if name not in STUDIES:
        raise ConfigError(f"unknown study '{name}'; choose one of {', '.join(STUDIES)}")
    return STUDIES[name]


def run_stage_study(cfg: Any, pretrain_data: str, out_dir: str | Path, seeds: list[int], *,
                    knn: bool = True, progress: bool = True, parallel: int = 1,
                    report_only: bool = False, launcher: Any = None) -> dict[str, Any]:
    """Stage 1: a supervised and a MIM run on ``pretrain_data`` (``OUT/pretrain``). Stage 2:
    the :data:`STAGE_ARMS` on ``cfg``'s data, each starting from the stage-1 run of its kind
    and seed (``train.init_from``), plus the from-scratch baseline; deltas are to the
    baseline (no pre-training, no MIM). Reuses finished runs like any sweep. With a
    ``launcher`` that does not wait, stage 2 is submitted by a later call once stage 1 has
    finished; stage-1 failures stop before stage 2."""
    from supmim.config import set_key
    from supmim.experiments.sweep import sweep
    out = Path(out_dir)
    pre_cfg = copy.deepcopy(cfg)
    set_key(pre_cfg, "data.data", pretrain_data)
    set_key(pre_cfg, "train.init_from", None)
    pre = sweep(pre_cfg, out / "pretrain", {"mim.enabled": [False, True]}, seeds,
                baseline=False, knn=False, progress=progress, parallel=parallel,
                report_only=report_only, launcher=launcher)
    if pre.get("submitted") or pre.get("failed_jobs"):
        return pre
    pre_dirs = {r["values"]["mim.enabled"]: out / "pretrain" / r["arm"] for r in pre["arms"]}
    arms = []
    for name, (pre_mim, ft_mim) in STAGE_ARMS.items():
        values: dict[str, Any] = {"name": name, "mim.enabled": ft_mim}
        if pre_mim is not None:
            values["train.init_from"] = str(pre_dirs[pre_mim] / "seed{seed}")
        arms.append(values)
    return sweep(cfg, out, {}, seeds, arms=arms, knn=knn, progress=progress, parallel=parallel,
                 report_only=report_only, launcher=launcher)
