"""Per-epoch and final evaluation of a classifier on a (sharded) loader."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from supmim.engine import dist
from supmim.metrics import topk_hits


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             dtype: torch.dtype | None = None) -> dict[str, float]:
    """Top-1 / top-5 (%) and mean CE of a classifier over every process's shard; leaves
    the model's mode as it was.

    Batches are ``(images (B,C,H,W), labels (B,), ...)``; samples labelled -1 (unreadable
    files, see ``ImageDataset``) are left out."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # n, top1 hits, top5 hits, loss sum
    for images, labels, *_ in loader:
        keep = labels >= 0
        if not bool(keep.all()):
            images, labels = images[keep], labels[keep]
        if len(labels) == 0:
            continue
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images)
        loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        top1, top5 = topk_hits(logits, labels, (1, 5))
        totals += torch.tensor([len(labels), top1, top5, float(loss)], dtype=torch.float64)
    model.train(was_training)
    n, top1, top5, loss = dist.all_reduce_sum(totals.to(device)).tolist()
    n = max(n, 1.0)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "n": int(n)}


def evaluate_encoder(model: nn.Module, loader: DataLoader, device: torch.device,
                     dtype: torch.dtype | None = None, *, fsdp: bool = False) -> dict[str, float]:
    """:func:`evaluate` of ``model.encoder`` (a ``SupMimModel``'s). Under FSDP the root's own
    parameters (patch embedding, head) are gathered first, as the encoder is then called
    outside the root's forward."""
    if not fsdp:
        return evaluate(model.encoder, loader, device, dtype)
    model.unshard()
    try:
        return evaluate(model.encoder, loader, device, dtype)
    finally:
        model.reshard()
