"""Stages: a run starts from another run's encoder (new head for a new label set), with MIM
on or off; layer-wise lr decay for fine-tuning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from supmim.config import build_config
from supmim.engine.loop import Trainer
from supmim.training import train
from supmim.errors import CheckpointError
from supmim.export import export_run, load_run_encoder
from tests._fixtures import make_image_folder


def _cfg(data: Path, *overrides: str):
    return build_config(preset="tiny-test", extra={"data.data": str(data), "mim.target": "pixel",
                                                   "data.val_fraction": 0.0},
                        overrides=["data.batch_size=8", *overrides])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stage1")
    data = make_image_folder(root / "data", classes=4, train_per_class=10)
    train(_cfg(data, "train.ema=false"), root / "run", progress=False)
    return root / "run", export_run(root / "run", root / "export")


@pytest.mark.parametrize("source", ["run", "export"])
def test_init_from_loads_the_encoder_and_a_new_head(tmp_path, pretrained, source):
    run, export = pretrained
    data = make_image_folder(tmp_path / "data", classes=3)  # a different label set
    src = run if source == "run" else export
    t = Trainer(_cfg(data, f"train.init_from={src}", "mim.enabled=false"), tmp_path / "ft",
                progress=False)
    t.setup()
    vit, _, _ = load_run_encoder(run)
    mine, theirs = t.model.encoder.state_dict(), vit.state_dict()
    body = [k for k in theirs if not k.startswith("head.")]
    assert all(torch.equal(mine[k], theirs[k]) for k in body)
    assert mine["head.weight"].shape == (3, 32) and theirs["head.weight"].shape == (4, 32)
    assert t.init_report["new"] == ["head.weight", "head.bias"]


@pytest.mark.parametrize("source", ["run", "export"])
@pytest.mark.parametrize("same_names", [True, False])
def test_head_kept_only_for_the_same_class_names(tmp_path, pretrained, source, same_names):
    """Four classes on both sides: the head is kept only when the names match too (a new
    4-class dataset must not inherit another dataset's class order)."""
    run, export = pretrained
    data = make_image_folder(tmp_path / "data", classes=4)
    if not same_names:
        for folder in sorted((data / "train").iterdir()) + sorted((data / "test").iterdir()):
            folder.rename(folder.with_name("other_" + folder.name))
    t = Trainer(_cfg(data, f"train.init_from={run if source == 'run' else export}"),
                tmp_path / "ft", progress=False)
    t.setup()
    theirs = load_run_encoder(run)[0].state_dict()["head.weight"]
    kept = torch.equal(t.model.encoder.state_dict()["head.weight"], theirs)
    assert kept == same_names
    assert t.init_report["new"] == ([] if same_names else ["head.weight", "head.bias"])


def test_a_bare_weights_file_keeps_a_head_of_the_right_shape(tmp_path, pretrained):
    """Without class names on the source side, the number of classes decides."""
    _, export = pretrained
    data = make_image_folder(tmp_path / "data", classes=4)
    weights = tmp_path / "vit.safetensors"
    weights.write_bytes((export / "model.safetensors").read_bytes())
    t = Trainer(_cfg(data, f"train.init_from={weights}"), tmp_path / "ft", progress=False)
    t.setup()
    assert t.init_report["new"] == []


def test_init_from_a_run_then_fine_tune_with_mim(tmp_path, pretrained):
    run, _ = pretrained
    data = make_image_folder(tmp_path / "data", classes=3)
    summary = train(_cfg(data, f"train.init_from={run}", "train.layer_decay=0.65"),
                    tmp_path / "ft", progress=False)
    assert summary["init_from"] == str(run) and summary["mim"]


def test_init_from_resamples_the_position_embedding(tmp_path, pretrained):
    _, export = pretrained
    data = make_image_folder(tmp_path / "data", classes=3, size=24)
    t = Trainer(_cfg(data, f"train.init_from={export}", "model.img_size=24"), tmp_path / "r",
                progress=False)
    t.setup()
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed
    source = load_file(str(export / "model.safetensors"))["pos_embed"]  # (1, 1 + 4x4, 32)
    expected = resample_abs_pos_embed(source, new_size=[6, 6], num_prefix_tokens=1)
    assert t.model.encoder.pos_embed.shape == (1, 37, 32)  # class token + 6x6 patches
    assert torch.equal(t.model.encoder.pos_embed.data, expected)


def test_init_from_refuses_another_architecture(tmp_path, pretrained):
    _, export = pretrained
    data = make_image_folder(tmp_path / "data", classes=3)
    t = Trainer(_cfg(data, f"train.init_from={export}", "model.embed_dim=48"), tmp_path / "x",
                progress=False)
    with pytest.raises(CheckpointError, match="does not fit"):
        t.setup()
    t = Trainer(_cfg(data, f"train.init_from={tmp_path}"), tmp_path / "y", progress=False)
    with pytest.raises(CheckpointError, match="not a supmim run directory"):
        t.setup()


def test_layer_decay_scales_the_lr_by_depth(tmp_path):
    data = make_image_folder(tmp_path / "data")
    t = Trainer(_cfg(data, "train.layer_decay=0.5", "model.depth=3"), tmp_path / "r",
                progress=False)
    t.setup()
    scale = {}
    for group in t.optimizer.param_groups:
        for p in group["params"]:
            scale[id(p)] = group["lr_scale"]
    named = dict(t.model.named_parameters())
    # stem 0.5^4, block i 0.5^(3-i), final norm / head / decoder 1
    assert scale[id(named["encoder.patch_embed.proj.weight"])] == pytest.approx(0.5 ** 4)
    for i in range(3):
        assert scale[id(named[f"encoder.blocks.{i}.attn.qkv.weight"])] == pytest.approx(0.5 ** (3 - i))
    for name in ("encoder.head.weight", "decoder.head.weight", "decoder.embed.weight"):
        assert scale[id(named[name])] == 1.0
    # the scheduler applies the scale
    t.scheduler.step_update(num_updates=5)
    lrs = {g["lr_scale"]: g["lr"] for g in t.optimizer.param_groups}
    assert lrs[0.5 ** 4] == pytest.approx(lrs[1.0] * 0.5 ** 4)
