"""``eval segment``: a segmentation head (linear or multi-level) trained on the patch
features, frozen or fine-tuned; mIoU, pixel accuracy, per-class IoU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from supmim.data import channel_stats
from supmim.evaluation.common import EvaluationError, Timer, make_result
from supmim.evaluation.loading import LoadedModel
from supmim.evaluation.segmentation.data import load_seg_split
from supmim.evaluation.segmentation.train import SegProtocol, run_segmentation
from supmim.evaluation.tasks._common import TaskOptions, check_positive, prepare


@dataclass(kw_only=True)
class SegmentOptions(TaskOptions):
    """Options of :func:`run_segment` (``batch_size`` is unused here but must be > 0, as
    ``--batch-size`` always had to be; the head trains with ``seg_batch_size``)."""

    train_split: str = "train"
    test_split: str = "test"
    head: str = "linear"  # linear or multilevel
    finetune: bool = False  # train the encoder too
    size: Sequence[int] | None = None  # H or (H, W); default: the model's input size
    epochs: int = 20
    seg_batch_size: int = 16  # head-training batch
    lr: float = 1e-3
    weight_decay: float = 1e-4
    encoder_lr_scale: float = 0.1  # finetune: encoder lr = lr x this
    levels: Sequence[int] | None = None  # block indices to read (default: by head)
    width: int = 64  # multilevel head width (channels)
    seed: int = 0
    ignore_id: Sequence[int] | None = None  # label ids to ignore (besides the layout's own)
    num_classes: int | None = None  # ADE-style folders: number of classes (default: scanned)
    reduce_zero_label: bool | None = None  # ADE-style folders: label 0 ignored, 1.. become 0..
    cache_gb: float = 2.0  # frozen: keep encoder maps in memory up to this

    def check(self) -> None:
        for name in ("epochs", "lr", "batch_size"):
            check_positive(f"--{name.replace('_', '-')}", getattr(self, name))


def run_segment(model: LoadedModel, data: str, options: SegmentOptions, *,
                device: torch.device | str) -> dict[str, Any]:
    """Train the head on ``options.train_split`` of ``data``; score ``options.test_split``."""
    options.check()
    timer = Timer()
    device = prepare(model, device)
    kw = dict(ignore_ids=options.ignore_id, num_classes=options.num_classes,
              reduce_zero_label=options.reduce_zero_label, cache_dir=options.cache_dir)
    train = load_seg_split(data, options.train_split, **kw)
    test = load_seg_split(data, options.test_split, **kw)
    proto = _protocol(options, _size(options, model))
    mean, std = channel_stats(model.data_config["mean"], model.data_config["std"], model.in_chans)
    out = run_segmentation(model.model, train, test, proto, mean=mean, std=std, in_chans=model.in_chans,
                           interpolation=model.data_config.get("interpolation", "bilinear"),
                           device=device, workers=options.workers, progress=options.progress)
    mode = "fine-tuned" if options.finetune else "frozen"
    return make_result(
        "segment", f"segment | {train.tag} | {options.head} head, {mode}", model=model.describe(),
        data={"spec": data, "tag": train.tag, "train": train.describe(), "test": test.describe()},
        protocol={**out["protocol"], "levels": out["levels"], "feature_grid": out["feature_grid"],
                  "input": f"images resized to {proto.size[0]}x{proto.size[1]}, no augmentation",
                  "evaluation": "logits upsampled bilinearly to the label resolution; ignore index 255"},
        metrics={"mIoU": out["mIoU"], "pixel acc": out["pixel_acc"], "mean class acc": out["mean_acc"]},
        details={"per_class_iou": dict(zip(train.classes, out["per_class_iou"])),
                 "train_loss": out["train_loss"], "confusion": out["confusion"],
                 "cached_features": out["cached_features"], "seconds": out["seconds"]},
        seconds=timer.seconds())


def _size(options: SegmentOptions, model: LoadedModel) -> tuple[int, int]:
    """The input (H, W): ``options.size`` or the model's own input size."""
    if not options.size:
        return int(model.data_config["input_size"][1]), int(model.data_config["input_size"][2])
    if len(options.size) > 2:
        raise EvaluationError("--size takes H or H W")
    return (options.size[0], options.size[-1])


def _protocol(options: SegmentOptions, size: tuple[int, int]) -> SegProtocol:
    """The training protocol of the head."""
    return SegProtocol(size=size, head=options.head, finetune=options.finetune, epochs=options.epochs,
                       batch_size=options.seg_batch_size, lr=options.lr, weight_decay=options.weight_decay,
                       encoder_lr_scale=options.encoder_lr_scale,
                       levels=list(options.levels) if options.levels is not None else None,
                       width=options.width, seed=options.seed, cache_gb=options.cache_gb)


def result_tag(result: dict[str, Any], options: SegmentOptions) -> str:
    """``<data>-<head>[-ft]``, the ``<tag>`` of the default ``MODEL/eval/segment-<tag>.json``."""
    return f"{result['data']['tag']}-{options.head}{'-ft' if options.finetune else ''}"
