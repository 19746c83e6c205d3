"""Pretrained timm starts (``train.init_from`` = ``timm:NAME@FILE``, ``NAME@FILE``,
``local-dir:DIR``, ``hf-hub:ORG/NAME``): the weights timm loads and resamples reach our
encoder bit for bit, the head is kept only for the same number of classes, mean/std come from
the checkpoint's pretrained_cfg, and a Hub name offline is one clear error. Nothing downloads:
every checkpoint is a small timm ViT saved here."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import save_for_hf

from supmim.config import build_config
from supmim.engine.loop import Trainer
from supmim.errors import CheckpointError, ConfigError
from supmim.run import RunDir
from supmim.training import train
from tests._fixtures import make_image_folder

NAME = "vit_tiny_patch16_224"  # the tiny-test preset's architecture: 32 wide, 2 deep, 2 heads


def _cfg(data: Path, *overrides: str):
    return build_config(preset="tiny-test", extra={"data.data": str(data), "mim.target": "pixel",
                                                   "data.val_fraction": 0.0},
                        overrides=["data.batch_size=8", *overrides])


def _source(img_size: int = 16, patch_size: int = 4, num_classes: int = 3, seed: int = 1):
    """A randomly initialised timm ViT of the tiny-test width and depth."""
    torch.manual_seed(seed)
    return timm.create_model(NAME, pretrained=False, img_size=img_size, patch_size=patch_size,
                             embed_dim=32, depth=2, num_heads=2, num_classes=num_classes,
                             global_pool="avg")


def _save(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("pt") / "data", classes=3,
                             train_per_class=8, test_per_class=2)


@pytest.mark.parametrize("form", ["timm:{name}@{file}", "{name}@{file}"])
def test_a_local_file_reaches_the_encoder_bit_for_bit(tmp_path, data, form):
    file = _save(_source(num_classes=3), tmp_path / "vit.safetensors")
    t = Trainer(_cfg(data, f"train.init_from={form.format(name=NAME, file=file)}"),
                tmp_path / "run", progress=False)
    t.setup()
    theirs, mine = load_file(str(file)), t.model.encoder.state_dict()
    assert set(theirs) == set(mine)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)  # the 3-class head too
    assert t.init_report["new"] == []
    assert any("kept the checkpoint's 3-class head" in n for n in t.init_report["notes"])


def test_the_head_starts_fresh_for_another_number_of_classes(tmp_path, data, capsys):
    file = _save(_source(num_classes=5), tmp_path / "vit.safetensors")
    t = Trainer(_cfg(data, f"train.init_from=timm:{NAME}@{file}"), tmp_path / "run",
                progress=False)
    t.setup()
    theirs, mine = load_file(str(file)), t.model.encoder.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs if not k.startswith("head."))
    assert mine["head.weight"].shape == (3, 32)
    assert t.init_report["new"] == ["head.weight", "head.bias"]
    assert "classifies 5 classes, not these 3: the head starts fresh" in capsys.readouterr().out


def test_timm_resamples_the_patch_and_position_embeddings(tmp_path, data):
    """Patch 8 at 16 px (a 2x2 grid) -> our patch 4 at 16 px (4x4): the same numbers as
    timm's own resample functions give (the small version of ViT-B/16 -> B/14)."""
    src = _source(img_size=16, patch_size=8)
    file = _save(src, tmp_path / "vit_p8.safetensors")
    t = Trainer(_cfg(data, f"train.init_from=timm:{NAME}@{file}"), tmp_path / "run",
                progress=False)
    t.setup()
    enc, theirs = t.model.encoder, load_file(str(file))
    patch = resample_patch_embed(theirs["patch_embed.proj.weight"], [4, 4],
                                 interpolation="bicubic", antialias=True, verbose=False)
    pos = resample_abs_pos_embed(theirs["pos_embed"], new_size=[4, 4], num_prefix_tokens=1,
                                 interpolation="bicubic", antialias=True, verbose=False)
    assert theirs["patch_embed.proj.weight"].shape == (32, 3, 8, 8)
    assert enc.patch_embed.proj.weight.shape == (32, 3, 4, 4)
    assert torch.equal(enc.patch_embed.proj.weight.data, patch)
    assert enc.pos_embed.shape == (1, 17, 32) and torch.equal(enc.pos_embed.data, pos)
    assert torch.equal(enc.blocks[1].mlp.fc2.weight.data, theirs["blocks.1.mlp.fc2.weight"])


