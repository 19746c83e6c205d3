"""Segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel accuracy."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

IGNORE_INDEX = 255


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> Tensor:
    """pred, target: integer maps of one shape -> (K, K) int64 counts, rows = truth, cols = prediction.

    Pixels whose target is ``ignore_index`` (or outside [0, K)) are not counted.
    """
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    flat = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(cm: np.ndarray | Tensor) -> dict[str, object]:
    """mIoU, per-class IoU, pixel accuracy and mean class accuracy (%), from (K, K) counts.

    A class that is neither in the ground truth nor predicted has no IoU (None) and is left
    out of the mean, as in mmsegmentation's nan-mean.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    gt, pr = cm.sum(axis=1), cm.sum(axis=0)
    union = gt + pr - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    total = cm.sum()
    return {"mIoU": 100.0 * float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
            "pixel_acc": 100.0 * float(tp.sum() / total) if total else 0.0,
            "mean_acc": 100.0 * float(np.nanmean(acc)) if np.isfinite(acc).any() else 0.0,
            "per_class_iou": [None if np.isnan(v) else 100.0 * float(v) for v in iou]}


def accumulate(cm: Tensor, logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Add one image: logits (K, h, w) upsampled bilinearly to target (H, W), then argmax."""
    k = logits.shape[0]
    up = torch.nn.functional.interpolate(logits[None].float(), size=tuple(target.shape),
                                         mode="bilinear", align_corners=False)[0]
    return cm + confusion_matrix(up.argmax(dim=0).cpu(), target.cpu(), k, ignore_index)
