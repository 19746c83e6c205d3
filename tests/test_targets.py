"""Tests for the frozen MIM targets (pixel, HOG, VQ) and the small VQ tokenizer."""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from supmim.errors import CheckpointError, ConfigError
from supmim.targets import (HogTarget, MimTarget, PixelTarget, TokenizerConfig, TokenizerTrainConfig,
                            VQTarget, VQTokenizer, build_target, evaluate_tokenizer, patchify,
                            train_tokenizer, unpatchify)

TINY = dict(channels=8, codebook_size=16, code_dim=8)  # fast tokenizer for shape/IO tests
DATA_DIR = Path(os.environ.get("SUPMIM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
CIFAR_SMALL = DATA_DIR / "cifar10_small_5k_1k_jpeg_q75.tar.gz"


def smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) structured images in [0, 1]: coloured Gaussian blobs on gradients."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    a, b, c = (torch.rand(n, 3, 1, 1, generator=g) for _ in range(3))
    img = 0.5 * a + 0.3 * (b - 0.5) * xx + 0.3 * (c - 0.5) * yy
    for _ in range(3):
        cx, cy = torch.rand(2, n, 1, 1, 1, generator=g)
        r = 0.1 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
        col = torch.rand(n, 3, 1, 1, generator=g) - 0.5
        img = img + col * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    return img.clamp(0, 1)


def trained_tiny(factor: int = 4, steps: int = 3, **kw: int) -> VQTokenizer:
    """A tiny tokenizer whose codebook was initialised from data (a few training forwards)."""
    torch.manual_seed(0)
    tok = VQTokenizer(TokenizerConfig(factor=factor, **{**TINY, **kw})).train()
    for i in range(steps):
        tok(smooth_images(8, seed=i))
    return tok.eval()


# ----------------------------------------------------------------------------- pixel


def test_pixel_shapes_and_dtype() -> None:
    t = PixelTarget(img_size=32, patch_size=8, in_chans=3)
    out = t(torch.rand(2, 3, 32, 32))
    assert t.kind == "regression" and t.out_dim == 8 * 8 * 3 and t.grid == (4, 4)
    assert out.shape == (2, 16, 192) and out.dtype == torch.float32


def test_pixel_patch_order_matches_timm_patch_embed() -> None:
    from timm.layers import PatchEmbed

    p, c = 4, 3
    # A PatchEmbed whose output channel d copies pixel (i, j, ch) of its patch, d = (i*p + j)*C + ch:
    # its tokens must equal our (p, p, C)-ordered rows in the same patch order.
    embed = PatchEmbed(img_size=16, patch_size=p, in_chans=c, embed_dim=p * p * c)
    with torch.no_grad():
        embed.proj.weight.zero_()
        embed.proj.bias.zero_()
        for i in range(p):
            for j in range(p):
                for ch in range(c):
                    embed.proj.weight[(i * p + j) * c + ch, ch, i, j] = 1.0
    x = torch.rand(2, c, 16, 16)
    t = PixelTarget(img_size=16, patch_size=p, in_chans=c, norm_pix=False)
    torch.testing.assert_close(t(x), embed(x).detach())

    # And a known image: patch k (row-major) is the constant k / N.
    gh, gw = 3, 5
    k = torch.arange(gh * gw, dtype=torch.float32).reshape(gh, gw) / (gh * gw)
    img = k.repeat_interleave(p, 0).repeat_interleave(p, 1).expand(1, c, -1, -1)
    rows = PixelTarget(img_size=(gh * p, gw * p), patch_size=p, in_chans=c, norm_pix=False)(img)[0]
    torch.testing.assert_close(rows, (torch.arange(gh * gw) / (gh * gw))[:, None].expand(-1, p * p * c))


def test_pixel_norm_and_raw() -> None:
    x = torch.rand(2, 3, 16, 16)
    x[0, :, :4, :4] = 0.3  # one constant patch
    norm = PixelTarget(img_size=16, patch_size=4)(x)
    raw = PixelTarget(img_size=16, patch_size=4, norm_pix=False)(x)
    torch.testing.assert_close(raw, patchify(x, 4))
    textured = norm[1]
    torch.testing.assert_close(textured.mean(-1), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(textured.var(-1), torch.ones(16), atol=1e-3, rtol=0)
    assert norm[0, 0].abs().max() == 0  # constant patch -> zeros, not NaN
    assert torch.isfinite(norm).all()


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), c=st.integers(1, 4), p=st.integers(1, 5), gh=st.integers(1, 4),
       gw=st.integers(1, 4))
