"""The evaluation tasks called from Python: the registry lists them all, a task's result is
the JSON its CLI command writes, the options' defaults are the CLI's, and the kNN on built
datasets computes what the sweep's kNN always did."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from supmim.cli import main
from supmim.data import ImageDataset
from supmim.evaluation import cli
from supmim.evaluation.common import write_json
from supmim.evaluation.datasets import eval_transform, load_split
from supmim.evaluation.features import extract_features, l2_normalize, make_loader
from supmim.evaluation.knn import knn_evaluate
from supmim.evaluation.loading import load_model
from supmim.evaluation.tasks import (TASKS, ClassifyOptions, KnnOptions, RetrievalOptions, TaskOptions,
                                     knn_on_datasets, run_classify, run_knn, run_retrieval)
from tests._eval_fixtures import DATA_CONFIG, export_tiny, tiny_vit
from tests._fixtures import make_image_folder

ALL_TASKS = {"embed", "classify", "linear", "knn", "retrieval", "segment", "robustness"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_tasks")
    data = make_image_folder(root / "data", classes=3, train_per_class=8, test_per_class=4, size=32)
    model = export_tiny(root / "model", tiny_vit(num_classes=3), ["c0", "c1", "c2"])
    return {"root": root, "data": str(data), "model": str(model), "cache": str(root / "cache")}


def test_the_registry_lists_all_seven_tasks():
    assert set(TASKS) == ALL_TASKS
    for name, task in TASKS.items():
        assert task.name == name and callable(task.run)
        assert dataclasses.is_dataclass(task.options) and issubclass(task.options, TaskOptions)
        assert task.run.__name__ == f"run_{name}"
        assert (task.result_tag is None) == (name == "embed")  # embed writes where --out says


def _as_written(result: dict, path: Path) -> dict:
    """``result`` as the CLI's JSON writer stores it (tuples become lists), less its timing."""
    obj = json.loads(write_json(path, result).read_text())
    obj.pop("seconds")
    return obj


@pytest.mark.parametrize("task, cli_args, run, options", [
    ("classify", [], run_classify, ClassifyOptions()),
    ("knn", ["--k", "1", "5", "--no-cache"], run_knn, KnnOptions(k=(1, 5), use_cache=False)),
    ("retrieval", ["--recall-at", "1", "3", "--no-cache"], run_retrieval,
     RetrievalOptions(recall_at=(1, 3), use_cache=False)),
])
def test_a_task_from_python_returns_what_its_command_writes(env, tmp_path, task, cli_args, run, options):
    out = tmp_path / "cli.json"
    assert main(["eval", task, env["model"], "--data", env["data"], *cli_args, "--quiet",
                 "--cache-dir", env["cache"], "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    written.pop("seconds")
    options = dataclasses.replace(options, cache_dir=env["cache"], progress=False)
    result = run(load_model(env["model"]), env["data"], options, device="cpu")
    assert result["metrics"] == written["metrics"] and result["metrics"]
    assert _as_written(result, tmp_path / "py.json") == written


def _cli_options(monkeypatch, argv: list[str]) -> TaskOptions:
    """The options a command builds from ``argv`` (the model is never loaded)."""
    seen = []

    def capture(args, task, options):
        seen.append(options)
        raise KeyboardInterrupt  # stop here: main() returns 130

    monkeypatch.setattr(cli, "_run", capture)
    assert main(argv) == 130
    return seen[0]


def _fields(options: TaskOptions) -> dict:
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in dataclasses.asdict(options).items()}


@pytest.mark.parametrize("argv", [
    ["eval", "classify", "M", "--data", "D"], ["eval", "linear", "M", "--data", "D"],
    ["eval", "knn", "M", "--data", "D"], ["eval", "retrieval", "M", "--data", "D"],
    ["eval", "segment", "M", "--data", "D"], ["eval", "robustness", "M", "--data", "D"],
    ["embed", "M", "--data", "D", "--out", "f.npz"],
])
def test_the_python_defaults_are_the_cli_defaults(monkeypatch, argv):
    options = _cli_options(monkeypatch, argv)
    task = argv[1] if argv[0] == "eval" else argv[0]
    assert type(options) is TASKS[task].options
    defaults = TASKS[task].options(**({"out": "f.npz"} if task == "embed" else {}))
    assert _fields(options) == _fields(defaults)


def test_result_tags_name_the_default_files_as_before():
    knn, retrieval, robustness = TASKS["knn"], TASKS["retrieval"], TASKS["robustness"]
    assert knn.result_tag({"data": {"tag": "cifar"}}, KnnOptions(pool="gap")) == "cifar-gap"
    assert retrieval.result_tag({"data": {"tag": "faces"}}, RetrievalOptions(leave_one_out=True)) == "faces-loo"
    assert robustness.result_tag({"data": {}}, robustness.options()) == "variants"
    seg = TASKS["segment"]
    assert seg.result_tag({"data": {"tag": "pets"}}, seg.options(head="multilevel", finetune=True)) \
        == "pets-multilevel-ft"


def test_knn_on_datasets_computes_the_sweeps_knn_and_drops_unreadable_images(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=3, train_per_class=6, test_per_class=3, size=32)
    for split in ("train", "test"):
        (data / split / "c1" / "broken.png").write_bytes(b"")  # comes back labelled -1
    model = tiny_vit(num_classes=3)
    transform = eval_transform(DATA_CONFIG)
    bank, queries = (ImageDataset(load_split(str(data), s).base, transform, 3, on_error="skip")
                     for s in ("train", "test"))
    device = torch.device("cpu")
    got = knn_on_datasets(model, bank, queries, num_classes=3, k=(5, 100), device=device, batch_size=4)

    feats = []  # what supmim.experiments.sweep.knn_top1 computed before it called knn_on_datasets
    for ds in (bank, queries):
        x, y = extract_features(model, make_loader(ds, 256, 0, device), device, progress=False)
        keep = y >= 0
        feats.append((l2_normalize(torch.from_numpy(x[keep])).numpy(), y[keep]))
    (bx, by), (qx, qy) = feats
    assert len(by) == 18 and len(qy) == 9
    for k in (5, 100):
        assert got[k] == knn_evaluate(bx, by, qx, qy, ks=(k,), num_classes=3)[k]
    assert got[100]["k_used"] == 18 and np.isfinite(got[5]["top1"])
