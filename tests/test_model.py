"""The joint model: masked forward, loss on hidden patches only, gradients from both losses."""

from __future__ import annotations

import pytest
import torch

from supmim.config import ModelConfig
from supmim.models.masking import RandomMasking, sample_masks
from supmim.models import SupMimModel, create_vit, forward_masked
from supmim.models.encoder import gather_rows, hidden_indices
from supmim.targets import build_target

MODEL = ModelConfig(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2,
                    drop_path=0.0)


def make_model(mode: str = "drop", target: str = "pixel", pool: str = "avg",
               depth: int = 1, soft_temperature: float | None = None) -> SupMimModel:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**MODEL.__dict__, "global_pool": pool})
    if target == "vq":  # an untrained tokenizer with an 11-code codebook, 4x4 tokens
        from supmim.targets import TokenizerConfig, VQTokenizer
        tgt = build_target("vq", img_size=16, patch_size=4, in_chans=3,
                           tokenizer=VQTokenizer(TokenizerConfig(codebook_size=11, img_size=16,
                                                                 channels=8)),
                           soft_temperature=soft_temperature)
    else:
        tgt = build_target(target, img_size=16, patch_size=4, in_chans=3)
    return SupMimModel(create_vit(cfg, num_classes=5), mean=[0.5] * 3, std=[0.25] * 3,
                       target=tgt, mask_token=mode == "mask_token", decoder_dim=32,
                       decoder_heads=2, decoder_depth=depth).eval()


def batch(n: int = 4):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 16, 16, generator=g)
    labels = torch.randint(0, 5, (n,), generator=g)
    mask = sample_masks(RandomMasking((4, 4), 0.5), range(n), epoch=0, seed=0)
    return images, labels, mask


def _patchwise(mask: torch.Tensor, patch: int = 4, grid: int = 4) -> torch.Tensor:
    """(B, N) patch mask -> (B, 1, H, W) pixel mask."""
    m = mask.view(-1, 1, grid, grid).float()
    return m.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


@pytest.mark.parametrize("mode", ["drop", "mask_token"])
def test_hidden_patches_never_reach_the_mim_prediction(mode):
    model = make_model(mode)
    images, _, mask = batch()
    noise = torch.randn_like(images) * _patchwise(mask)  # changes hidden patches only
    with torch.no_grad():
        a = model.mim_predict(images, mask)
        b = model.mim_predict(images + noise, mask)
    assert torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():  # ...while visible patches do matter
        c = model.mim_predict(images + torch.randn_like(images) * (1 - _patchwise(mask)), mask)
    assert not torch.allclose(a, c, atol=1e-3)


def test_the_static_gather_picks_the_rows_a_boolean_index_picks():
    mask = sample_masks(RandomMasking((4, 4), 0.75), range(6), epoch=0, seed=3)
    x = torch.randn(6, 16, 5)
    static = hidden_indices(mask, 12)
    assert torch.equal(static, hidden_indices(mask))  # the nonzero fallback
    assert torch.equal(gather_rows(x, static), x[mask].view(6, 12, 5))
    assert torch.equal(gather_rows(x[..., 0], static), x[..., 0][mask].view(6, 12))


@pytest.mark.parametrize("mode", ["drop", "mask_token"])
@pytest.mark.parametrize("target", ["pixel", "vq"])
def test_the_loss_is_the_same_with_a_known_hidden_count(mode, target):
    """``num_masked`` (the trainer passes its masker's count) only makes the shapes static:
    same loss, same accuracy, same gradients as the nonzero path."""
    model = make_model(mode, target=target).train()
    images, _, mask = batch()
    results = []
    for count in (None, 8):
        model.zero_grad()
        torch.manual_seed(0)
        loss, acc = model.mim_loss(images, mask, num_masked=count)
        loss.backward()
        results.append((loss.detach(), acc, [p.grad.clone() for p in model.parameters()
                                             if p.grad is not None]))
    (a, acc_a, grads_a), (b, acc_b, grads_b) = results
    assert torch.equal(a, b) and (acc_a is None) == (acc_b is None)
    assert acc_a is None or torch.equal(acc_a, acc_b)
    assert len(grads_a) == len(grads_b) > 0
    assert all(torch.equal(g, h) for g, h in zip(grads_a, grads_b))


def test_drop_mode_encodes_only_visible_tokens():
    model = make_model("drop")
    images, _, mask = batch()
    z = forward_masked(model.encoder, images, mask, None)
    assert z.shape == (4, 1 + 8, 32)  # CLS + 8 of 16 patches visible
    z = forward_masked(model.encoder, images, mask, model.encoder.cls_token)  # any (1,1,D)
    assert z.shape == (4, 1 + 16, 32)


@pytest.mark.parametrize("target", ["pixel", "hog"])
def test_mim_loss_only_counts_hidden_positions(target, monkeypatch):
    model = make_model(target=target)
    images, _, mask = batch()
    with torch.no_grad():
        real = model.mim_targets(images)
        base, _ = model.mim_loss(images, mask)
        changed = real.clone()
        changed[~mask] += 100.0  # visible positions: must not matter
        monkeypatch.setattr(model, "mim_targets", lambda _: changed)
        same, _ = model.mim_loss(images, mask)
        changed2 = real.clone()
        changed2[mask] += 1.0  # hidden positions: must matter
        monkeypatch.setattr(model, "mim_targets", lambda _: changed2)
        other, _ = model.mim_loss(images, mask)
    assert torch.allclose(base, same)
    assert not torch.allclose(base, other)