def test_a_local_dir_start_takes_mean_and_std_from_its_pretrained_cfg(tmp_path, data):
    src = _source(num_classes=7)
    src.pretrained_cfg = {**src.pretrained_cfg, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    save_for_hf(src, str(tmp_path / "hub"), safe_serialization=True)
    summary = train(_cfg(data, f"train.init_from=local-dir:{tmp_path / 'hub'}",
                         "train.max_steps=1"), tmp_path / "run", progress=False)
    assert summary["steps"] == 1
    run = RunDir(tmp_path / "run")
    assert run.config().data.mean == [0.1, 0.2, 0.3] and run.config().data.std == [0.4, 0.5, 0.6]
    assert run.info("last").data["mean"] == pytest.approx([0.1, 0.2, 0.3])
    # an explicit data.mean wins; only the unset std comes from the checkpoint
    t = Trainer(_cfg(data, f"train.init_from=local-dir:{tmp_path / 'hub'}",
                     "data.mean=[0.5,0.5,0.5]"), tmp_path / "run2", progress=False)
    t.setup()
    assert t.data.mean == (0.5, 0.5, 0.5) and t.data.std == pytest.approx((0.4, 0.5, 0.6))
    body = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(t.model.encoder.state_dict()[k], v) for k, v in body.items())


def test_a_folder_given_as_a_path_keeps_the_datasets_own_statistics(tmp_path, data):
    """The same folder without ``local-dir:`` is an export-folder start, as before: the
    data's statistics (0.5 for image folders), not the checkpoint's."""
    src = _source(num_classes=7)
    src.pretrained_cfg = {**src.pretrained_cfg, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    save_for_hf(src, str(tmp_path / "hub"), safe_serialization=True)
    t = Trainer(_cfg(data, f"train.init_from={tmp_path / 'hub'}"), tmp_path / "run",
                progress=False)
    t.setup()
    assert t.cfg.data.mean is None and t.data.mean == (0.5, 0.5, 0.5)
    assert torch.equal(t.model.encoder.pos_embed.data, src.pos_embed.data)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No Hub: offline mode and an empty cache, so nothing is fetched and nothing cached is
    found."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.mark.parametrize("value", ["hf-hub:timm/vit_tiny_patch16_224.augreg_in21k",
                                   "timm:vit_tiny_patch16_224.augreg_in21k", NAME])
def test_a_hub_start_offline_is_one_clear_error(tmp_path, data, offline, value):
    t = Trainer(_cfg(data, f"train.init_from={value}"), tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"offline\? .*timm:NAME@/path/model.safetensors"):
        t.setup()


@pytest.mark.parametrize("value, message", [
    ("timm:", "names no timm model"),
    (f"timm:{NAME}@", "without a weights file"),
    (f"timm:{NAME}@/w/vit.pth", "only .safetensors files are read"),
    ("hf-hub:", "names no model after the prefix"),
    ("local-dir:", "names no model after the prefix"),
])
def test_malformed_timm_forms_fail_in_config_validation(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        build_config(preset="tiny-test", extra={"train.init_from": value})


def test_missing_sources_fail_before_any_data_is_read(tmp_path):
    """The data folder does not exist: the source's error must come first."""
    for value, message in ((f"timm:{NAME}@{tmp_path / 'no.safetensors'}", "does not exist"),
                           (f"local-dir:{tmp_path}", "is not a folder with config.json"),
                           ("timm:not_a_model_xyz", "is not a timm model")):
        t = Trainer(_cfg(tmp_path / "no-data", f"train.init_from={value}"), tmp_path / "r",
                    progress=False)
        with pytest.raises(CheckpointError, match=message):
            t.setup()


def test_another_architecture_is_refused_with_the_fix(tmp_path, data):
    file = _save(_source(), tmp_path / "vit.safetensors")
    t = Trainer(_cfg(data, f"train.init_from=timm:{NAME}@{file}", "model.embed_dim=48"),
                tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"does not fit the model .*model\.\* keys"):
        t.setup()
