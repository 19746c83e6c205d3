"""Evaluation tasks, callable from Python: one module per task, each with a typed options
dataclass and a ``run_<task>(model, data, options, *, device) -> dict`` that returns the
result dict ``supmim eval <task>`` writes (:func:`supmim.evaluation.common.make_result`).

``TASKS`` finds a task by name (like big_vision's evaluators)::

    from supmim.evaluation.loading import load_model
    from supmim.evaluation.tasks import TASKS

    task = TASKS["knn"]
    result = task.run(load_model("exported/mim"), "cifar10_small.tar.gz", task.options(k=(20,)),
                      device="auto")
    print(result["metrics"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from supmim.evaluation.tasks import classify, knn, linear, retrieval, robustness, segment
from supmim.evaluation.tasks._common import FeatureOptions, TaskOptions
from supmim.evaluation.tasks.classify import ClassifyOptions, run_classify
from supmim.evaluation.tasks.embed import EmbedOptions, run_embed
from supmim.evaluation.tasks.knn import KnnOptions, knn_on_datasets, run_knn
from supmim.evaluation.tasks.linear import LinearOptions, run_linear
from supmim.evaluation.tasks.retrieval import RetrievalOptions, run_retrieval
from supmim.evaluation.tasks.robustness import RobustnessOptions, run_robustness
from supmim.evaluation.tasks.segment import SegmentOptions, run_segment


@dataclass(frozen=True)
class Task:
    """A registered task: its runner, its options class, and (for the ``eval`` tasks) the
    ``<tag>`` of its default result file ``MODEL/eval/<name>-<tag>.json``."""

    name: str
    run: Callable[..., dict[str, Any]]
    options: type[TaskOptions]
    result_tag: Callable[[dict[str, Any], Any], str] | None = None


TASKS: dict[str, Task] = {
    "embed": Task("embed", run_embed, EmbedOptions),
    "classify": Task("classify", run_classify, ClassifyOptions, classify.result_tag),
    "linear": Task("linear", run_linear, LinearOptions, linear.result_tag),
    "knn": Task("knn", run_knn, KnnOptions, knn.result_tag),
    "retrieval": Task("retrieval", run_retrieval, RetrievalOptions, retrieval.result_tag),
    "segment": Task("segment", run_segment, SegmentOptions, segment.result_tag),
    "robustness": Task("robustness", run_robustness, RobustnessOptions, robustness.result_tag),
}

__all__ = ["TASKS", "Task", "TaskOptions", "FeatureOptions", "ClassifyOptions", "EmbedOptions",
           "KnnOptions", "LinearOptions", "RetrievalOptions", "RobustnessOptions", "SegmentOptions",
           "run_classify", "run_embed", "run_knn", "run_linear", "run_retrieval", "run_robustness",
           "run_segment", "knn_on_datasets"]
