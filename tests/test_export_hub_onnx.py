"""`supmim export --format onnx` (onnxruntime matches PyTorch on real images at batch 1 and 3)
and `--push-to-hub` (exactly our files go: safetensors weights, our model card, the config),
with the Hub replaced by a fake: no network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors

from supmim.cli import main
from supmim.config import build_config
from supmim.data import resolve_data
from supmim.export import export_run, load_run_encoder
from supmim.training import train
from tests._fixtures import make_image_folder

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export-onnx")
    data = make_image_folder(root / "data", size=20)
    cfg = build_config(preset="tiny-test", extra={
        "data.data": str(data), "mim.target": "pixel", "data.val_fraction": 0.0,
        "model.img_size": 16, "data.crop_pct": 0.8, "data.interpolation": "bilinear"},
        overrides=["data.batch_size=8", "model.global_pool=avg"])
    train(cfg, root / "run", progress=False)
    return root / "run", data


@pytest.fixture(scope="module")
def onnx_export(run, tmp_path_factory) -> Path:
    return export_run(run[0], tmp_path_factory.mktemp("onnx") / "e", fmt="onnx")


def _images(meta: dict, data: Path, n: int) -> np.ndarray:
    """``n`` test images preprocessed as ``onnx.json`` says, with timm's own transform."""
    import timm.data
    pre = meta["preprocessing"]
    transform = timm.data.create_transform(
        input_size=tuple(pre["input_size"]), mean=tuple(pre["mean"]), std=tuple(pre["std"]),
        crop_pct=pre["crop_pct"], crop_mode=pre["crop_mode"], interpolation=pre["interpolation"])
    paths = resolve_data(str(data)).test.paths[:n]
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths]).numpy()


def test_onnx_logits_match_pytorch_on_real_images_at_batch_1_and_3(run, onnx_export):
    meta = json.loads((onnx_export / "onnx.json").read_text())
    assert sorted(p.name for p in onnx_export.iterdir()) == [
        "model.onnx", "onnx.json", "supmim_config.yaml"]
    graph = onnx.load(str(onnx_export / "model.onnx"))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch
    assert meta["opset"] == max(o.version for o in graph.opset_import
                                if o.domain in ("", "ai.onnx"))
    assert meta["output"]["kind"] == "logits" and meta["class_names"] == ["c0", "c1", "c2"]
    assert meta["input"]["shape"] == ["batch", 3, 16, 16] and meta["output"]["shape"][1] == 3
    model, _, _ = load_run_encoder(run[0])
    session = ort.InferenceSession(str(onnx_export / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = _images(meta, run[1], batch)
        got = session.run(None, {meta["input"]["name"]: x})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, 3)
        assert np.abs(got - ref).max() <= 1e-4


def test_onnx_without_head_outputs_the_pooled_features(run, tmp_path):
    out = export_run(run[0], tmp_path / "e", fmt="onnx", head=False)
    meta = json.loads((out / "onnx.json").read_text())
    assert meta["output"] == {"name": "features", "kind": "features", "shape": ["batch", 32]}
    assert meta["class_names"] == []
    model, _, _ = load_run_encoder(run[0])
    x = _images(meta, run[1], 3)
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(torch.from_numpy(x)), pre_logits=True)
    assert np.abs(got - ref.numpy()).max() <= 1e-4


