"""The evaluation commands end to end on an exported tiny encoder: each writes its JSON, the
numbers agree with a direct computation, and bad input fails with a message naming the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from supmim.cli import main
from supmim.evaluation.classify import ClassMap, classify
from supmim.evaluation.datasets import eval_transform, load_split
from supmim.evaluation.features import make_loader
from tests._eval_fixtures import export_tiny, faces_npz, pets_npz, seg_npz, tiny_vit
from tests._fixtures import make_image_folder


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    data = make_image_folder(root / "data", classes=3, train_per_class=10, test_per_class=5, size=32)
    models = {}
    for name, seed in (("base", 0), ("other", 1)):
        models[name] = export_tiny(root / name, tiny_vit(num_classes=3, seed=seed), ["c0", "c1", "c2"])
    return {"root": root, "data": data, "models": models, "cache": str(root / "cache")}


def run(env, *args: str) -> None:
    assert main([*args, "--quiet", "--cache-dir", env["cache"]]) == 0


def result(path: Path) -> dict:
    obj = json.loads(Path(path).read_text())
    assert obj["supmim_eval"] == 1 and obj["model"]["fingerprint"] and obj["versions"]["timm"]
    return obj


def test_classification_family_writes_json_that_matches_a_direct_computation(env, tmp_path):
    model, data = str(env["models"]["base"]), str(env["data"])
    run(env, "eval", "classify", model, "--data", data)
    out = result(Path(model) / "eval" / "classify-data-test.json")  # the default location
    loaded = timm.create_model(f"local-dir:{model}", pretrained=True)
    split = load_split(data, "test")
    direct = classify(loaded, make_loader(split.with_transform(eval_transform(loaded.pretrained_cfg), 3),
                                          4, 0, torch.device("cpu")),
                      ClassMap([0, 1, 2], "by name", 3), torch.device("cpu"), progress=False)
    assert out["metrics"]["top-1"] == pytest.approx(direct["top1"])
    assert out["protocol"]["class_map"]["how"] == "by name"

    run(env, "eval", "knn", model, "--data", data, "--k", "1", "5", "--out", str(tmp_path / "knn.json"))
    knn = result(tmp_path / "knn.json")
    assert set(knn["metrics"]) == {"k=1 top-1", "k=5 top-1", "k=1 top-5", "k=5 top-5"}

    run(env, "eval", "linear", model, "--data", data, "--wd", "1e-4", "1e-2", "--out", str(tmp_path / "lin.json"))
    lin = result(tmp_path / "lin.json")
    assert lin["protocol"]["chosen_wd"] in (1e-4, 1e-2) and 0 <= lin["metrics"]["top-1"] <= 100

    run(env, "eval", "retrieval", model, "--data", data, "--out", str(tmp_path / "ret.json"))
    ret = result(tmp_path / "ret.json")
    assert set(ret["metrics"]) == {"R@1", "R@5", "R@10", "mAP"}
    assert ret["details"]["queries"] == 15 and ret["details"]["gallery"] == 30

    run(env, "embed", model, "--data", data, "--split", "train", "--pool", "gap", "--normalize",
        "--out", str(tmp_path / "f.npz"))
    with np.load(tmp_path / "f.npz") as f:
        assert f["features"].shape == (30, 32) and np.allclose(np.linalg.norm(f["features"], axis=1), 1)
        assert list(f["classes"]) == ["c0", "c1", "c2"]
    assert result(tmp_path / "f.json")["protocol"] == {"pool": "gap", "normalized": True}


def test_face_retrieval_and_segmentation_from_npz_files(env, tmp_path):
    model = str(env["models"]["base"])
    faces = faces_npz(tmp_path / "faces.npz")  # grey 40x36 images, converted and resized for the model
    run(env, "eval", "retrieval", model, "--data", str(faces), "--leave-one-out", "--out", str(tmp_path / "r.json"))
    r = result(tmp_path / "r.json")
    assert r["details"]["queries"] == 20 and r["details"]["gallery"] == 19
    assert r["protocol"]["protocol"] == "leave-one-out on all"

    seg = seg_npz(tmp_path / "seg.npz")
    run(env, "eval", "segment", model, "--data", str(seg), "--size", "40", "48", "--epochs", "2",
        "--out", str(tmp_path / "s.json"))
    s = result(tmp_path / "s.json")
    assert set(s["details"]["per_class_iou"]) == {"left", "right", "square"}
    assert s["protocol"]["feature_grid"] == [5, 6]

    pets = pets_npz(tmp_path / "pets.npz")
    run(env, "eval", "segment", model, "--data", str(pets), "--head", "multilevel", "--epochs", "1",
        "--out", str(tmp_path / "p.json"))
    p = result(tmp_path / "p.json")
    assert list(p["details"]["per_class_iou"]) == ["background", "pet"]
    assert p["data"]["train"]["n"] == 16 and p["data"]["test"]["n"] == 4  # 20% of each breed


def test_retrieval_on_a_npz_without_splits_is_leave_one_out(env, tmp_path, capsys):
    """No x_<split> arrays means no gallery split: leave-one-out by itself, with a note, and
    the same numbers as asking for it."""
    model = str(env["models"]["base"])
    faces = faces_npz(tmp_path / "faces.npz")
    run(env, "eval", "retrieval", model, "--data", str(faces), "--leave-one-out",
        "--out", str(tmp_path / "asked.json"))
    capsys.readouterr()
    run(env, "eval", "retrieval", model, "--data", str(faces))
    assert "retrieving leave-one-out within it" in capsys.readouterr().err
    auto, asked = result(Path(model) / "eval" / "retrieval-faces-loo.json"), result(tmp_path / "asked.json")
    assert auto["protocol"]["protocol"] == "leave-one-out on all"
    assert auto["metrics"] == asked["metrics"] and auto["details"]["gallery"] == 19


def test_robustness_with_baseline_and_report(env, tmp_path):
    pytest.importorskip("imagecorruptions", reason="pip install imagecorruptions-imaug")
    base, other, data = str(env["models"]["base"]), str(env["models"]["other"]), str(env["data"])
    common = ["--data", data, "--corruptions", "gaussian_noise", "contrast", "--severities", "1", "5",
              "--subset", "6"]
    run(env, "eval", "robustness", base, *common, "--out", str(tmp_path / "rb.json"))
    run(env, "eval", "robustness", other, *common, "--baseline", str(tmp_path / "rb.json"),
        "--out", str(tmp_path / "ro.json"))
    rb, ro = result(tmp_path / "rb.json"), result(tmp_path / "ro.json")
    assert set(ro["details"]["accuracy"]) == {"gaussian_noise", "contrast"}
    assert "mCE" in ro["lower_is_better"] and "mCE" not in rb["metrics"]
    errors = {c: [100 - a for a in v] for c, v in ro["details"]["accuracy"].items()}
    ref = {c: [100 - a for a in v] for c, v in rb["details"]["accuracy"].items()}
    ces = [100 * sum(errors[c]) / sum(ref[c]) for c in errors if sum(ref[c]) > 0]
    assert ro["metrics"]["mCE"] == pytest.approx(np.mean(ces))
    # the same corrupted pixels for both models: a model against itself has mCE 100
    run(env, "eval", "robustness", base, *common, "--baseline", base, "--out", str(tmp_path / "self.json"))
    assert result(tmp_path / "self.json")["metrics"]["mCE"] == pytest.approx(100.0)

    # the report: both models side by side, deltas, plots, JSON
    run(env, "eval", "knn", base, "--data", data, "--k", "3", "--out", str(tmp_path / "b" / "knn.json"))
    run(env, "eval", "knn", other, "--data", data, "--k", "3", "--out", str(tmp_path / "o" / "knn.json"))
    (tmp_path / "b" / "rob.json").write_text((tmp_path / "rb.json").read_text())
    (tmp_path / "o" / "rob.json").write_text((tmp_path / "ro.json").read_text())
    out = tmp_path / "rep" / "report.md"
    assert main(["report", f"base={tmp_path / 'b'}", f"mim={tmp_path / 'o'}", "--out", str(out)]) == 0
    md = out.read_text()
    assert "| evaluation | metric | base | mim | mim - base |" in md
    rep = json.loads(out.with_suffix(".json").read_text())
    row = next(r for r in rep["rows"] if r["metric"] == "k=3 top-1")
    assert row["deltas"]["mim"]["mean"] == pytest.approx(
        result(tmp_path / "o" / "knn.json")["metrics"]["k=3 top-1"]
        - result(tmp_path / "b" / "knn.json")["metrics"]["k=3 top-1"])
    for png in ("knn", "robustness", "deltas"):
        assert (out.parent / f"report_{png}.png").stat().st_size > 5000
        assert f"report_{png}.png" in md
    assert "gaussian_noise" in md  # the per-corruption table


@pytest.mark.parametrize("args, message", [
    (["eval", "knn", "/nonexistent/model", "--data", "x"], "does not exist"),
    (["eval", "classify", "{base}", "--data", "{data}", "--split", "val"], "no split 'val'"),
    (["eval", "classify", "{headless}", "--data", "{data}"], "supmim eval linear"),
    (["eval", "knn", "{base}", "--data", "{data}", "--temperature", "0"], "--temperature must be > 0"),
    (["eval", "segment", "{base}", "--data", "{seg}", "--size", "30"], "multiple of the patch size"),
    (["eval", "robustness", "{base}"], "--variant NAME=PATH"),
    (["report", "{root}/nothing", "--out", "{root}/r.md"], "does not exist"),
])
def test_bad_input_fails_with_a_message(env, capsys, args, message):
    root = env["root"]
    if not (root / "headless").exists():
        export_tiny(root / "headless", tiny_vit(num_classes=0))
        seg_npz(root / "seg.npz", n_train=2, n_test=2)
    subs = {"base": str(env["models"]["base"]), "data": str(env["data"]), "root": str(root),
            "headless": str(root / "headless"), "seg": str(root / "seg.npz")}
    assert main([a.format(**subs) for a in args]) == 2
    assert message in capsys.readouterr().err


def test_cli_startup_does_not_import_the_heavy_parts():
    code = ("import sys, supmim.evaluation.cli as c, argparse; p = argparse.ArgumentParser(); "
            "c.register(p.add_subparsers()); print(sorted(m for m in ('torch', 'timm', 'sklearn', "
            "'imagecorruptions', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


@pytest.mark.slow
def test_a_supmim_run_directory_evaluates_like_its_export(tmp_path):
    from supmim.config import build_config
    from supmim.training import train
    from supmim.export import export_run

    data = make_image_folder(tmp_path / "data", classes=3, train_per_class=8, test_per_class=4, size=16)
    cfg = build_config(preset="tiny-test", extra={"data.data": str(data), "mim.enabled": False,
                                                  "data.val_fraction": 0.0},
                       overrides=["train.epochs=1", "data.batch_size=8"])
    summary = train(cfg, tmp_path / "run", progress=False)
    export_run(tmp_path / "run", tmp_path / "exp")
    for model in ("run", "exp"):
        assert main(["eval", "classify", str(tmp_path / model), "--data", str(data), "--quiet",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    run_res = result(tmp_path / "run" / "eval" / "classify-data-test.json")
    exp_res = result(tmp_path / "exp" / "eval" / "classify-data-test.json")
    assert run_res["metrics"] == exp_res["metrics"]
    assert run_res["metrics"]["top-1"] == pytest.approx(summary["test"]["top1"])
    assert run_res["model"]["fingerprint"] == exp_res["model"]["fingerprint"]
