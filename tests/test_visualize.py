"""`supmim visualize` and the grid the trainer can save at the end of a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from _fixtures import make_image_folder
from supmim.cli import main
from supmim.config import build_config
from supmim.errors import ConfigError
from supmim.models import create_vit, model_arguments
from supmim.models.joint import SupMimModel
from supmim.targets import TokenizerConfig, VQTokenizer, build_target
from supmim.visualize import mim_columns, patch_mask_to_pixels, save_run_grid

TINY_TOK = dict(channels=8, codebook_size=16, code_dim=8)


def tiny_model(target: str, tmp_path: Path, mim: bool = True) -> SupMimModel:
    tok = None
    if target == "vq":
        torch.manual_seed(0)
        t = VQTokenizer(TokenizerConfig(factor=4, img_size=16, **TINY_TOK)).train()
        t(torch.rand(8, 3, 16, 16))  # initialise the codebook from data
        t.eval().save(tmp_path / "tok")
        tok = tmp_path / "tok"
    cfg = build_config(preset="tiny-test", overrides=[f"mim.target={target}",
                                                      f"mim.enabled={str(mim).lower()}"],
                       extra={"mim.tokenizer": str(tok)} if tok else None)
    m = cfg.model
    tgt = build_target(target, img_size=m.img_size, patch_size=m.patch_size, in_chans=3,
                       tokenizer=tok) if mim else None
    torch.manual_seed(0)
    return SupMimModel(create_vit(m, num_classes=3), mean=[0.5] * 3, std=[0.25] * 3,
                       target=tgt, **model_arguments(cfg)).eval()


def test_columns_paste_visible_patches_and_show_predictions(tmp_path) -> None:
    model = tiny_model("vq", tmp_path)
    images = torch.randn(3, 3, 16, 16)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[:, ::2] = True
    cols = mim_columns(model, images, mask)
    assert list(cols) == ["original", "masked input", "MIM prediction", "tokenizer reconstruction"]
    pix = patch_mask_to_pixels(mask, (4, 4), 4).expand(-1, 3, -1, -1)
    original, pred = cols["original"], cols["MIM prediction"]
    assert original is not None and pred is not None
    torch.testing.assert_close(original, model.unnormalize(images))
    assert torch.equal(pred[~pix], original[~pix])  # visible patches pasted back
    assert torch.all(cols["masked input"][pix] == 0.5)  # hidden patches greyed
    # the hidden area is the tokenizer's decoding of the decoder's argmax ids
    ids = model.mim_targets(images)
    with torch.no_grad():
        guess = model.mim_predict(images, mask).argmax(-1)
    decoded = model.target.decode(torch.where(mask, guess, ids))
    assert torch.equal(pred[pix], decoded[pix])
    torch.testing.assert_close(cols["tokenizer reconstruction"], model.target.decode(ids))
    assert not model.training


def test_pixel_and_hog_columns(tmp_path) -> None:
    images = torch.randn(2, 3, 16, 16)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, 0] = False
    pixel = mim_columns(tiny_model("pixel", tmp_path), images, mask)
    assert list(pixel) == ["original", "masked input", "MIM prediction"]
    assert pixel["MIM prediction"].shape == (2, 3, 16, 16)
    assert torch.equal(pixel["MIM prediction"][..., :4, :4], pixel["original"][..., :4, :4])
    hog = mim_columns(tiny_model("hog", tmp_path), images, mask)
    assert hog["MIM prediction"] is None  # HOG has no pixel form


def test_save_run_grid_writes_a_png(tmp_path) -> None:
    data = TensorDataset(torch.randn(20, 3, 16, 16), torch.zeros(20, dtype=torch.long))
    for target, cols in (("vq", 4), ("pixel", 3), ("hog", 3)):
        path = save_run_grid(tiny_model(target, tmp_path), data, tmp_path / f"{target}.png", n=5)
        width, height = Image.open(path).size
        assert width == pytest.approx(cols * 130, abs=2) and height > 5 * 100
    with pytest.raises(ConfigError, match="no MIM branch"):
        save_run_grid(tiny_model("pixel", tmp_path, mim=False), data, tmp_path / "x.png")


def test_visualize_cli_on_vq_and_pixel_runs(tmp_path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", train_per_class=16, test_per_class=4)
    tiny_model("vq", tmp_path)  # writes tmp_path / "tok"
    common = ["--data", str(data), "--preset", "tiny-test", "--set", "data.val_fraction=0.25",
              "--set", "train.max_steps=2", "--quiet"]
    for target, extra in (("vq", ["--tokenizer", str(tmp_path / "tok")]), ("pixel", [])):
        run = tmp_path / f"run_{target}"
        assert main(["train", *common, "--target", target, *extra, "--out", str(run)]) == 0
        out = tmp_path / f"grid_{target}.png"
        assert main(["visualize", str(run), "--data", str(data), "--out", str(out),
                     "--n", "4"]) == 0
        assert f"wrote {out}" in capsys.readouterr().out
        assert Image.open(out).size[1] > 4 * 100
    base = tmp_path / "run_base"
    assert main(["train", *common, "--no-mim", "--out", str(base)]) == 0
    assert main(["visualize", str(base), "--out", str(tmp_path / "b.png")]) == 2
    assert "without MIM" in capsys.readouterr().err
