"""Classification with the model's own head, and how its logits meet the dataset's classes.

The dataset's classes (folder names, in sorted order) are matched to the head's outputs in
this order of preference:
1. by name, when the model carries label names (``label_names`` of an export, a run's
   ``classes.json``) and every dataset class is among them;
2. by ImageNet wnid, when the head has 1000 outputs and the class names are wnids
   (``n01440764``...): timm's ImageNet-1k synset order gives the output index;
3. by integer folder name (``0`` ... ``999``, the ImageNet-V2 layout);
4. by position, when the head has exactly as many outputs as the dataset has classes and
   the model has no label names.
Only the outputs matched to the dataset's classes are used: for a subset (ImageNet-A / -R:
200 of the 1000 classes) the prediction is the argmax over those 200 logits, in the
dataset's class order; the other 800 logits are ignored. Anything else is an error that
suggests ``supmim eval linear``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from supmim.evaluation.common import EvaluationError, eval_mode
from supmim.metrics import topk_hits

_WNID = re.compile(r"^n\d{8}$")


@dataclass
class ClassMap:
    """``indices[j]`` is the head output used for dataset class ``j``."""

    indices: list[int]
    how: str  # "by name", "imagenet wnid", "integer folder names", "by position"
    num_outputs: int

    @property
    def is_subset(self) -> bool:
        return len(self.indices) < self.num_outputs

    def describe(self) -> dict:
        return {"how": self.how, "dataset_classes": len(self.indices), "head_outputs": self.num_outputs,
                "logits_used": ("the dataset's classes only (argmax over that subset)"
                                if self.is_subset else "all")}


def resolve_class_map(num_outputs: int, label_names: Sequence[str] | None,
                      classes: Sequence[str]) -> ClassMap:
    """Match dataset ``classes`` to the head's ``num_outputs`` (see the module docstring)."""
    if num_outputs <= 0:
        raise EvaluationError("the model has no classification head (it was exported with --no-head); "
                              "use `supmim eval linear` (a linear probe on frozen features) or `eval knn`")
    classes = [str(c) for c in classes]
    if label_names:
        index = {str(name): i for i, name in enumerate(label_names)}
        if all(c in index for c in classes):
            return ClassMap([index[c] for c in classes], "by name", num_outputs)
    if num_outputs == 1000 and all(_WNID.match(c) for c in classes):
        from timm.data import ImageNetInfo

        wnids = {w: i for i, w in enumerate(ImageNetInfo("imagenet-1k").label_names())}
        missing = [c for c in classes if c not in wnids]
        if missing:
            raise EvaluationError(f"class folders {missing[:3]} are not ImageNet-1k wnids; "
                                  "the 1000-class head cannot score them")
        return ClassMap([wnids[c] for c in classes], "imagenet wnid", num_outputs)
    if all(c.isdigit() for c in classes) and all(int(c) < num_outputs for c in classes):
        return ClassMap([int(c) for c in classes], "integer folder names", num_outputs)
    if len(classes) == num_outputs and not label_names:
        return ClassMap(list(range(num_outputs)), "by position", num_outputs)
    shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    raise EvaluationError(
        f"the model's head ({num_outputs} outputs"
        + (f", labels {', '.join(map(str, list(label_names)[:4]))}, ..." if label_names else "")
        + f") does not fit the dataset's {len(classes)} classes ({shown}); "
        "use `supmim eval linear` (a linear probe on frozen features) or `supmim eval knn`")


def mapped_logits(model: nn.Module, images: Tensor, class_map: ClassMap) -> Tensor:
    """images (B, C, H, W) -> logits (B, K) over the dataset's K classes, in its order."""
    logits = model(images)
    return logits[:, torch.as_tensor(class_map.indices, device=logits.device)]


def classify(model: nn.Module, loader: DataLoader, class_map: ClassMap, device: torch.device, *,
             progress: bool = True, desc: str = "classify") -> dict[str, float]:
    """Top-1 / top-5 (%) and mean cross-entropy (over the mapped logits); eval mode, no grad."""
    hits1 = hits5 = n = 0
    loss_sum = 0.0
    with eval_mode(model), torch.inference_mode():
        for images, labels, *_ in tqdm(loader, desc=desc, disable=not progress, leave=False):
            logits = mapped_logits(model, images.to(device), class_map).float()
            labels = torch.as_tensor(labels, device=logits.device)
            top1, top5 = topk_hits(logits, labels, (1, 5))
            hits1 += top1
            hits5 += top5
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            n += len(labels)
    if n == 0:
        raise EvaluationError("the split is empty: nothing to classify")
    return {"top1": 100.0 * hits1 / n, "top5": 100.0 * hits5 / n, "loss": loss_sum / n, "n": float(n)}
