"""The trainer end to end: lambda = 0 is the baseline, resume is exact, the run directory is
complete, and real images are learned."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from supmim.config import build_config
from supmim.training import train
from tests._fixtures import make_image_folder

SHARED = Path(os.environ.get("SUPMIM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
CIFAR_SMALL = SHARED / "cifar10_small_5k_1k_jpeg_q75.tar.gz"


def tiny_config(data: Path, *overrides: str, cache: Path | None = None):
    extra = {"data.data": str(data), "mim.target": "pixel", "data.val_fraction": 0.0}
    if cache is not None:
        extra["data.cache_dir"] = str(cache)
    return build_config(preset="tiny-test", extra=extra, overrides=list(overrides))


def encoder_weights(run: Path) -> dict[str, torch.Tensor]:
    folder = sorted((run / "checkpoints").glob("epoch_*"))[-1]
    return {k: v for k, v in load_file(str(folder / "model.safetensors")).items()
            if k.startswith("encoder.")}


def test_lambda_zero_reproduces_the_baseline_exactly(tmp_path):
    """MIM computed with weight 0 trains the encoder bit-for-bit like the baseline, with
    drop-path, random crops and flips on, over two epochs."""
    data = make_image_folder(tmp_path / "data")
    common = ("model.drop_path=0.2", "train.epochs=2", "data.batch_size=8", "train.clip_grad=1.0")
    base = train(tiny_config(data, *common, "mim.enabled=false"), tmp_path / "base", progress=False)
    zero = train(tiny_config(data, *common, "mim.weight=0.0"), tmp_path / "zero", progress=False)
    assert zero["mim"] and not base["mim"]
    a, b = encoder_weights(tmp_path / "base"), encoder_weights(tmp_path / "zero")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert base["test"] == zero["test"]
    # ...and a non-zero weight does change the encoder (the check above can fail).
    train(tiny_config(data, *common, "mim.weight=1.0"), tmp_path / "one", progress=False)
    c = encoder_weights(tmp_path / "one")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_continues_exactly(tmp_path):
    data = make_image_folder(tmp_path / "data")
    cfg = tiny_config(data, "train.epochs=3", "data.batch_size=8", "model.drop_path=0.1")
    full = train(cfg, tmp_path / "full", progress=False)
    cfg_short = tiny_config(data, "train.epochs=3", "data.batch_size=8", "model.drop_path=0.1")
    from supmim.engine.loop import Trainer
    from supmim.run import RunDir
    t = Trainer(cfg_short, tmp_path / "part", progress=False)
    t.setup()
    RunDir(tmp_path / "part").write_start(cfg_short, t.data)
    t.train_one_epoch(0)
    t.save_checkpoint(0, {})
    resumed = train(cfg_short, tmp_path / "part", resume=True, progress=False)
    a, b = encoder_weights(tmp_path / "full"), encoder_weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["test"] == resumed["test"]


def test_run_directory_is_complete(tmp_path):
    data = make_image_folder(tmp_path / "data")
    summary = train(tiny_config(data, "train.epochs=2", "data.batch_size=8", "train.ema=true"),
                    tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "classes.json",
                 "data_stats.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert {"eval_top1", "eval_top5", "train_loss", "train_loss_mim", "eval_ema_top1"} <= set(epochs[0])
    assert any(r["type"] == "train" and "lr" in r for r in lines)
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "epoch_0002" / "ema.safetensors").is_file()
    assert 0 <= summary["test"]["top1"] <= 100 and summary["test"]["n"] == 24
    assert "test_ema" in summary
    assert summary["mim_grid"] == "mim_grid.png" and (run / "mim_grid.png").stat().st_size > 0
    state = torch.load(run / "checkpoints" / "epoch_0002" / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == summary["steps"]


def test_existing_run_is_not_overwritten(tmp_path):
    from supmim.errors import ConfigError
    data = make_image_folder(tmp_path / "data")
    cfg = tiny_config(data, "data.batch_size=8")
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_SMALL.is_file(), reason=f"shared CIFAR-10 subset not found at {CIFAR_SMALL}")
@pytest.mark.parametrize("target", ["pixel", "hog"])
def test_short_training_on_real_cifar_images_learns(tmp_path, target):
    cfg = build_config(preset="cifar10", extra={
        "data.data": str(CIFAR_SMALL), "data.cache_dir": str(tmp_path / "cache"),
        "mim.target": target}, overrides=[
        "model.embed_dim=64", "model.depth=2", "model.num_heads=2", "train.epochs=2",
        "data.batch_size=64", "data.num_workers=0", "train.warmup_epochs=0.2",
        "data.val_fraction=0.1", "train.lr=2e-3"])
    summary = train(cfg, tmp_path / "run", progress=False)
    # 10 classes: chance is 10%; 2 short epochs of a small ViT reach well above it.
    assert summary["test"]["top1"] > 20.0, summary["test"]
    assert summary["val"]["n"] == 500 and summary["test"]["n"] == 1000
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["type"] == "epoch"]
    # the MIM task is being learned too: epoch means (about 70 steps each) go down
    assert epochs[1]["train_loss_mim"] < epochs[0]["train_loss_mim"], epochs


def test_soft_token_targets_train_end_to_end(tmp_path):
    from tests.test_targets import trained_tiny
    trained_tiny(4).save(tmp_path / "tok")
    data = make_image_folder(tmp_path / "data", classes=3)
    losses = {}
    for loss in ("hard", "soft"):
        cfg = tiny_config(data, "mim.target=vq", f"mim.tokenizer={tmp_path / 'tok'}",
                          f"mim.token_loss={loss}", "mim.soft_temperature=0.5")
        summary = train(cfg, tmp_path / loss, progress=False)
        rows = [json.loads(x) for x in (tmp_path / loss / "metrics.jsonl").read_text().splitlines()]
        epoch = [r for r in rows if r["type"] == "epoch"][-1]
        assert summary["test"]["n"] > 0 and 0.0 <= epoch["train_mim_acc"] <= 1.0
        losses[loss] = epoch["train_loss_mim"]
    # A warm soft target has entropy, so its cross-entropy sits above the hard one's.
    assert losses["soft"] > losses["hard"] > 0.0, losses
