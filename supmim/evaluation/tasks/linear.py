"""``eval linear``: a linear probe (L-BFGS logistic regression) on frozen, L2-normalised
features; weight decay chosen on a validation split of train."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from supmim.evaluation.common import Timer, make_result
from supmim.evaluation.linear_probe import WD_GRID, fit_linear_probe
from supmim.evaluation.loading import LoadedModel
from supmim.evaluation.tasks._common import FeatureOptions, features, file_tag, get_split, pool_note, prepare


@dataclass(kw_only=True)
class LinearOptions(FeatureOptions):
    """Options of :func:`run_linear`."""

    train_split: str = "train"
    test_split: str = "test"
    wd: Sequence[float] = WD_GRID  # weight-decay grid, chosen on a validation split of train
    val_fraction: float = 0.2  # share of train held out to choose wd
    seed: int = 0  # seed of the validation split


def run_linear(model: LoadedModel, data: str, options: LinearOptions, *,
               device: torch.device | str) -> dict[str, Any]:
    """Fit the probe on ``options.train_split`` of ``data``; evaluate once on ``options.test_split``."""
    options.check()
    timer = Timer()
    device = prepare(model, device)
    train = get_split(data, options.train_split, options)
    test = get_split(data, options.test_split, options)
    train_x, train_y = features(model, train, device, options)
    test_x, test_y = features(model, test, device, options)
    probe = fit_linear_probe(train_x, train_y, len(train.classes), wd_grid=options.wd,
                             val_fraction=options.val_fraction, seed=options.seed)
    scores = probe.evaluate(test_x, test_y)
    return make_result(
        "linear", f"linear probe | {train.tag}{pool_note(options.pool)}", model=model.describe(),
        data={"spec": data, "tag": train.tag, "train": train.describe(), "test": test.describe()},
        protocol={"features": f"frozen, pool={options.pool}, L2-normalised",
                  "classifier": "multinomial logistic regression, full-batch L-BFGS",
                  "wd_grid": list(options.wd), "val_fraction": options.val_fraction,
                  "split_seed": options.seed, "chosen_wd": probe.wd},
        metrics={"top-1": scores["top1"], "top-5": scores["top5"]},
        details={"val_top1_by_wd": {str(k): v for k, v in probe.val_top1.items()},
                 "test_loss": scores["loss"]},
        seconds=timer.seconds())


def result_tag(result: dict[str, Any], options: LinearOptions) -> str:
    """``<data>[-<pool>]``, the ``<tag>`` of the default ``MODEL/eval/linear-<tag>.json``."""
    return file_tag(result["data"]["tag"], options.pool)