def test_token_loss_equals_cross_entropy_over_hidden_positions(monkeypatch):
    model = make_model(target="vq")
    assert model.decoder.head.out_features == 11  # one logit per code
    images, _, mask = batch()
    ids = torch.randint(0, 11, (4, 16))
    monkeypatch.setattr(model, "mim_targets", lambda _: ids)
    with torch.no_grad():
        loss, acc = model.mim_loss(images, mask)
        logits = model.mim_predict(images, mask)
    ref = torch.nn.functional.cross_entropy(logits[mask], ids[mask])
    assert torch.allclose(loss, ref)
    assert acc == pytest.approx(float((logits[mask].argmax(-1) == ids[mask]).float().mean()))


def test_soft_token_loss_is_cross_entropy_against_the_distribution_on_hidden_positions(
        monkeypatch):
    model = make_model(target="vq", soft_temperature=0.1)
    images, _, mask = batch()
    probs = torch.softmax(torch.randn(4, 16, 11, generator=torch.Generator().manual_seed(3)), -1)
    monkeypatch.setattr(model, "mim_targets", lambda _: probs)
    with torch.no_grad():
        loss, acc = model.mim_loss(images, mask)
        logits = model.mim_predict(images, mask)
    # By hand: mean over hidden patches of -sum_k p_k log softmax(logits)_k.
    ref = -(probs[mask] * torch.log_softmax(logits[mask], -1)).sum(-1).mean()
    torch.testing.assert_close(loss, ref)
    assert acc == pytest.approx(float((logits[mask].argmax(-1) == probs[mask].argmax(-1))
                                      .float().mean()))
    # Visible positions do not count: changing their targets leaves the loss unchanged.
    other = probs.clone()
    other[~mask] = torch.softmax(torch.randn(int((~mask).sum()), 11), -1)
    monkeypatch.setattr(model, "mim_targets", lambda _: other)
    with torch.no_grad():
        torch.testing.assert_close(model.mim_loss(images, mask)[0], loss)


def test_both_losses_reach_the_encoder():
    model = make_model().train()
    images, labels, mask = batch()
    out = model(images, labels, mask)
    out.loss_cls.backward(retain_graph=True)
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.decoder.parameters())
    model.zero_grad(set_to_none=True)
    out.loss_mim.backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.decoder.head.weight.grad.abs().sum() > 0
    assert model.encoder.head.weight.grad is None  # the MIM loss never touches the classifier
    assert not any(p.requires_grad for p in model.target.parameters())


def test_weight_scales_the_mim_term():
    model = make_model().train()
    images, labels, mask = batch()
    model.weight = 0.3
    out = model(images, labels, mask)
    assert torch.allclose(out.loss, out.loss_cls + 0.3 * out.loss_mim)


def test_decoder_depth_zero_is_a_linear_head_in_mask_token_mode():
    model = make_model(mode="mask_token", depth=0)
    assert len(model.decoder.blocks) == 0
    images, _, mask = batch()
    assert model.mim_predict(images, mask).shape == (4, 16, 48)


def test_mim_branch_does_not_disturb_the_supervised_rng():
    """With drop-path on, the supervised logits are identical with and without MIM."""
    cfg = ModelConfig(**{**MODEL.__dict__, "drop_path": 0.3})
    tgt = build_target("pixel", img_size=16, patch_size=4, in_chans=3)
    images, labels, mask = batch()
    losses = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = SupMimModel(create_vit(cfg, 5), mean=[0.5] * 3, std=[0.25] * 3,
                            target=tgt if enabled else None, decoder_dim=32,
                            decoder_heads=2).train()
        torch.manual_seed(123)
        first = model(images, labels, mask).loss_cls
        second = model(images, labels, mask).loss_cls  # RNG after one step must match too
        losses.append((first.item(), second.item()))
    assert losses[0] == losses[1]


def test_gap_and_cls_pooling_both_work():
    for pool in ("token", "avg"):
        model = make_model(pool=pool)
        images, labels, mask = batch()
        assert model(images, labels, mask).logits.shape == (4, 5)


def test_non_vit_model_is_refused():
    from supmim.errors import ConfigError
    with pytest.raises(ConfigError, match="not a timm VisionTransformer"):
        create_vit(ModelConfig(name="resnet18", img_size=32, patch_size=4), 10)
    with pytest.raises(ConfigError, match="not a timm model"):
        create_vit(ModelConfig(name="vit_nonexistent_model"), 10)


def test_one_pass_classifies_the_masked_image_only():
    """mim.passes=1 (SupMAE-style): hidden patches reach neither the logits nor the MIM
    prediction; with two passes the logits do see them."""
    model = make_model("drop")
    images, labels, mask = batch()
    noise = torch.randn_like(images) * _patchwise(mask)
    model.passes = 1
    with torch.no_grad():
        a = model(images, labels, mask)
        b = model(images + noise, labels, mask)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    z = forward_masked(model.encoder, images, mask, None)
    assert torch.allclose(a.logits, model.encoder.forward_head(z), atol=1e-6)
    model.passes = 2
    with torch.no_grad():
        c = model(images, labels, mask)
        d = model(images + noise, labels, mask)
    assert not torch.allclose(c.logits, d.logits, atol=1e-3)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(monkeypatch):
    import torch.utils.checkpoint as ckpt
    real, calls = ckpt.checkpoint, []

    def counting(*args, **kwargs):
        calls[-1] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "checkpoint", counting)
    a, b = make_model("drop"), make_model("drop")
    b.encoder.set_grad_checkpointing(True)
    images, labels, mask = batch()
    outs = []
    for model in (a, b):
        model.train()
        calls.append(0)
        out = model(images, labels, mask)
        out.loss.backward()
        outs.append((out.loss.detach(), model.encoder.blocks[0].attn.qkv.weight.grad.clone()))
    # 2 blocks, checkpointed in the clean pass and in the masked MIM pass
    assert calls == [0, 4]  # (without the encoder.py change the masked pass adds none: [0, 2])
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-6)
