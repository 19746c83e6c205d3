"""``eval knn``: weighted k-NN on cosine similarity (the DINO protocol), from a data spec
(:func:`run_knn`) or on datasets already built (:func:`knn_on_datasets`, for the sweeps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from supmim.evaluation.common import Timer, make_result
from supmim.evaluation.features import extract_features, l2_normalize, make_loader
from supmim.evaluation.knn import DINO_KS, DINO_TEMPERATURE, knn_evaluate
from supmim.evaluation.loading import LoadedModel
from supmim.evaluation.tasks._common import (FeatureOptions, as_device, check_positive, features, file_tag,
                                             get_split, pool_note, prepare)


@dataclass(kw_only=True)
class KnnOptions(FeatureOptions):
    """Options of :func:`run_knn`."""

    k: Sequence[int] = DINO_KS
    temperature: float = DINO_TEMPERATURE
    train_split: str = "train"  # the neighbour bank
    test_split: str = "test"  # the queries

    def check(self) -> None:
        check_positive("--temperature", self.temperature)


def run_knn(model: LoadedModel, data: str, options: KnnOptions, *,
            device: torch.device | str) -> dict[str, Any]:
    """Top-1 / top-5 of the queries (``options.test_split``) voted by their k nearest
    neighbours in the bank (``options.train_split``), for every k."""
    options.check()
    timer = Timer()
    device = prepare(model, device)
    train = get_split(data, options.train_split, options)
    test = get_split(data, options.test_split, options)
    train_x, train_y = features(model, train, device, options)
    test_x, test_y = features(model, test, device, options)
    scores = knn_evaluate(train_x, train_y, test_x, test_y, ks=options.k, temperature=options.temperature,
                          num_classes=len(train.classes))
    metrics = {f"k={k} top-1": s["top1"] for k, s in scores.items()}
    metrics.update({f"k={k} top-5": s["top5"] for k, s in scores.items()})
    return make_result(
        "knn", f"kNN | {train.tag}{pool_note(options.pool)}", model=model.describe(),
        data={"spec": data, "tag": train.tag, "bank": train.describe(), "queries": test.describe()},
        protocol={"similarity": "cosine (L2-normalised features)", "weights": "exp(sim / T)",
                  "temperature": options.temperature, "k": list(options.k), "pool": options.pool},
        metrics=metrics, details={"per_k": {str(k): v for k, v in scores.items()}}, seconds=timer.seconds())


def result_tag(result: dict[str, Any], options: KnnOptions) -> str:
    """``<data>[-<pool>]``, the ``<tag>`` of the default ``MODEL/eval/knn-<tag>.json``."""
    return file_tag(result["data"]["tag"], options.pool)


def knn_on_datasets(model: nn.Module, bank: Dataset, queries: Dataset, *, num_classes: int,
                    k: Sequence[int] = DINO_KS, temperature: float = DINO_TEMPERATURE,
                    device: torch.device | str, batch_size: int = 256, workers: int = 0,
                    progress: bool = False) -> dict[int, dict[str, float]]:
    """Weighted k-NN of ``queries`` against ``bank``: ``{k: {"top1", "top5", "k_used"}}`` (%).

    Both datasets yield ``(tensor, label, index)`` items, already transformed; items labelled
    -1 (unreadable images) are dropped. Features are the model's default pooling
    (``pooled_features(..., "default")``), L2-normalised, scored by :func:`knn_evaluate`.
    ``model`` is moved to ``device`` and run in eval mode (its mode is restored).
    """
    device = as_device(device)
    model.to(device)
    (bank_x, bank_y), (query_x, query_y) = (
        _normalized_features(model, ds, device, batch_size, workers, progress) for ds in (bank, queries))
    return knn_evaluate(bank_x, bank_y, query_x, query_y, ks=tuple(k), temperature=temperature,
                        num_classes=num_classes)


def _normalized_features(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int,
                         workers: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised default-pool features and labels of the readable items of ``dataset``."""
    x, y = extract_features(model, make_loader(dataset, batch_size, workers, device), device,
                            progress=progress)
    keep = y >= 0  # unreadable images come back labelled -1
    return l2_normalize(torch.from_numpy(x[keep])).numpy(), y[keep]
