"""``eval classify``: top-1 / top-5 of the model's own head on one split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from supmim.evaluation.classify import classify, resolve_class_map
from supmim.evaluation.common import Timer, make_result
from supmim.evaluation.datasets import eval_transform
from supmim.evaluation.features import make_loader
from supmim.evaluation.loading import LoadedModel
from supmim.evaluation.tasks._common import TaskOptions, get_split, prepare


@dataclass(kw_only=True)
class ClassifyOptions(TaskOptions):
    """Options of :func:`run_classify`."""

    split: str = "test"


def run_classify(model: LoadedModel, data: str, options: ClassifyOptions, *,
                 device: torch.device | str) -> dict[str, Any]:
    """Score split ``options.split`` of ``data`` with the model's head (classes matched by
    :func:`resolve_class_map`)."""
    options.check()
    timer = Timer()
    device = prepare(model, device)
    split = get_split(data, options.split, options)
    class_map = resolve_class_map(model.num_classes, model.label_names, split.classes)
    dataset = split.with_transform(eval_transform(model.data_config), model.in_chans)
    scores = classify(model.model, make_loader(dataset, options.batch_size, options.workers, device),
                      class_map, device, progress=options.progress)
    return make_result(
        "classify", f"classify | {split.tag}/{split.split}", model=model.describe(),
        data={"spec": data, "tag": split.tag, **split.describe()},
        protocol={"head": "the model's own", "class_map": class_map.describe(),
                  "preprocessing": {k: v for k, v in model.data_config.items()}},
        metrics={"top-1": scores["top1"], "top-5": scores["top5"]},
        details={"loss": scores["loss"], "n": scores["n"]}, seconds=timer.seconds())


def result_tag(result: dict[str, Any], options: ClassifyOptions) -> str:
    """``<data>-<split>``, the ``<tag>`` of the default ``MODEL/eval/classify-<tag>.json``."""
    return f"{result['data']['tag']}-{result['data']['split']}"