def test_missing_onnx_packages_name_the_extra(run, tmp_path, monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code = main(["export", str(run[0]), "--out", str(tmp_path / "e"), "--format", "onnx"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'supmim[onnx]'" in err and "onnxruntime" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "e").exists()


class FakeHub:
    """Stands in for ``huggingface_hub.HfApi``: records the calls, and "uploads" the files
    that huggingface_hub's own pattern filter lets through into ``remote``."""

    calls: list[tuple[str, dict]] = []
    remote: dict[str, bytes] = {}

    def __init__(self, token=None, **kwargs) -> None:
        self.calls.append(("init", {"token": token, **kwargs}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, *, folder_path, allow_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects
        self.calls.append(("upload_folder", kwargs))
        names = [p.name for p in Path(folder_path).iterdir() if p.is_file()]
        for name in filter_repo_objects(names, allow_patterns=allow_patterns):
            self.remote[name] = (Path(folder_path) / name).read_bytes()
        return type("CommitInfo", (), {"commit_url": "https://hf.co/me/vit/commit/1"})()


@pytest.fixture
def hub(monkeypatch):
    FakeHub.calls, FakeHub.remote = [], {}
    monkeypatch.setattr("supmim.hub.HfApi", FakeHub)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return FakeHub


def test_push_uploads_exactly_our_safetensors_card_and_config(run, tmp_path, hub, capsys):
    out = tmp_path / "e"
    (tmp_path / "e").mkdir()
    (out / "notes.txt").write_text("a stray file in the folder must not go")
    code = main(["export", str(run[0]), "--out", str(out), "--push-to-hub", "me/vit",
                 "--private", "--revision", "v1", "--commit-message", "first"])
    assert code == 0 and "pushed to https://hf.co/me/vit/commit/1" in capsys.readouterr().out
    assert sorted(hub.remote) == ["README.md", "config.json", "model.safetensors",
                                  "supmim_config.yaml"]
    state = load_safetensors(hub.remote["model.safetensors"])
    model, _, _ = load_run_encoder(run[0])
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    card = hub.remote["README.md"].decode()
    assert card == (out / "README.md").read_text() and "trained with supmim" in card
    assert "supmim export" in card and "--push-to-hub me/vit" in card
    assert "timm.create_model('hf-hub:me/vit', pretrained=True)" in card
    assert json.loads(hub.remote["config.json"])["label_names"] == ["c0", "c1", "c2"]
    calls = dict(hub.calls)
    assert calls["init"]["token"] == "hf_test_token"
    assert calls["create_repo"] == {"repo_id": "me/vit", "private": True, "exist_ok": True}
    assert calls["create_branch"] == {"repo_id": "me/vit", "branch": "v1", "exist_ok": True}
    assert calls["upload_folder"]["revision"] == "v1"
    assert calls["upload_folder"]["commit_message"] == "first"


def test_push_without_a_token_fails_before_exporting(run, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("supmim.hub.get_token", lambda: None)
    code = main(["export", str(run[0]), "--out", str(tmp_path / "e"), "--push-to-hub", "me/v"])
    err = capsys.readouterr().err
    assert code == 2 and "hf auth login" in err and not (tmp_path / "e").exists()


def test_push_refuses_onnx_and_reports_upload_failures_in_one_line(run, tmp_path, hub, capsys,
                                                                   monkeypatch):
    code = main(["export", str(run[0]), "--out", str(tmp_path / "o"), "--format", "onnx",
                 "--push-to-hub", "me/v"])
    assert code == 2 and "drop --format onnx" in capsys.readouterr().err
    from supmim.hub import HubError, push_export

    def refuse(*args, **kwargs):
        raise OSError("Connection refused\nmore detail")
    with pytest.raises(HubError, match="does not exist|not a supmim timm export"):
        push_export(tmp_path, "me/v")
    export_run(run[0], tmp_path / "e")
    monkeypatch.setattr(hub, "upload_folder", refuse)
    with pytest.raises(HubError) as err:
        push_export(tmp_path / "e", "me/v")
    assert str(err.value).startswith("push to 'me/v' failed: Connection refused.")
    assert "\n" not in str(err.value)


def test_the_benchmark_smoke_mode_runs(tmp_path, capsys):
    """In this process (its exporter is warm): the script's own main, as `--smoke` runs it."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "inference_overhead", REPO / "benchmarks" / "inference_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, threads = tmp_path / "bench.json", torch.get_num_threads()
    try:
        assert bench.main(["--smoke", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"timm stock (PyTorch)", "supmim export (PyTorch)",
                         "timm stock (onnxruntime)", "supmim export (onnxruntime)"}
    assert all(r["images_per_s"] > 0 and len(r["repeats"]) == 3 for r in rows.values())
    assert result["threads"] == 1 and "images/s" in capsys.readouterr().out