def test_patchify_roundtrip(b: int, c: int, p: int, gh: int, gw: int) -> None:
    x = torch.rand(b, c, gh * p, gw * p)
    rows = patchify(x, p)
    assert rows.shape == (b, gh * gw, p * p * c)
    assert torch.equal(unpatchify(rows, p, (gh, gw), c), x)
    # Row k is the k-th patch in row-major order, its values in (p, p, C) order.
    k = (gh - 1) * gw
    torch.testing.assert_close(rows[:, k], x[:, :, -p:, :p].permute(0, 2, 3, 1).reshape(b, -1))


def test_pixel_decode() -> None:
    x = torch.rand(2, 3, 16, 16)
    t = PixelTarget(img_size=16, patch_size=4)
    torch.testing.assert_close(t.decode(t(x), reference=x), x, atol=1e-4, rtol=0)
    assert t.decode(t(x)) is None  # normalised patches need the reference's statistics
    raw = PixelTarget(img_size=16, patch_size=4, norm_pix=False)
    torch.testing.assert_close(raw.decode(raw(x)), x)
    torch.testing.assert_close(unpatchify(patchify(x, 4), 4, (4, 4), 3), x)


# ----------------------------------------------------------------------------- HOG


def test_hog_shapes_and_norm() -> None:
    t8 = HogTarget(img_size=32, patch_size=8, in_chans=3)
    assert t8.cell == 4 and t8.out_dim == 3 * 9 * 4
    t4 = HogTarget(img_size=32, patch_size=4, in_chans=1)
    assert t4.cell == 4 and t4.out_dim == 9
    x = torch.rand(2, 3, 32, 32)
    x[0, :, :9, :9] = 0.5  # a flat patch, flat one pixel beyond too: no gradient anywhere in it
    out = t8(x)
    assert out.shape == (2, 16, 108) and out.dtype == torch.float32
    norms = out.norm(dim=-1)
    assert norms[0, 0] == 0
    torch.testing.assert_close(norms[1], torch.ones(16))
    with pytest.raises(ConfigError, match="does not divide"):
        HogTarget(img_size=32, patch_size=8, cell=3)


def test_hog_edges_land_in_the_hand_computed_bins() -> None:
    t = HogTarget(img_size=16, patch_size=8, in_chans=1)
    x = torch.zeros(1, 1, 16, 16)
    x[..., 5:] = 1.0  # vertical edge inside the left patches: a horizontal gradient, angle 0
    bins = t(x)[0].reshape(4, 4, 1, 9).sum(dim=(1, 2))  # (N, 9), cells and channel summed
    assert bins[0, 0] > 0.99 * bins[0].sum()  # all mass in bin 0 (centre 0 degrees)
    assert bins[2, 0] > 0.99 * bins[2].sum()
    assert bins[1].sum() == 0  # right patches are flat
    # Horizontal edge: vertical gradient, 90 degrees, halfway between bins 4 (80) and 5 (100).
    bins = t(x.transpose(-1, -2))[0].reshape(4, 4, 1, 9).sum(dim=(1, 2))
    assert bins[0, 4] == pytest.approx(bins[0, 5].item(), rel=1e-4)
    assert bins[0, 4] + bins[0, 5] > 0.99 * bins[0].sum()
    # Sobel gives the same bins for these edges.
    sob = HogTarget(img_size=16, patch_size=8, in_chans=1, gradient="sobel")
    assert sob(x)[0].reshape(4, 36).argmax(-1)[0] % 9 == 0


