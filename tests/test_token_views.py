"""Token views (``supmim tokenizer cache`` + ``mim.token_cache``): a replayed view is the live
augmentation bit for bit, the cached ids are the tokenizer's ids of the loader's images, a
training run never calls the tokenizer and resumes exactly, mismatches are refused."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from _fixtures import make_image_folder
from supmim.cli import main
from supmim.config import build_config
from supmim.data.transforms import build_train_transform
from supmim.data.views import ViewCache, ViewTransform
from supmim.errors import ConfigError
from supmim.seeds import SeededSample
from supmim.targets import TokenizerConfig, VQTokenizer

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _tokenizer(folder: Path, factor: int = 4, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    VQTokenizer(TokenizerConfig(factor=factor, codebook_size=13, img_size=16,
                                channels=8)).eval().save(folder)
    return folder


def _cfg(data: Path, tok: Path, *overrides: str):
    return build_config(preset="tiny-test", extra={
        "data.data": str(data), "data.val_fraction": 0.0, "mim.tokenizer": str(tok)},
        overrides=["data.batch_size=8", "data.loader=workers", *overrides])


def _build(data: Path, tok: Path, out: Path, views: int, *sets: str) -> None:
    extra = [a for kv in ("data.val_fraction=0", *sets) for a in ("--set", kv)]
    assert main(["tokenizer", "cache", "--data", str(data), "--preset", "tiny-test",
                 "--tokenizer", str(tok), "--views", str(views), "--out", str(out),
                 "--batch", "12", "--quiet", *extra]) == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny image folder (72 train images), a tokenizer (factor 8: the 16 px images are
    resized to 32 for it, as MaskGIT's are) and a K=3 cache of it built through the CLI."""
    root = tmp_path_factory.mktemp("views")
    data = make_image_folder(root / "data")
    tok = _tokenizer(root / "tok", factor=8)
    _build(data, tok, root / "cache", 3)
    return data, tok, root / "cache"


@pytest.mark.parametrize("crop", ["pad", "rrc", "none"])
def test_a_replayed_view_is_the_live_transform_bit_for_bit(crop):
    """For a sample seed, ViewTransform.sample draws what the live transform draws and its
    view is the live output; replaying the stored params gives the same bits."""
    rng = np.random.default_rng(0)
    live = build_train_transform(16, 3, MEAN, STD, crop=crop, pad=3, hflip=0.5,
                                 interpolation="bicubic")
    views = ViewTransform(img_size=16, in_chans=3, mean=MEAN, std=STD, crop=crop, pad=3,
                          hflip=0.5, interpolation="bicubic")
    flips, tops = set(), set()
    for seed, shape in zip(range(40), [(16, 16), (23, 19), (12, 30)] * 14):
        img = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        with SeededSample(seed):
            expected = live(img)
        params, view = views.sample(img, seed)
        assert torch.equal(view, expected), (seed, shape, params)
        assert torch.equal(views.replay(img, params), expected)
        flips.add(params[4])
        tops.add(params[0])
        if crop == "pad":
            assert 0 <= params[0] <= 6 and 0 <= params[1] <= 6 and params[2:4] == [16, 16]
    assert flips == {0, 1}
    assert len(tops) > (1 if crop != "none" else 0)


def test_view_of_is_a_function_of_seed_epoch_index_and_uses_every_view():
    k, n = 4, 50
    cache = ViewCache(torch.zeros(n, k, 5, dtype=torch.int16), torch.zeros(n, k, 2),
                      torch.arange(100, 100 + n), {}, seed=3)
    index = torch.arange(100, 100 + n)
    per_epoch = torch.stack([cache.view_of(e, index) for e in range(3 * k)])  # (epochs, n)
    # the same whatever batch it is computed in, and in any order
    perm = torch.randperm(n)
    assert torch.equal(cache.view_of(5, index[perm]), per_epoch[5][perm])
    assert torch.equal(cache.view_of(5, index[7:8]), per_epoch[5][7:8])
    # each block of K epochs goes through all K views of every image once
    for block in range(3):
        views = per_epoch[block * k:(block + 1) * k].sort(dim=0).values
        assert torch.equal(views, torch.arange(k)[:, None].expand(k, n))
    assert not torch.equal(per_epoch[:k], per_epoch[k:2 * k])  # another order per block
    assert not torch.equal(cache.with_seed(4).view_of(0, index), per_epoch[0])  # the seed
    assert set(per_epoch[0].tolist()) == set(range(k))
    lookups = cache.params_of(index[:3], per_epoch[0][:3])
    assert lookups.shape == (3, 5) and lookups.dtype == torch.int64


