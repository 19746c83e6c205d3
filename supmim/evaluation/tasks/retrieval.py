"""``eval retrieval``: Recall@K and mAP of cosine-similarity retrieval, queries against a
gallery split or leave-one-out within one split."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from supmim.evaluation.common import EvaluationError, Timer, make_result
from supmim.evaluation.datasets import npz_splits
from supmim.evaluation.loading import LoadedModel
from supmim.evaluation.retrieval import DEFAULT_KS, retrieval_metrics
from supmim.evaluation.tasks._common import FeatureOptions, features, file_tag, get_split, pool_note, prepare


@dataclass(kw_only=True)
class RetrievalOptions(FeatureOptions):
    """Options of :func:`run_retrieval`."""

    query_split: str = "test"
    gallery_split: str = "train"
    leave_one_out: bool = False  # every image of ``split`` queries all the others
    split: str | None = None  # the set for leave_one_out (default all)
    recall_at: Sequence[int] = DEFAULT_KS
    backend: str = "torch"  # torch: exact, full-ranking mAP; faiss: top-N search
    topn: int | None = None  # also report mAP@N (faiss: the search depth, default 100)
    memory_mb: int = 256  # bound on the similarity block in memory


def run_retrieval(model: LoadedModel, data: str, options: RetrievalOptions, *,
                  device: torch.device | str) -> dict[str, Any]:
    """Retrieve by label: ``options.query_split`` against ``options.gallery_split`` of
    ``data``, or leave-one-out within ``options.split``. A ``.npz`` of one image set (no
    ``x_<split>`` arrays) has no gallery split: it is retrieved leave-one-out, with a note
    (``options.leave_one_out`` is set, so the result's tag says so too)."""
    options.check()
    if not options.leave_one_out and npz_splits(data) == ["all"]:
        print(f"supmim: note: '{data}' holds one set of images (x, no x_<split> arrays): "
              "retrieving leave-one-out within it, as --leave-one-out does", file=sys.stderr)
        options.leave_one_out = True
    timer = Timer()
    device = prepare(model, device)
    if options.leave_one_out:
        scores, protocol_text, data_section, tag = _leave_one_out(model, data, options, device)
    else:
        scores, protocol_text, data_section, tag = _against_gallery(model, data, options, device)
    metrics = {k: v for k, v in scores.items() if k.startswith(("R@", "mAP"))}
    return make_result(
        "retrieval", f"retrieval | {tag} | {protocol_text}{pool_note(options.pool)}",
        model=model.describe(), data=data_section,
        protocol={"similarity": "cosine", "relevant": "same label", "protocol": protocol_text,
                  "recall": "R@K = % of queries with a relevant item in the top K",
                  "mAP": "full-ranking average precision, averaged over queries with a relevant item"
                  if options.backend == "torch" else f"AP over the top {options.topn or 100}",
                  "backend": options.backend, "pool": options.pool},
        metrics=metrics, details={k: v for k, v in scores.items() if k not in metrics},
        seconds=timer.seconds())


def _leave_one_out(model: LoadedModel, data: str, options: RetrievalOptions,
                   device: torch.device) -> tuple[dict[str, float], str, dict[str, Any], str]:
    """Scores, protocol text, data section and data tag of leave-one-out retrieval."""
    query = get_split(data, options.split or "all", options)
    q_x, q_y = features(model, query, device, options)
    scores = retrieval_metrics(q_x, q_y, ks=options.recall_at, leave_one_out=True, backend=options.backend,
                               topn=options.topn, memory_mb=options.memory_mb)
    return (scores, f"leave-one-out on {query.split}",
            {"spec": data, "tag": query.tag, "set": query.describe()}, query.tag)


def _against_gallery(model: LoadedModel, data: str, options: RetrievalOptions,
                     device: torch.device) -> tuple[dict[str, float], str, dict[str, Any], str]:
    """Scores, protocol text, data section and data tag of query -> gallery retrieval."""
    query = get_split(data, options.query_split, options)
    gallery = get_split(data, options.gallery_split, options)
    q_x, q_y = features(model, query, device, options)
    g_x, g_y = features(model, gallery, device, options)
    if query.classes != gallery.classes:
        raise EvaluationError("query and gallery splits have different class lists; labels would not match")
    scores = retrieval_metrics(q_x, q_y, g_x, g_y, ks=options.recall_at, backend=options.backend,
                               topn=options.topn, memory_mb=options.memory_mb)
    data_section = {"spec": data, "tag": query.tag, "queries": query.describe(),
                    "gallery": gallery.describe()}
    return scores, f"{query.split} -> {gallery.split}", data_section, query.tag


def result_tag(result: dict[str, Any], options: RetrievalOptions) -> str:
    """``<data>[-<pool>][-loo]``, the ``<tag>`` of the default ``MODEL/eval/retrieval-<tag>.json``."""
    return file_tag(result["data"]["tag"], options.pool, "loo" if options.leave_one_out else "")
