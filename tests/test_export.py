"""Export parity: plain timm rebuilds the encoder from the exported folder alone, gives the
same logits, and its own preprocessing reproduces the run's test top-1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from supmim.config import build_config
from supmim.data import resolve_data
from supmim.training import train
from supmim.errors import CheckpointError, ConfigError
from supmim.export import export_run, load_run_encoder
from tests._fixtures import make_image_folder


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("export")
    data = make_image_folder(root / "data", size=20)
    cfg = build_config(preset="tiny-test", extra={
        "data.data": str(data), "mim.target": "pixel", "data.val_fraction": 0.0,
        "model.img_size": 16, "data.crop_pct": 0.8, "data.interpolation": "bilinear"},
        overrides=["train.epochs=2", "data.batch_size=8", "model.global_pool=token"])
    summary = train(cfg, root / "run", progress=False)
    return root / "run", data, summary


def test_export_holds_only_the_timm_model(trained_run, tmp_path):
    run, _, _ = trained_run
    out = export_run(run, tmp_path / "e")
    keys = load_file(str(out / "model.safetensors")).keys()
    assert not any(k.startswith(("decoder", "mask_token", "target")) for k in keys)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["model_args"]["patch_size"] == 4 and config["num_classes"] == 3
    assert config["pretrained_cfg"]["crop_pct"] == 0.8
    assert config["label_names"] == ["c0", "c1", "c2"]


def test_timm_local_dir_gives_identical_logits(trained_run, tmp_path):
    run, _, _ = trained_run
    out = export_run(run, tmp_path / "e")
    ours, _, _ = load_run_encoder(run)
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    assert diff <= 1e-5


def test_timm_preprocessing_reproduces_the_run_top1(trained_run, tmp_path):
    run, data, summary = trained_run
    out = export_run(run, tmp_path / "e")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    data_cfg = timm.data.resolve_data_config(model=model)
    assert data_cfg["crop_pct"] == 0.8 and data_cfg["interpolation"] == "bilinear"
    transform = timm.data.create_transform(**data_cfg)
    src = resolve_data(str(data))
    correct = 0
    with torch.no_grad():
        for path, label in zip(src.test.paths, src.test.labels):
            x = transform(Image.open(path).convert("RGB")).unsqueeze(0)
            correct += int(model(x).argmax(1).item() == label)
    top1 = 100.0 * correct / len(src.test)
    assert top1 == pytest.approx(summary["test"]["top1"])


def test_export_without_head(trained_run, tmp_path):
    run, _, _ = trained_run
    out = export_run(run, tmp_path / "e", head=False)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model.num_classes == 0
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 32)


def test_the_command_offers_the_formats_export_writes(tmp_path):
    from supmim import export, export_cli
    assert export_cli.FORMATS == export.FORMATS  # spelled out twice so --help imports no torch
    with pytest.raises(ConfigError, match="not one of timm, onnx"):
        export_run(tmp_path, tmp_path / "e", fmt="tflite")


def test_export_of_a_non_run_fails_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not a supmim run directory"):
        export_run(tmp_path, tmp_path / "e")


def test_the_model_card_states_recipe_metrics_and_mim_settings(trained_run, tmp_path):
    import yaml
    from supmim.config import RunConfig, apply_dict, validate
    run, _, summary = trained_run
    (run / "knn.json").write_text(json.dumps({"k": 20, "top1": 61.5}))  # as compare writes it
    try:
        out = export_run(run, tmp_path / "e", command="supmim export RUN --out E")
    finally:
        (run / "knn.json").unlink()
    card = (out / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "timm" and meta["license"] is None  # left for the owner
    assert "set one" in front and "masked-image-modeling" in meta["tags"]
    top1 = summary["test"]["top1"]
    value = meta["model-index"][0]["results"][0]["metrics"][0]["value"]
    assert value == round(top1, 2)
    assert f"| test top-1 (%) | {top1:.2f} |" in body and "| kNN top-1 (%) | 61.50 |" in body
    assert "75% of the patches" in body and "normalised pixels (MAE)" in body
    assert "At inference all of that is gone" in body
    assert "`supmim export RUN --out E`" in body
    # the recorded config is the run's, and it validates as a config file
    cfg = RunConfig()
    apply_dict(cfg, yaml.safe_load((out / "supmim_config.yaml").read_text()))
    validate(cfg)
    assert cfg.to_dict() == yaml.safe_load((run / "config.yaml").read_text())
    # a run without kNN says so instead of inventing a number
    again = (export_run(run, tmp_path / "e2") / "README.md").read_text()
    assert "kNN top-1 was not measured" in again and "| kNN" not in again