def test_the_cached_ids_are_the_tokenizers_ids_of_the_loaders_images(world, tmp_path):
    """Exactness: for a few epochs, the ids a step reads from the cache equal the frozen
    tokenizer's ids of the very images the training loader produced."""
    from supmim.engine.loop import Trainer
    data, tok, cache = world
    stored = load_file(str(cache / "views.safetensors"))
    assert stored["params"].shape == (72, 3, 5) and stored["ids"].shape == (72, 3, 16)
    assert stored["ids"].dtype == torch.int16
    t = Trainer(_cfg(data, tok, f"mim.token_cache={cache}"), tmp_path / "run", progress=False)
    t.setup()
    views = t.parts.token_views
    seen = set()
    for epoch in (0, 1, 4):
        t.loaders.sampler.set_epoch(epoch)
        for i, (images, _, index, _) in enumerate(t.loaders.train):
            v = views.view_of(epoch, index)
            fresh = t.model.mim_targets(images)
            assert torch.equal(views.ids_of(index, v), fresh), (epoch, i)
            seen |= set(zip(index.tolist(), v.tolist()))
            if i == 2:
                break
    assert len({v for _, v in seen}) == 3


class _Count:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.fn(*a, **kw)


def test_a_run_on_the_cache_never_calls_the_tokenizer(world, tmp_path):
    from supmim.engine.loop import Trainer
    data, tok, cache = world
    t = Trainer(_cfg(data, tok, f"mim.token_cache={cache}"), tmp_path / "run", progress=False)
    t.setup()
    count = _Count(t.model.target.tokenizer.encode)
    t.model.target.tokenizer.encode = count
    stats = t.train_one_epoch(0)
    assert count.calls == 0
    assert np.isfinite(stats["train_loss_mim"]) and "train_mim_acc" in stats
    # ...while the same run without the cache runs it once per step
    t = Trainer(_cfg(data, tok), tmp_path / "fresh", progress=False)
    t.setup()
    count = _Count(t.model.target.tokenizer.encode)
    t.model.target.tokenizer.encode = count
    t.train_one_epoch(0)
    assert count.calls == t.steps_per_epoch == 9


