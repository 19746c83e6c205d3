"""Config parsing: presets, overrides, and errors that name the key and the valid values."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from supmim.config import PRESETS, all_keys, build_config, load_config, parse_override, save_config
from supmim.errors import ConfigError


def test_defaults_and_presets_validate():
    build_config(overrides=["mim.target=pixel"])
    for name in PRESETS:
        build_config(preset=name, overrides=["mim.target=pixel"])


def test_overrides_are_typed():
    cfg = build_config(overrides=["train.lr=3e-4", "mim.target=hog", "data.mean=[0.5]",
                                  "data.std=[0.25]", "train.clip_grad=null", "train.ema=true"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.mim.target == "hog" and cfg.data.mean == [0.5] and cfg.train.clip_grad is None
    assert cfg.train.ema is True


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key 'train.lrr'.*Did you mean train.lr"),
    ("nosection.x=1", "unknown config key"),
    ("mim.mask_ratio=1.5", "mim.mask_ratio.*(0, 1)"),
    ("mim.mask_ratio=0", "mim.mask_ratio"),
    ("mim.target=depth", "mim.target.*vq, pixel, hog"),
    ("model.global_pool=max", "model.global_pool.*token, avg"),
    ("model.patch_size=5", "model.patch_size.*must divide"),
    ("train.epochs=two", "train.epochs.*integer"),
    ("train.ema=maybe", "train.ema.*true or false"),
    ("mim.decoder_depth=0", "mim.decoder_depth.*mask_token"),
    ("data.std=[0.1, 0.0, 0.2]", "data.std"),
    ("train.lr", "key=value"),
    ("mim.token_loss=soft", "mim.token_loss.*mim.target=vq"),
    ("mim.token_loss=fuzzy", "mim.token_loss.*hard, soft"),
    ("mim.tokenizer_precision=fp16", "mim.tokenizer_precision.*auto, fp32, bf16"),
])
def test_bad_values_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=["mim.target=pixel", override])


def test_soft_token_loss_options_are_checked():
    vq = ["mim.target=vq", "mim.tokenizer=tok", "mim.token_loss=soft"]
    assert build_config(overrides=vq).mim.token_loss == "soft"
    with pytest.raises(ConfigError, match="mim.soft_temperature.*> 0"):
        build_config(overrides=[*vq, "mim.soft_temperature=0"])
    with pytest.raises(ConfigError, match="mim.label_smoothing.*hard token loss only"):
        build_config(overrides=[*vq, "mim.label_smoothing=0.1"])


def test_the_defaults_need_no_tokenizer_argument():
    cfg = build_config()  # what `supmim config` and a bare `supmim train` start from
    assert (cfg.mim.target, cfg.mim.tokenizer) == ("vq", "auto")
    with pytest.raises(ConfigError, match="mim.tokenizer_steps.*>= 1"):
        build_config(overrides=["mim.tokenizer_steps=0"])
    assert build_config(overrides=["mim.enabled=false"]).mim.enabled is False


def test_unknown_preset_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset.*cifar10"):
        build_config(preset="imagenet-9000")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"trian": {"lr": 1}}))
    with pytest.raises(ConfigError, match="unknown config section 'trian'"):
        build_config(file=bad)


def test_save_and_load_roundtrip(tmp_path):
    cfg = build_config(preset="cifar10", overrides=["mim.target=pixel", "train.seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@given(st.sampled_from(all_keys()), st.one_of(st.integers(), st.floats(allow_nan=False),
                                               st.text(max_size=8), st.booleans(), st.none()))
def test_any_override_either_applies_or_raises_config_error(key, value):
    try:
        build_config(overrides=["mim.target=pixel", f"{key}={yaml.safe_dump(value).split(chr(10))[0]}"])
    except ConfigError:
        pass


def test_parse_override_numbers():
    assert parse_override("train.lr=1e-3") == ("train.lr", 1e-3)
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("mim.tokenizer=runs/tok") == ("mim.tokenizer", "runs/tok")


def test_a_presets_train_samples_is_a_cap_but_a_users_is_exact(tmp_path, capsys):
    """fashion-mnist asks for 12,000 training images: on less data it uses all of them (with
    a note); the same number set by the user is refused, and so is a file's."""
    import numpy as np

    from supmim.data.splits import split_indices

    labels = np.arange(3600) % 10
    preset = build_config(preset="fashion-mnist", overrides=["mim.target=pixel",
                                                             "data.val_fraction=0"])
    assert preset.data.train_samples == 12000 and preset.data.train_samples_cap
    train_idx, _ = split_indices(preset, labels)
    assert np.array_equal(train_idx, np.arange(3600))
    assert "train_samples (12000) is more than the 3600 training images" in capsys.readouterr().out
    # the cap is recorded with the run, so rebuilding its data later does the same
    save_config(preset, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").data.train_samples_cap
    # below the data it still picks a class-balanced subset of that size
    assert len(split_indices(preset, np.arange(20000) % 10)[0]) == 12000
    (tmp_path / "mine.yaml").write_text("data:\n  train_samples: 12000\n")
    for cfg in (build_config(preset="fashion-mnist", overrides=[
                    "mim.target=pixel", "data.val_fraction=0", "data.train_samples=12000"]),
                build_config(preset="fashion-mnist", file=tmp_path / "mine.yaml",
                             overrides=["mim.target=pixel", "data.val_fraction=0"])):
        assert not cfg.data.train_samples_cap
        with pytest.raises(ConfigError, match="exceeds the 3600 training images available"):
            split_indices(cfg, labels)
