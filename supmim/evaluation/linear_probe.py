"""Linear probe: multinomial logistic regression on frozen, L2-normalised features.

Protocol (the same for every model, so probes compare):
1. features are the frozen encoder's pooled features, L2-normalised;
2. the objective is mean cross-entropy + (wd / 2) * ||W||^2 (the bias is not penalised),
   minimised full-batch with L-BFGS (strong-Wolfe line search) to convergence;
3. wd is chosen from a log grid by top-1 on a stratified validation split carved from the
   *training* features (``val_fraction``, seed 0); ties go to the larger wd;
4. the probe is refitted on all training features with that wd and evaluated once on test.
The test split is never used for a choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from supmim.data import stratified_split
from supmim.evaluation.common import EvaluationError
from supmim.evaluation.features import l2_normalize
from supmim.metrics import topk_hits

WD_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclass
class LinearProbe:
    """A fitted probe: logits = x_normalised @ weight.T + bias."""

    weight: Tensor  # (C, D)
    bias: Tensor  # (C,)
    wd: float
    val_top1: dict[float, float] = field(default_factory=dict)

    def logits(self, feats: np.ndarray | Tensor) -> Tensor:
        """feats (N, D) -> logits (N, C)."""
        x = l2_normalize(torch.as_tensor(np.asarray(feats), dtype=self.weight.dtype))
        return x @ self.weight.T + self.bias

    def evaluate(self, feats: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Top-1 / top-5 (%) and mean cross-entropy."""
        logits = self.logits(feats)
        y = torch.from_numpy(np.asarray(labels)).long()
        hits1, hits5 = topk_hits(logits, y, (1, 5))
        n = max(len(y), 1)
        return {"top1": 100.0 * hits1 / n, "top5": 100.0 * hits5 / n,
                "loss": float(torch.nn.functional.cross_entropy(logits, y))}


def fit_logistic(feats: np.ndarray, labels: np.ndarray, num_classes: int, wd: float, *,
                 max_iter: int = 1000, tol: float = 1e-7, dtype: torch.dtype = torch.float64) -> LinearProbe:
    """Minimise mean CE + wd/2 ||W||^2 with full-batch L-BFGS on L2-normalised feats (N, D)."""
    x = l2_normalize(torch.as_tensor(np.asarray(feats), dtype=dtype))
    y = torch.from_numpy(np.asarray(labels)).long()
    w = torch.zeros(num_classes, x.shape[1], dtype=dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + 0.5 * wd * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(w.detach(), b.detach(), wd)


def fit_linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, num_classes: int, *,
                     wd_grid: Sequence[float] = WD_GRID, val_fraction: float = 0.2,
                     seed: int = 0) -> LinearProbe:
    """Choose wd on a validation split of the training features, then refit on all of them."""
    if not 0.0 < val_fraction < 1.0:
        raise EvaluationError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if not wd_grid:
        raise EvaluationError("the weight-decay grid is empty")
    keep, held = stratified_split(np.asarray(train_labels), val_fraction, seed)
    if held.size == 0 or keep.size == 0:
        raise EvaluationError(f"too few training samples ({len(train_labels)}) to carve a "
                              f"{val_fraction:.0%} validation split")
    scores: dict[float, float] = {}
    for wd in wd_grid:
        probe = fit_logistic(train_feats[keep], train_labels[keep], num_classes, wd)
        scores[float(wd)] = probe.evaluate(train_feats[held], train_labels[held])["top1"]
    best = max(scores, key=lambda wd: (scores[wd], wd))  # ties: more regularisation
    final = fit_logistic(train_feats, train_labels, num_classes, best)
    final.val_top1 = scores
    return final