def test_a_run_on_the_cache_resumes_exactly(world, tmp_path):
    from supmim.engine.loop import Trainer
    from supmim.run import RunDir
    from supmim.training import train
    data, tok, cache = world
    recipe = (f"mim.token_cache={cache}", "train.epochs=3", "model.drop_path=0.1")
    full = train(_cfg(data, tok, *recipe), tmp_path / "full", progress=False)
    cfg = _cfg(data, tok, *recipe)
    t = Trainer(cfg, tmp_path / "part", progress=False)
    t.setup()
    RunDir(tmp_path / "part").write_start(cfg, t.data)
    t.train_one_epoch(0)
    t.save_checkpoint(0, {})
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    a, b = (load_file(str(p / "checkpoints" / "epoch_0003" / "model.safetensors"))
            for p in (tmp_path / "full", tmp_path / "part"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full["test"] == resumed["test"]


def test_a_cache_built_for_something_else_is_refused_in_one_line(world, tmp_path):
    from supmim.engine.loop import Trainer
    data, tok, cache = world

    def refusal(*overrides: str, tokenizer: Path = tok) -> str:
        t = Trainer(_cfg(data, tokenizer, f"mim.token_cache={cache}", *overrides),
                    tmp_path / "r", progress=False)
        with pytest.raises(ConfigError) as err:
            t.setup()
        message = str(err.value)
        assert "\n" not in message and "supmim tokenizer cache --data" in message
        return message

    assert "data.pad (2 here, 4 in the cache)" in refusal("data.pad=2")
    assert "data.hflip" in refusal("data.hflip=0.0")
    assert "model.img_size" in refusal("model.img_size=32")
    assert "a different training split" in refusal("data.train_samples=30")
    assert "mim.tokenizer" in refusal(tokenizer=_tokenizer(tmp_path / "other", 8, seed=1))
    # ids computed in fp32 (the CPU's "auto") are not what a bf16 tokenizer gives
    assert '("bf16" here, "fp32" in the cache)' in refusal("mim.tokenizer_precision=bf16")
    with pytest.raises(ConfigError, match="no view cache at"):
        Trainer(_cfg(data, tok, f"mim.token_cache={tmp_path}"), tmp_path / "r2",
                progress=False).setup()


@pytest.mark.parametrize("override, key", [
    ("data.rand_augment=rand-m9-mstd0.5", "data.rand_augment"),
    ("data.re_prob=0.25", "data.re_prob"), ("train.mixup=0.8", "train.mixup"),
    ("train.cutmix=1.0", "train.mixup"), ("mim.token_loss=soft", "mim.token_loss"),
    ("mim.target=pixel", "mim.token_cache")])
def test_what_a_cache_cannot_replay_is_refused(tmp_path, override, key, capsys):
    with pytest.raises(ConfigError, match=f"'{key}'") as err:
        build_config(preset="tiny-test", overrides=[f"mim.token_cache={tmp_path}", override])
    assert "\n" not in str(err.value)
    if key != "mim.token_cache":  # the build command refuses it too, before reading data
        assert main(["tokenizer", "cache", "--data", str(tmp_path / "nowhere"), "--preset",
                     "tiny-test", "--tokenizer", str(tmp_path), "--views", "2", "--out",
                     str(tmp_path / "c"), "--set", override]) == 2
        assert f"'{key}'" in capsys.readouterr().err
    # a baseline arm (compare's, or --no-mim) replays the same views: it refuses what cannot
    # be replayed and takes what only the token ids rule out
    baseline = [f"mim.token_cache={tmp_path}", override, "mim.enabled=false"]
    if key in ("data.rand_augment", "data.re_prob"):
        with pytest.raises(ConfigError, match=f"'{key}'"):
            build_config(preset="tiny-test", overrides=baseline)
    else:
        build_config(preset="tiny-test", overrides=baseline)


def test_both_arms_of_a_comparison_train_on_the_same_views(world, tmp_path):
    """compare's baseline arm of a run on a cache (MIM off, all else equal) replays the
    cached views too, with the default loader choice: both arms see the same images in the
    same order, and only the MIM arm holds the ids."""
    from supmim.engine.loop import Trainer
    from supmim.experiments.compare import arm_config
    data, tok, cache = world
    cfg = _cfg(data, tok, f"mim.token_cache={cache}", "data.loader=auto")
    batches, parts = {}, {}
    for arm in ("baseline", "mim"):
        t = Trainer(arm_config(cfg, arm, 0), tmp_path / arm, progress=False)
        t.setup()
        t.loaders.sampler.set_epoch(1)
        batches[arm] = [b[:3] for b, _ in zip(t.loaders.train, range(3))]
        parts[arm] = t.parts
    for (a_img, a_lab, a_idx), (b_img, b_lab, b_idx) in zip(batches["baseline"], batches["mim"]):
        assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
        assert torch.equal(a_idx, b_idx)
    assert parts["baseline"].masker is None and parts["baseline"].token_views.ids is None
    assert parts["mim"].token_views.ids is not None
    assert parts["mim"].token_views.ids.dtype == torch.int16  # stored width on the device
