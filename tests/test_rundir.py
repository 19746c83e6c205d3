"""A run directory describes itself: every checkpoint rebuilds its model bit for bit, moved
and old-format run directories still load, and a target registered outside supmim trains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _fixtures import make_image_folder
from supmim.cli import main
from supmim.config import build_config
from supmim.engine.loop import Callback
from supmim.evaluation.loading import load_model
from supmim.export import export_run
from supmim.models.masking import RandomMasking, sample_masks
from supmim.run import CHECKPOINT_FORMAT, RunDir
from supmim.targets import MimTarget, TokenizerConfig, VQTokenizer, patchify, register_target
from supmim.targets import registry
from supmim.training import train


class _Keep(Callback):
    """Keeps the trainer, to compare the trained model with what the run directory rebuilds."""

    def on_fit_end(self, trainer, summary):
        self.trainer = trainer
        return None


def _tokenizer(folder: Path) -> Path:
    torch.manual_seed(0)
    VQTokenizer(TokenizerConfig(codebook_size=13, img_size=16, channels=8)).eval().save(folder)
    return folder


def _cfg(data: Path, *overrides: str, tokenizer: Path | None = None):
    extra = {"data.data": str(data), "data.val_fraction": 0.0}
    if tokenizer is not None:
        extra["mim.tokenizer"] = str(tokenizer)
    return build_config(preset="tiny-test", extra=extra,
                        overrides=["train.epochs=1", "data.batch_size=8", *overrides])


def _batch(model, n: int = 4):
    g = torch.Generator().manual_seed(5)
    images = torch.randn(n, 3, 16, 16, generator=g)
    mask = sample_masks(RandomMasking((4, 4), 0.5), range(n), epoch=0, seed=1)
    return images, mask


RECIPES = {  # one of every way the rebuilt model could differ from the trained one
    "vq-soft-mask_token-cls": ["mim.target=vq", "mim.token_loss=soft", "mim.mode=mask_token",
                               "model.global_pool=token", "train.ema=true"],
    "pixel-gap-one-pass": ["mim.target=pixel", "mim.passes=1", "mim.norm_pix=false"],
    "hog-deep-decoder": ["mim.target=hog", "mim.decoder_depth=2"],
    "supervised": ["mim.enabled=false"],
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_build_model_is_the_trained_model_bit_for_bit(tmp_path, recipe):
    data = make_image_folder(tmp_path / "data")
    tok = _tokenizer(tmp_path / "tok") if "vq" in recipe else None
    keep = _Keep()
    train(_cfg(data, *RECIPES[recipe], tokenizer=tok), tmp_path / "run", progress=False,
          callbacks=[keep])
    trained = keep.trainer.model.eval()
    run = RunDir(tmp_path / "run")
    meta = json.loads((run.checkpoint("last") / "meta.json").read_text())
    assert meta["format"] == CHECKPOINT_FORMAT and meta["classes"] == ["c0", "c1", "c2"]
    rebuilt = run.build_model("last")
    a, b = trained.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k].cpu(), b[k]) for k in a)
    images, mask = _batch(trained)
    with torch.no_grad():
        assert torch.equal(trained.encoder(images), rebuilt.encoder(images))
        if trained.has_mim:
            assert meta["target"]["name"] == RECIPES[recipe][0].split("=")[1]
            assert torch.equal(trained.mim_targets(images), rebuilt.mim_targets(images))
            assert torch.equal(trained.mim_loss(images, mask)[0], rebuilt.mim_loss(images, mask)[0])
        else:
            assert meta["target"] is None and rebuilt.target is None
    if "vq" in recipe:  # the tokenizer is the run's own copy, recorded by a relative path
        assert meta["target"]["options"]["tokenizer"] == "tokenizer"
        assert meta["target"]["options"]["soft_temperature"] == pytest.approx(0.03)
        ema = run.encoder_state("last", "auto")  # auto = the EMA weights when kept
        assert all(torch.equal(ema[k], v.cpu())
                   for k, v in keep.trainer.ema.module.state_dict().items())


def test_a_moved_run_directory_rebuilds_without_the_original_tokenizer(tmp_path):
    data = make_image_folder(tmp_path / "data")
    tok = _tokenizer(tmp_path / "tok")
    train(_cfg(data, "mim.target=vq", tokenizer=tok), tmp_path / "run", progress=False)
    shutil.rmtree(tok)
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(tmp_path / "run"), moved)
    model = RunDir(moved).build_model()
    assert model.target.tokenizer.codebook_size == 13
    assert RunDir(moved).config().mim.tokenizer == str(moved / "tokenizer")


def _make_old_format(run: Path) -> None:
    """What a run written before checkpoints described themselves looks like."""
    for meta_path in run.glob("checkpoints/*/meta.json"):
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({k: meta[k] for k in ("epoch", "step", "end_of_epoch",
                                                              "eval")}))


def test_an_old_format_run_exports_evaluates_and_resumes(tmp_path):
    data = make_image_folder(tmp_path / "data")
    cfg = _cfg(data, "mim.target=pixel", "train.epochs=2")
    train(cfg, tmp_path / "new", progress=False)
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    _make_old_format(tmp_path / "old")
    new, old = RunDir(tmp_path / "new"), RunDir(tmp_path / "old")
    assert old.info().legacy and not new.info().legacy
    assert old.info().config.to_dict() == new.info().config.to_dict()
    assert old.info().target == new.info().target
    a, b = new.build_model().state_dict(), old.build_model().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    export_run(tmp_path / "old", tmp_path / "export")
    loaded = load_model(str(tmp_path / "old"))
    assert loaded.label_names == ["c0", "c1", "c2"]
    assert loaded.data_config == load_model(str(tmp_path / "new")).data_config
    # ...and it resumes: two more epochs on top of the old checkpoints
    assert main(["train", "--out", str(tmp_path / "old"), "--resume", "--epochs", "3",
                 "--quiet"]) == 0
    assert RunDir(tmp_path / "old").info().epoch == 3
    assert not RunDir(tmp_path / "old").info().legacy  # new checkpoints describe themselves


def test_the_callers_config_is_not_changed(tmp_path):
    data = make_image_folder(tmp_path / "data")
    cfg = _cfg(data, "mim.target=vq", tokenizer=_tokenizer(tmp_path / "tok"))
    before = cfg.to_dict()
    train(cfg, tmp_path / "run", progress=False)
    assert cfg.to_dict() == before  # the run's own tokenizer copy is not written back


@register_target("toy-mean")
class _MeanColour(MimTarget):
    """A toy target defined outside supmim: each patch's mean colour, (B, N, C)."""

    kind = "regression"

    def __init__(self, *, img_size, patch_size, in_chans=3, scale: float = 1.0) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans)
        self.out_dim, self.scale = in_chans, scale

    def compute(self, images):
        patches = patchify(images, self.patch_size)  # (B, N, p*p*C) in (p, p, C) order
        return self.scale * patches.view(*patches.shape[:2], -1, self.in_chans).mean(2)

    @classmethod
    def options_from(cls, mim):
        return {"scale": 2.0}


def test_a_target_registered_outside_supmim_trains_from_config_and_cli(tmp_path):
    toy_target = "toy-mean"  # registered above by the decorator alone
    data = make_image_folder(tmp_path / "data")
    assert "toy-mean" in registry.TargetNames()
    assert build_config(overrides=[f"mim.target={toy_target}"]).mim.target == toy_target
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny-test", "--data", str(data), "--out", str(out),
                 "--target", toy_target, "--epochs", "1", "--set", "data.batch_size=8",
                 "--quiet"]) == 0
    run = RunDir(out)
    assert run.info().target == {"name": "toy-mean", "options": {"scale": 2.0}}
    model = run.build_model()
    assert isinstance(model.target, _MeanColour) and model.target.scale == 2.0
    images, mask = _batch(model)
    loss, acc = model.mim_loss(images, mask)
    assert torch.isfinite(loss) and acc is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == "toy-mean" and summary["mim"]
