"""Weighted k-NN classification on cosine similarity (the DINO protocol).

For a test feature q, the k training features with the highest cosine similarity s_i each
vote for their class with weight exp(s_i / T); the class scores are the summed votes, and
top-1 / top-5 are read from them. DINO's defaults: k in {10, 20, 100, 200}, T = 0.07.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from supmim.evaluation.common import EvaluationError
from supmim.evaluation.features import l2_normalize
from supmim.metrics import topk_hits

DINO_KS = (10, 20, 100, 200)
DINO_TEMPERATURE = 0.07


def knn_scores(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, k: int,
               temperature: float, num_classes: int, chunk: int = 1024) -> Tensor:
    """Class scores of a weighted k-NN vote.

    train_feats (N, D), train_labels (N,) int64, test_feats (M, D) -> scores (M, num_classes).
    Features are L2-normalised here, so any scale is fine. ``chunk`` test rows at a time keep
    the similarity matrix at (chunk, N). Each query's scores are divided by exp(s_max / T)
    (s_max: its nearest neighbour's similarity), which leaves the vote unchanged and keeps
    exp() finite at small temperatures.
    """
    bank = l2_normalize(train_feats.float())
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, test_feats.shape[0], chunk):
        q = l2_normalize(test_feats[start:start + chunk].float())
        sims, idx = (q @ bank.T).topk(k, dim=1)  # (c, k), sorted by similarity
        weights = ((sims - sims[:, :1]) / temperature).exp()  # sims sorted: column 0 is the max
        votes = torch.zeros(q.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[idx], weights)
        out.append(votes)
    return torch.cat(out)


def knn_evaluate(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                 test_labels: np.ndarray, *, ks: Sequence[int] = DINO_KS,
                 temperature: float = DINO_TEMPERATURE, num_classes: int | None = None,
                 chunk: int = 1024) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 (%) of weighted k-NN for each k; k larger than the bank is clamped."""
    if train_feats.shape[1] != test_feats.shape[1]:
        raise EvaluationError(f"feature sizes differ: bank {train_feats.shape}, queries {test_feats.shape}")
    if temperature <= 0:
        raise EvaluationError(f"--temperature must be > 0, got {temperature}")
    if any(k < 1 for k in ks):
        raise EvaluationError(f"every k must be >= 1, got {list(ks)}")
    bank, bank_y = torch.from_numpy(train_feats), torch.from_numpy(train_labels).long()
    queries, query_y = torch.from_numpy(test_feats), torch.from_numpy(test_labels).long()
    num_classes = num_classes or int(max(bank_y.max(), query_y.max())) + 1
    results: dict[int, dict[str, float]] = {}
    for k in ks:
        scores = knn_scores(bank, bank_y, queries, k, temperature, num_classes, chunk)
        hits1, hits5 = topk_hits(scores, query_y, (1, 5))
        n = max(len(query_y), 1)
        results[int(k)] = {"top1": 100.0 * hits1 / n, "top5": 100.0 * hits5 / n,
                           "k_used": min(int(k), len(bank_y))}
    return results
