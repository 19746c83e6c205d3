"""Train a segmentation head on an encoder (frozen or fine-tuned) and measure it.

Protocol (fixed, so encoders compare):
- images are resized (not cropped) to ``size`` (H, W), a multiple of the patch size; the
  position embedding is resampled for that grid (timm dynamic size); no augmentation;
- the head trains for ``epochs`` passes over the training split, batch ``batch_size``, AdamW
  (lr, weight decay), 5% linear warm-up then cosine, cross-entropy with ignore index 255
  against the label maps resized (nearest) to the input size, logits upsampled bilinearly;
- frozen: the encoder runs once per image in eval mode without gradients and its maps are
  kept (float16) when they fit in ``cache_gb``; fine-tuned: the encoder trains too
  (train mode, lr x ``encoder_lr_scale``);
- evaluation: logits upsampled bilinearly to the label resolution, argmax, confusion
  matrix over the test split; mIoU, per-class IoU, pixel accuracy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from supmim.evaluation.common import EvaluationError, Timer, eval_mode
from supmim.evaluation.segmentation.data import SegSplit, SegTensors, collate
from supmim.evaluation.segmentation.heads import (any_input_size, build_head, default_levels,
                                                  feature_maps, patch_size_of)
from supmim.evaluation.segmentation.metrics import IGNORE_INDEX, accumulate, scores_from_confusion


@dataclass
class SegProtocol:
    size: tuple[int, int]
    head: str = "linear"
    finetune: bool = False
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    encoder_lr_scale: float = 0.1
    levels: list[int] | None = None
    width: int = 64
    seed: int = 0
    cache_gb: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)


def seg_loss(logits: Tensor, masks: list[Tensor]) -> Tensor:
    """logits (B, K, h, w), masks B x (H_i, W_i) -> mean CE over labelled pixels."""
    if all(m.shape == masks[0].shape for m in masks):
        target = torch.stack(masks).to(logits.device)
        up = F.interpolate(logits, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
        return F.cross_entropy(up, target, ignore_index=IGNORE_INDEX)
    total, count = logits.new_zeros(()), 0
    for lg, m in zip(logits, masks):  # label maps of different sizes (ADE20K)
        m = m.to(logits.device)
        up = F.interpolate(lg[None], size=tuple(m.shape), mode="bilinear", align_corners=False)
        total = total + F.cross_entropy(up, m[None], ignore_index=IGNORE_INDEX, reduction="sum")
        count += int((m != IGNORE_INDEX).sum())
    return total / max(count, 1)


def _schedule(total_steps: int) -> Any:
    warmup = max(1, int(0.05 * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor


class _Batches:
    """Training batches of (maps, masks): from a frozen-feature cache, or by running the encoder."""

    def __init__(self, model: nn.Module, dataset: SegTensors, levels: list[int], proto: SegProtocol,
                 device: torch.device, workers: int, progress: bool) -> None:
        self.model, self.dataset, self.levels, self.proto = model, dataset, levels, proto
        self.device, self.workers, self.progress = device, workers, progress
        self.cache: list[Tensor] | None = None
        self.masks: list[Tensor] | None = None

    def loader(self, shuffle: bool, generator: torch.Generator | None = None) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.proto.batch_size, shuffle=shuffle,
                          generator=generator, num_workers=self.workers, collate_fn=collate)

    def fill_cache(self, map_bytes: int) -> bool:
        """Run the frozen encoder once over the split if the maps fit in ``cache_gb``."""
        mask_bytes = self.dataset[0][1].numel()  # kept as uint8
        if len(self.dataset) * (map_bytes + mask_bytes) > self.proto.cache_gb * 2**30:
            return False
        maps, masks = compute_maps(self.model, self.loader(False), self.levels, self.device,
                                   self.progress, "encode train")
        self.cache = maps
        self.masks = [m.to(torch.uint8) if int(m.max()) <= 255 else m for m in masks]
        return True

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
        if self.cache is not None:
            order = torch.randperm(len(self.dataset), generator=generator)
            for start in range(0, len(order), self.proto.batch_size):
                idx = order[start:start + self.proto.batch_size]
                maps = [level[idx].to(self.device).float() for level in self.cache]
                yield maps, [self.masks[int(i)].long() for i in idx]
            return
        for images, masks, _ in self.loader(True, generator):
            images = images.to(self.device)
            if self.proto.finetune:
                yield feature_maps(self.model, images, self.levels), masks
            else:
                with torch.no_grad():
                    yield feature_maps(self.model, images, self.levels), masks


def compute_maps(model: nn.Module, loader: DataLoader, levels: list[int], device: torch.device,
                 progress: bool, desc: str) -> tuple[list[Tensor], list[Tensor]]:
    """Frozen maps of a whole split: per level (N, D, h, w) float16, and the N label maps."""
    per_level: list[list[Tensor]] = [[] for _ in levels]
    masks: list[Tensor] = []
    # no_grad rather than inference_mode: the cached maps feed a head that trains
    with eval_mode(model), torch.no_grad():
        for images, batch_masks, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
            for store, m in zip(per_level, feature_maps(model, images.to(device), levels)):
                store.append(m.to(torch.float16).cpu())
            masks += batch_masks
    return [torch.cat(store) for store in per_level], masks


def run_segmentation(model: nn.Module, train: SegSplit, test: SegSplit, proto: SegProtocol, *,
                     mean: tuple[float, ...], std: tuple[float, ...], in_chans: int = 3,
                     interpolation: str = "bilinear", device: torch.device = torch.device("cpu"),
                     workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train the head (and, with ``proto.finetune``, the encoder) on ``train``; score ``test``.

    Returns the scores (mIoU, pixel_acc, mean_acc, per_class_iou), the per-epoch training
    loss, the levels used and the timings. A frozen encoder is never modified.
    """
    if train.classes != test.classes:
        raise EvaluationError(f"train and test splits have different classes: {train.classes} vs {test.classes}")
    ph, pw = patch_size_of(model)
    h, w = proto.size
    if h % ph or w % pw or h < ph or w < pw:
        raise EvaluationError(f"--size {h} {w} is not a multiple of the patch size {ph}x{pw}; "
                              f"use e.g. {max(ph, h // ph * ph)} {max(pw, w // pw * pw)}")
    levels = proto.levels or default_levels(model, proto.head)
    model.to(device)
    timer = Timer()
    # training labels at the input size (nearest), as images are resized; scoring at full size
    train_ds = SegTensors(train, proto.size, mean, std, in_chans, interpolation, label_size=proto.size)
    test_ds = SegTensors(test, proto.size, mean, std, in_chans, interpolation)
    with any_input_size(model):
        with eval_mode(model), torch.inference_mode():  # one image tells the map sizes
            probe = feature_maps(model, train_ds[0][0][None].to(device), levels)
        channels = [int(m.shape[1]) for m in probe]
        map_bytes = sum(int(m[0].numel()) for m in probe) * 2
        torch.manual_seed(proto.seed)
        head = build_head(proto.head, channels, train.num_classes, proto.width).to(device)
        batches = _Batches(model, train_ds, levels, proto, device, workers, progress)
        cached = not proto.finetune and batches.fill_cache(map_bytes)
        encode_seconds = timer.seconds()
        groups = [{"params": head.parameters(), "lr": proto.lr}]
        if proto.finetune:
            groups.append({"params": [p for p in model.parameters() if p.requires_grad],
                           "lr": proto.lr * proto.encoder_lr_scale})
        optimizer = torch.optim.AdamW(groups, lr=proto.lr, weight_decay=proto.weight_decay)
        steps_per_epoch = math.ceil(len(train_ds) / proto.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(proto.epochs * steps_per_epoch))
        generator = torch.Generator().manual_seed(proto.seed)
        losses = []
        was_training = model.training
        model.train(proto.finetune)  # frozen: eval mode throughout (no dropout / drop-path)
        head.train()
        try:
            for _ in tqdm(range(proto.epochs), desc=f"train {proto.head} head", disable=not progress,
                          leave=False):
                total, count = 0.0, 0
                for maps, masks in batches.epoch(generator):
                    loss = seg_loss(head(maps), masks)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    total, count = total + float(loss.detach()) * len(masks), count + len(masks)
                losses.append(total / max(count, 1))
        finally:
            model.train(was_training)
        train_seconds = timer.seconds() - encode_seconds
        cm = torch.zeros(train.num_classes, train.num_classes, dtype=torch.int64)
        loader = DataLoader(test_ds, batch_size=proto.batch_size, num_workers=workers, collate_fn=collate)
        with eval_mode(model, head), torch.inference_mode():
            for images, masks, _ in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
                logits = head(feature_maps(model, images.to(device), levels))
                for lg, m in zip(logits, masks):
                    cm = accumulate(cm, lg, m)
    scores = scores_from_confusion(cm.numpy())
    return {**scores, "train_loss": losses, "levels": levels, "feature_grid": list(probe[-1].shape[-2:]),
            "cached_features": cached, "confusion": cm.numpy().tolist(),
            "seconds": {"encode": encode_seconds, "train": round(train_seconds, 3),
                        "total": timer.seconds()},
            "protocol": {k: v for k, v in asdict(proto).items() if k != "extra"}}
