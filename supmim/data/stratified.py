"""Class-stratified index selection: hold out a fraction of each class
(:func:`stratified_split`) or take a class-balanced subset (:func:`stratified_subset`).

Both work on label arrays alone (see :func:`supmim.data.source.labels_of`) and are
deterministic in their arguments.
"""

from __future__ import annotations

import numpy as np

from supmim.errors import DataError

__all__ = ["stratified_split", "stratified_subset"]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as an array, refused unless it is 1-D and integer."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}; use labels_of(dataset)"
        )
    return labels


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into ``(keep, heldout)``, holding out ``round(fraction * n_c)`` of each class c.

    Deterministic in ``(labels, fraction, seed)``; both arrays are sorted int64 and disjoint.
    ``round`` is Python's (half to even).
    """
    labels = _check_labels(labels)
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"split fraction must be in [0, 1], got {fraction}; e.g. 0.1 holds out 10% of each class")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):  # sorted, so the RNG stream is consumed in a fixed order
        idx = np.flatnonzero(labels == c)
        k = round(fraction * idx.size)
        held.append(rng.permutation(idx)[:k])
    heldout = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(labels.size, dtype=bool)
    mask[heldout] = False
    return np.flatnonzero(mask).astype(np.int64), heldout.astype(np.int64)


def _quotas(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """How many of each class to take: equal shares, capped by the class sizes, leftovers seeded."""
    quota = np.zeros_like(counts)
    remaining = n
    while remaining > 0:
        open_ = np.flatnonzero(quota < counts)
        share = remaining // open_.size
        if share == 0:
            # Fewer leftovers than open classes: one extra each for a seeded choice.
            quota[rng.choice(open_, size=remaining, replace=False)] += 1
            break
        give = np.minimum(share, counts[open_] - quota[open_])
        quota[open_] += give
        remaining -= int(give.sum())
    return quota


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` positions, as class-balanced as the class sizes allow; deterministic, sorted.

    Each class gets ``n // n_classes``; classes too small give all they have and the
    rest is shared among the others; the last few leftovers go to classes picked by ``seed``.
    """
    labels = _check_labels(labels)
    if not 0 <= n <= labels.size:
        raise DataError(f"cannot take a subset of {n} from {labels.size} samples; pass 0 <= n <= {labels.size}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = _quotas(counts, n, rng)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, dtype=np.int64)