def test_hog_invariant_to_brightness_and_contrast() -> None:
    t = HogTarget(img_size=32, patch_size=8)
    x = torch.rand(2, 3, 32, 32) * 0.5
    torch.testing.assert_close(t(x + 0.3), t(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(t(x * 1.5), t(x), atol=1e-5, rtol=0)
    assert t.decode(t(x)) is None


# ----------------------------------------------------------------------------- VQ tokenizer


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_tokenizer_shapes(factor: int) -> None:
    tok = trained_tiny(factor)
    x = smooth_images(3)
    ids = tok.encode(x)
    assert ids.shape == (3, 32 // factor, 32 // factor) and ids.dtype == torch.int64
    assert 0 <= int(ids.min()) and int(ids.max()) < tok.codebook_size
    img = tok.decode(ids)
    assert img.shape == (3, 3, 32, 32) and 0 <= float(img.min()) and float(img.max()) <= 1
    recon, ids2, losses = tok(x)
    assert recon.shape == x.shape and torch.equal(ids, ids2)
    assert set(losses) >= {"recon", "commit"}


def test_tokenizer_trains_by_gradient_only_through_encoder_decoder() -> None:
    tok = VQTokenizer(TokenizerConfig(**TINY)).train()
    _, _, losses = tok(smooth_images(4))
    losses["loss"].backward()
    assert all(p.grad is not None for p in tok.encoder.parameters())
    assert all(p.grad is not None for p in tok.decoder.parameters())
    assert not list(tok.quantizer.parameters())  # EMA codebook: buffers, not parameters
    assert bool(tok.quantizer.initialized)


def test_tokenizer_save_load_roundtrip(tmp_path: Path) -> None:
    tok = trained_tiny(4)
    tok.metadata = {"note": "test"}
    tok.save(tmp_path / "tok")
    assert {p.name for p in (tmp_path / "tok").iterdir()} == {"tokenizer.safetensors", "tokenizer.json"}
    x = smooth_images(4, seed=7)
    for path in (tmp_path / "tok", tmp_path / "tok" / "tokenizer.safetensors"):
        loaded = VQTokenizer.load(path)
        assert loaded.config == tok.config and loaded.metadata == {"note": "test"}
        assert not loaded.training
        assert torch.equal(loaded.encode(x), tok.encode(x))
        torch.testing.assert_close(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)))


def test_tokenizer_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="supmim tokenizer train"):
        VQTokenizer.load(tmp_path / "nowhere")
    trained_tiny(4, steps=1).save(tmp_path / "t")
    weights, meta = tmp_path / "t" / "tokenizer.safetensors", tmp_path / "t" / "tokenizer.json"

    good = weights.read_bytes()
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="unreadable tokenizer weights"):
        VQTokenizer.load(tmp_path / "t")
    weights.write_bytes(good)

    cfg = json.loads(meta.read_text())
    cfg["config"]["channels"] = 16  # weights no longer fit
    meta.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        VQTokenizer.load(tmp_path / "t")
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable tokenizer config"):
        VQTokenizer.load(tmp_path / "t")
    meta.unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        VQTokenizer.load(weights)


# ----------------------------------------------------------------------------- VQ target


def test_vq_target_same_scale() -> None:
    tok = trained_tiny(4)  # trained at 32 px, 8x8 tokens
    t = VQTarget(tok, img_size=32, patch_size=4)
    x = smooth_images(2, seed=3)
    ids = t(x)
    assert t.kind == "tokens" and t.out_dim == 16 and t.grid == (8, 8) and t.tokenizer_size == (8 * 4, 8 * 4)
    assert ids.shape == (2, 64) and ids.dtype == torch.int64
    assert torch.equal(ids, tok.encode(x).flatten(1))  # row-major = ViT patch order
    img = t.decode(ids)
    assert img is not None and img.shape == (2, 3, 32, 32)
    logits = F.one_hot(ids, 16).float()
    assert torch.equal(t.decode(logits), img)


def test_vq_target_resizes_to_match_the_patch_grid() -> None:
    tok = trained_tiny(8)
    t = VQTarget(tok, img_size=32, patch_size=4)  # grid 8x8 needs 8*8 = 64 px tokenizer input
    assert t.tokenizer_size == (64, 64)
    x = smooth_images(2, seed=4)
    ids = t(x)
    assert ids.shape == (2, 64)
    up = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(ids, tok.encode(up.clamp(0, 1)).flatten(1))
    assert t.decode(ids).shape == (2, 3, 32, 32)  # resized back to the ViT's images


