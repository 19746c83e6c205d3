"""Retrieval metrics: a query set ranked against a gallery by cosine similarity.

An item of the gallery is *relevant* to a query when it has the same label (class, or
identity for face retrieval). Per query, with the gallery sorted by decreasing similarity:

- Recall@K: 1 if at least one of the first K items is relevant, else 0 (the metric-learning
  definition); averaged over queries, in %.
- AP: the mean of precision@i over the ranks i of all relevant items (the full ranking);
  mAP averages it over the queries that have at least one relevant item, in %.
- AP@n (with ``topn``): the sum of precision@i * rel_i over the first n ranks, divided by
  min(R, n) where R is the number of relevant items; what a top-n search (faiss) can give.

Exact search runs in torch, ``chunk`` queries at a time, so memory holds a (chunk, G) block
of the similarity matrix: chunk is chosen from ``memory_mb``. With ``leave_one_out`` queries
and gallery are the same set and each query's own item is removed from its ranking.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from supmim.evaluation.common import EvaluationError
from supmim.evaluation.features import l2_normalize

DEFAULT_KS = (1, 5, 10)
_BYTES_PER_ENTRY = 48  # sims, sort indices, relevance, its float copy, cumsum, precision


def _accumulate(sorted_rel: Tensor, n_rel: Tensor, ks: Sequence[int], sums: dict[str, float], *,
                full: bool, topn: int | None) -> None:
    """Add one block's sums. sorted_rel (c, L) bool in rank order (L = G for a full ranking,
    fewer for a top-n search); n_rel (c,) the number of relevant items in the whole gallery."""
    rel = sorted_rel.double()
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    precision = rel.cumsum(dim=1) / ranks  # (c, L) precision@i
    has_rel = n_rel > 0
    for k in ks:
        sums[f"R@{k}"] += float(rel[:, :k].amax(dim=1).sum())
    if full:
        ap = (precision * rel).sum(dim=1) / n_rel.clamp_min(1)
        sums["mAP"] += float(ap[has_rel].sum())
    if topn is not None:
        n = min(topn, rel.shape[1])
        ap_n = (precision[:, :n] * rel[:, :n]).sum(dim=1) / n_rel.clamp(min=1, max=topn)
        sums[f"mAP@{topn}"] += float(ap_n[has_rel].sum())
    sums["with_relevant"] += float(has_rel.sum())


def retrieval_metrics(query_feats: np.ndarray, query_labels: np.ndarray,
                      gallery_feats: np.ndarray | None = None, gallery_labels: np.ndarray | None = None,
                      *, ks: Sequence[int] = DEFAULT_KS, leave_one_out: bool = False,
                      backend: str = "torch", topn: int | None = None,
                      memory_mb: int = 256) -> dict[str, float]:
    """Recall@K and mAP (%) of cosine-similarity retrieval.

    query_feats (Q, D), query_labels (Q,), gallery_feats (G, D), gallery_labels (G,).
    ``leave_one_out``: the gallery is the query set itself (pass no gallery).
    ``backend="faiss"`` searches only the top ``topn`` (default 100) with a flat inner-product
    index and so reports mAP@topn; ``torch`` reports the full-ranking mAP (and mAP@topn too
    when ``topn`` is given).
    """
    if leave_one_out:
        if gallery_feats is not None:
            raise EvaluationError("leave-one-out retrieval uses the query set as gallery; pass no gallery")
        gallery_feats, gallery_labels = query_feats, query_labels
    if gallery_feats is None or gallery_labels is None:
        raise EvaluationError("retrieval needs a gallery (or leave_one_out=True)")
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise EvaluationError(f"feature sizes differ: queries {query_feats.shape}, gallery {gallery_feats.shape}")
    g = gallery_feats.shape[0] - (1 if leave_one_out else 0)
    if g < 1:
        raise EvaluationError("the gallery is empty")
    ks = [int(k) for k in ks]
    if backend == "faiss":
        return _faiss_metrics(query_feats, query_labels, gallery_feats, gallery_labels, ks,
                              leave_one_out, topn or 100)
    if backend != "torch":
        raise EvaluationError(f"unknown retrieval backend '{backend}'; use torch or faiss")
    q = l2_normalize(torch.from_numpy(np.asarray(query_feats, dtype=np.float32)))
    gal = l2_normalize(torch.from_numpy(np.asarray(gallery_feats, dtype=np.float32)))
    qy = torch.from_numpy(np.asarray(query_labels)).long()
    gy = torch.from_numpy(np.asarray(gallery_labels)).long()
    chunk = max(1, int(memory_mb * 2**20 // (_BYTES_PER_ENTRY * gal.shape[0])))
    sums = {**{f"R@{k}": 0.0 for k in ks}, "mAP": 0.0, "with_relevant": 0.0}
    if topn is not None:
        sums[f"mAP@{topn}"] = 0.0
    for start in range(0, q.shape[0], chunk):
        sims = q[start:start + chunk] @ gal.T  # (c, G)
        relevant = qy[start:start + chunk, None] == gy[None, :]  # (c, G)
        if leave_one_out:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -float("inf")  # the query itself goes last ...
            relevant[rows, rows + start] = False  # ... and does not count
        order = sims.argsort(dim=1, descending=True, stable=True)
        if leave_one_out:
            order = order[:, :-1]
        sorted_rel = relevant.gather(1, order)
        _accumulate(sorted_rel, relevant.sum(dim=1), ks, sums, full=True, topn=topn)
    return _finish(sums, q.shape[0], g)


def _finish(sums: dict[str, float], n_queries: int, gallery_size: int) -> dict[str, float]:
    with_rel = sums.pop("with_relevant")
    out = {}
    for key, value in sums.items():
        denom = with_rel if key.startswith("mAP") else n_queries
        out[key] = 100.0 * value / max(denom, 1.0)
    out.update(queries=float(n_queries), gallery=float(gallery_size),
               queries_without_relevant=float(n_queries - with_rel))
    return out


def _faiss_metrics(query_feats: np.ndarray, query_labels: np.ndarray, gallery_feats: np.ndarray,
                   gallery_labels: np.ndarray, ks: list[int], leave_one_out: bool,
                   topn: int) -> dict[str, float]:
    try:
        import faiss
    except ImportError as err:
        raise EvaluationError("--backend faiss needs the faiss package: pip install faiss-cpu "
                              "(or faiss-gpu); or use the exact --backend torch") from err
    q = l2_normalize(torch.from_numpy(np.asarray(query_feats, dtype=np.float32))).numpy()
    gal = l2_normalize(torch.from_numpy(np.asarray(gallery_feats, dtype=np.float32))).numpy()
    index = faiss.IndexFlatIP(gal.shape[1])
    index.add(np.ascontiguousarray(gal))
    depth = max(max(ks), topn) + (1 if leave_one_out else 0)
    depth = min(depth, gal.shape[0])
    _, idx = index.search(np.ascontiguousarray(q), depth)  # (Q, depth), best first
    qy = torch.from_numpy(np.asarray(query_labels)).long()
    gy = torch.from_numpy(np.asarray(gallery_labels)).long()
    idx_t = torch.from_numpy(idx).long()
    if leave_one_out:
        # drop each query's own item from its list (it may sit anywhere among exact ties)
        own = idx_t == torch.arange(q.shape[0])[:, None]
        keep = ~own
        idx_t = torch.stack([row[m][: depth - 1] for row, m in zip(idx_t, keep)])
    sorted_rel = gy[idx_t] == qy[:, None]
    n_rel = (qy[:, None] == gy[None, :]).sum(dim=1) - (1 if leave_one_out else 0)
    sums = {**{f"R@{k}": 0.0 for k in ks}, f"mAP@{topn}": 0.0, "with_relevant": 0.0}
    _accumulate(sorted_rel, n_rel, ks, sums, full=False, topn=topn)
    return _finish(sums, q.shape[0], gal.shape[0] - (1 if leave_one_out else 0))
