"""Bare commands: `supmim train --data D --out R` and `supmim compare` with the default VQ target
train a tokenizer on D once, cache it keyed by D's content and the recipe, and reuse it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _fixtures import make_image_folder
from supmim.cli import main
from supmim.config import build_config
from supmim.run import tokenizer_cache

FAST = ["--preset", "tiny-test", "--quiet", "--set", "mim.tokenizer_steps=15",
        "--set", "data.val_fraction=0"]


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SUPMIM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tokenizers"


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.is_dir())


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("tokenizer.")}


def test_bare_train_trains_a_tokenizer_once_then_reuses_it(tmp_path, cache, capsys):
    data = make_image_folder(tmp_path / "data", train_per_class=8, test_per_class=2)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r1"), *FAST]) == 0
    out = capsys.readouterr().out
    assert "no tokenizer given: trained one on the training split (15 steps" in out
    assert "--tokenizer FOLDER" in out
    assert len(_entries(cache)) == 1
    first = _files(tmp_path / "r1" / "tokenizer")
    assert set(first) == {"tokenizer.json", "tokenizer.safetensors"}

    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r2"), *FAST]) == 0
    assert "reused the tokenizer trained earlier on this data" in capsys.readouterr().out
    assert _files(tmp_path / "r2" / "tokenizer") == first  # the same files, bit for bit
    summary = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert summary["test"]["n"] == 6

    # another recipe is another tokenizer
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r3"), *FAST,
                 "--set", "mim.tokenizer_steps=16"]) == 0
    assert "trained one" in capsys.readouterr().out and len(_entries(cache)) == 2


def test_the_key_follows_the_images_content_not_their_place(tmp_path, cache):
    data = make_image_folder(tmp_path / "a", train_per_class=4, test_per_class=1)
    shutil.copytree(data, tmp_path / "b")
    key = lambda folder, *o: tokenizer_cache.recipe_key(  # noqa: E731
        build_config(preset="tiny-test", extra={"data.data": str(folder)}, overrides=list(o)))
    assert key(data) == key(tmp_path / "b")  # same content elsewhere: the same tokenizer
    img = tmp_path / "b" / "train" / "c1" / "2.png"
    img.write_bytes(img.read_bytes() + b"\0")  # one file's bytes changed
    assert key(data) != key(tmp_path / "b")
    assert key(data) != key(data, "data.train_samples=6")  # another training split
    assert key(data) != key(data, "train.seed=1")  # the tokenizer's seed
    assert key(data) == key(data, "train.lr=0.5")  # the ViT's recipe does not matter


def test_config_with_no_arguments_prints_the_defaults(capsys):
    assert main(["config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == build_config().to_dict()
    assert (printed["mim"]["target"], printed["mim"]["tokenizer"]) == ("vq", "auto")


@pytest.mark.slow
def test_bare_compare_shares_one_cached_tokenizer(tmp_path, cache, capsys):
    data = make_image_folder(tmp_path / "data", train_per_class=8, test_per_class=2)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r1"), *FAST]) == 0
    capsys.readouterr()
    assert main(["compare", "--data", str(data), "--out", str(tmp_path / "cmp"), *FAST,
                 "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "reused the tokenizer trained earlier on this data" in out
    assert _files(tmp_path / "cmp" / "mim_seed0" / "tokenizer") == \
        _files(tmp_path / "r1" / "tokenizer")
    assert len(_entries(cache)) == 1