def test_vq_target_size_checks() -> None:
    tok = trained_tiny(4, steps=1)
    with pytest.raises(ConfigError, match="30x30.*patch size 4"):
        VQTarget(tok, img_size=30, patch_size=4)
    with pytest.raises(ConfigError, match="1-channel"):
        VQTarget(VQTokenizer(TokenizerConfig(in_chans=1, **TINY)), img_size=32, patch_size=4, in_chans=3)
    with pytest.raises(ConfigError, match="224x224.*14x14"):  # 16x downscale: too far from training
        VQTarget(trained_tiny(2, steps=1), img_size=224, patch_size=32)
    t = VQTarget(tok, img_size=32, patch_size=4)
    with pytest.raises(ConfigError, match="3x32x32 images got 3x16x16"):
        t(torch.rand(1, 3, 16, 16))


def test_code_distances_agree_with_encode_and_the_codebook() -> None:
    tok = trained_tiny(4)
    x = smooth_images(2, seed=5)
    d = tok.code_distances(x)  # (B, h, w, K)
    assert d.shape == (2, 8, 8, 16) and d.dtype == torch.float32
    assert torch.equal(d.argmin(-1), tok.encode(x))
    # Reference: explicit squared distances between the normalised latent and each code.
    z = F.normalize(tok.encoder(x * 2 - 1).permute(0, 2, 3, 1), dim=-1)
    ref = ((z[..., None, :] - tok.quantizer.embed) ** 2).sum(-1)
    torch.testing.assert_close(d, ref, atol=1e-5, rtol=1e-5)


def test_soft_vq_target_is_a_distribution_peaked_at_the_hard_id() -> None:
    tok = trained_tiny(4)
    x = smooth_images(3, seed=6)
    hard = VQTarget(tok, img_size=32, patch_size=4)(x)
    soft_t = VQTarget(tok, img_size=32, patch_size=4, soft_temperature=0.1)
    p = soft_t(x)
    assert soft_t.kind == "soft_tokens" and p.shape == (3, 64, 16) and p.dtype == torch.float32
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 64))
    assert torch.equal(p.argmax(-1), hard)
    # By hand for one patch: softmax(-d / (t * mean d)).
    d = tok.code_distances(x)[0, 0, 0]
    torch.testing.assert_close(p[0, 0], torch.softmax(-d / (0.1 * d.mean()), -1))
    # A colder temperature concentrates the mass on the hard id; a warmer one spreads it.
    peak = {t: VQTarget(tok, img_size=32, patch_size=4, soft_temperature=t)(x).max(-1).values.mean()
            for t in (0.01, 0.1, 1.0)}
    assert peak[0.01] > peak[0.1] > peak[1.0]
    assert peak[0.01] > 0.9
    with pytest.raises(ConfigError, match="soft_temperature must be > 0"):
        VQTarget(tok, img_size=32, patch_size=4, soft_temperature=0.0)


# ----------------------------------------------------------------------------- all targets


def all_targets(tmp_path: Path) -> list[MimTarget]:
    trained_tiny(4).save(tmp_path / "tok")
    return [build_target("vq", img_size=32, patch_size=4, in_chans=3, tokenizer=str(tmp_path / "tok")),
            build_target("pixel", img_size=32, patch_size=4, in_chans=3),
            build_target("hog", img_size=32, patch_size=8, in_chans=3)]


def test_targets_are_frozen_and_carry_no_grad(tmp_path: Path) -> None:
    x = smooth_images(2).requires_grad_(True)
    for t in all_targets(tmp_path):
        assert not [p for p in t.parameters() if p.requires_grad]
        t.train()
        assert not any(m.training for m in t.modules())  # stays in eval mode
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = t(x)
        assert not y.requires_grad
        assert y.dtype == (torch.int64 if t.kind == "tokens" else torch.float32)
        # Not an inference-mode tensor: a loss may save it for backward.
        pred = torch.zeros(y.shape[:2] + (t.out_dim,), requires_grad=True)
        if t.kind == "tokens":
            loss = F.cross_entropy(pred.flatten(0, 1), y.flatten())
        else:
            loss = ((pred * y) ** 2).mean() + F.mse_loss(pred, y)
        loss.backward()


def test_build_target_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vq, pixel, hog"):
        build_target("beit", img_size=32, patch_size=4, in_chans=3)
    with pytest.raises(ConfigError, match="supmim tokenizer train --data D --out T.*--tokenizer T"):
        build_target("vq", img_size=32, patch_size=4, in_chans=3)
    with pytest.raises(CheckpointError, match="supmim tokenizer train"):
        build_target("vq", img_size=32, patch_size=4, in_chans=3, tokenizer=str(tmp_path / "missing"))
    t = build_target("PIXEL", img_size=32, patch_size=4, in_chans=3, norm_pix=False)
    assert isinstance(t, PixelTarget) and not t.norm_pix


# ----------------------------------------------------------------------------- training


def test_train_tokenizer_short_run(tmp_path: Path) -> None:
    data = TensorDataset(smooth_images(512, seed=10), torch.zeros(512, dtype=torch.long))
    val = TensorDataset(smooth_images(128, seed=11), torch.zeros(128), torch.zeros(128))  # 3-tuples
    cfg = TokenizerConfig(channels=16, codebook_size=64, code_dim=16)
    summary = train_tokenizer(cfg, TokenizerTrainConfig(steps=150, batch_size=32, log_every=25, seed=0,
                                                        device="cpu"),
                              data, val, tmp_path / "run", progress=False)
    out = tmp_path / "run"
    for name in ("metrics.jsonl", "summary.json", "recon.png", "tokenizer.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [25, 50, 75, 100, 125, 150]
    assert rows[-1]["recon"] < 0.5 * rows[0]["recon"]
    assert set(summary) >= {"psnr", "usage", "perplexity", "steps", "seconds"}
    assert summary["steps"] == 150 and summary["psnr"] > 20 and summary["usage"] > 50
    assert 1 < summary["perplexity"] <= 64
    assert json.loads((out / "summary.json").read_text())["psnr"] == pytest.approx(summary["psnr"])
    tok = VQTokenizer.load(out)
    again = evaluate_tokenizer(tok, val)
    assert again["psnr"] == pytest.approx(summary["psnr"], abs=1e-4)
    assert tok.metadata["summary"]["steps"] == 150
    # A flat colour of the training distribution survives (GroupNorm made such images grey).
    flat = torch.tensor([0.45, 0.1, 0.3]).reshape(1, 3, 1, 1).expand(1, 3, 32, 32)
    colour = tok.decode(tok.encode(flat)).mean(dim=(2, 3))[0]
    torch.testing.assert_close(colour, flat[0, :, 0, 0], atol=0.15, rtol=0)
    assert colour.max() - colour.min() > 0.25  # true spread 0.35; grey would be ~0
    from PIL import Image
    assert Image.open(out / "recon.png").size[0] > 16 * 32


def test_train_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="factor"):
        TokenizerConfig(factor=3).validate()
    small = TensorDataset(torch.rand(4, 3, 32, 32))
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train_tokenizer(TokenizerConfig(**TINY), TokenizerTrainConfig(steps=1, batch_size=8), small, small,
                        tmp_path, progress=False)
    assert math.isfinite(evaluate_tokenizer(trained_tiny(4, steps=1), small, batch_size=2)["psnr"])


def _cifar_images(split: str, limit: int) -> torch.Tensor:
    """Up to ``limit`` images of a split of the small CIFAR-10 tarball, (n, 3, 32, 32) in [0, 1]."""
    from PIL import Image

    out = []
    with tarfile.open(CIFAR_SMALL) as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".jpg") and f"{split}/" in m.name:
                f = tar.extractfile(m)
                assert f is not None
                out.append(np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB")))
                if len(out) == limit:
                    break
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.slow
def test_train_tokenizer_on_real_cifar(tmp_path: Path) -> None:
    if not CIFAR_SMALL.is_file():
        pytest.skip(f"real data not found: {CIFAR_SMALL} (set SUPMIM_DATA_DIR to the shared data folder)")
    train = _cifar_images("train", 2500)  # sorted by class in the tarball: the first five
    val = _cifar_images("test", 256)
    cfg = TokenizerConfig(channels=16, codebook_size=128, code_dim=16)
    summary = train_tokenizer(cfg, TokenizerTrainConfig(steps=200, batch_size=32, log_every=50, device="cpu"),
                              TensorDataset(train), TensorDataset(val), tmp_path, progress=False)
    assert summary["psnr"] > 18.5 and summary["usage"] > 80  # measured 19.9 dB, 100%
