"""Bad data never kills a run: unreadable files are skipped, counted and listed; odd but valid
images (CMYK, 16-bit, palette, alpha, tiny) train like any other; a fuzzer's corrupted bytes
never crash the loader; structural problems fail before training with the path named."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from supmim.config import build_config
from supmim.data import (EpochSampler, FolderDataset, ImageDataset, build_train_transform,
                         read_bad_log, resolve_data)
from supmim.training import train
from supmim.errors import DataError, TrainingError
from tests._fixtures import make_image_folder


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _odd_but_valid(folder: Path) -> list[str]:
    """Images in unusual modes and sizes that must load (not be counted as bad)."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (20, 20))).astype(np.uint16)).save(folder / "grey16.png")
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    Image.fromarray(rgb).convert("RGBA").save(folder / "alpha.png")
    Image.fromarray(rgb[:3, :3]).save(folder / "tiny3x3.png")
    Image.fromarray(np.repeat(rgb[:2], 4, axis=1)).save(folder / "wide.png")
    return ["cmyk.jpg", "grey16.png", "palette.png", "alpha.png", "tiny3x3.png", "wide.png"]


def _broken(folder: Path) -> list[Path]:
    """Files with image extensions that cannot be read."""
    good = _png_bytes(Image.new("RGB", (16, 16), (200, 10, 10)))
    paths = [folder / "truncated.png", folder / "empty.jpg", folder / "text.png"]
    paths[0].write_bytes(good[: len(good) // 2])
    paths[1].write_bytes(b"")
    paths[2].write_text("this is not an image\n")
    return paths


def test_odd_modes_and_broken_files_in_a_training_run(tmp_path):
    data = make_image_folder(tmp_path / "data")
    odd = _odd_but_valid(tmp_path / "data" / "train" / "c0")
    bad_train = _broken(tmp_path / "data" / "train" / "c1")
    bad_test = _broken(tmp_path / "data" / "test" / "c2")
    cfg = build_config(preset="tiny-test", extra={"data.data": str(data), "mim.target": "pixel",
                                                   "data.val_fraction": 0.0},
                       overrides=["data.batch_size=8", "train.epochs=2",
                                  "data.max_bad_fraction=0.1"])
    summary = train(cfg, tmp_path / "run", progress=False)
    listed = set(summary["bad_files"]["files"])
    assert summary["bad_files"]["count"] == 6
    assert listed == {str(p) for p in bad_train + bad_test}
    assert not any(name in f for f in listed for name in odd)
    log = read_bad_log(tmp_path / "run" / "bad_files.txt")
    assert set(log) == listed and all(log[f] for f in log)  # each with its reason
    # the broken test images are left out of the metrics, not scored as a blank
    assert summary["test"]["n"] == 24
    assert summary["steps"] == 2 * ((72 + 6 + 3) // 8)  # batches stay full


def test_too_many_broken_files_stop_the_run_with_the_list(tmp_path):
    data = make_image_folder(tmp_path / "data")
    _broken(tmp_path / "data" / "train" / "c1")
    cfg = build_config(preset="tiny-test", extra={"data.data": str(data), "mim.target": "pixel",
                                                   "data.val_fraction": 0.0},
                       overrides=["data.batch_size=8", "data.max_bad_fraction=0.0"])
    with pytest.raises(TrainingError, match=r"unreadable image files.*max_bad_fraction.*bad_files\.txt"):
        train(cfg, tmp_path / "run", progress=False)


def test_substitute_keeps_batches_full_and_skip_marks_minus_one(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(folder / f"{i}.png")
    (folder / "1.png").write_bytes(b"\x89PNG broken")
    paths = [str(folder / f"{i}.png") for i in range(4)]
    base = FolderDataset(paths, np.array([0, 1, 2, 3]), ["a", "b", "c", "d"])
    log = tmp_path / "bad.txt"
    tf = build_train_transform(8, 3, [0.5] * 3, [0.5] * 3, crop="none", hflip=0.0)
    sub = ImageDataset(base, tf, 3, on_error="substitute", bad_log=log)
    x, label, j = sub[1]
    assert (label, j) == (2, 2)  # the next readable sample stands in
    skip = ImageDataset(base, tf, 3, on_error="skip", bad_log=log)
    x, label, j = skip[1]
    assert label == -1 and j == 1 and x.shape == (3, 8, 8)
    strict = ImageDataset(base, tf, 3)
    with pytest.raises(DataError, match="1.png"):
        strict[1]
    assert list(read_bad_log(log)) == [paths[1]]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]),
       cuts=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
       truncate=st.floats(0.05, 1.0))
def test_fuzzed_bytes_never_crash_the_loader(tmp_path, fmt, cuts, truncate):
    rng = np.random.default_rng(0)
    raw = bytearray(_png_bytes(Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)),
                               fmt))
    for where, value in cuts:  # overwrite random bytes, header included
        raw[min(int(where * len(raw)), len(raw) - 1)] = value
    raw = raw[: max(1, int(truncate * len(raw)))]
    path = tmp_path / f"fuzz.{fmt.lower()}"
    path.write_bytes(bytes(raw))
    base = FolderDataset([str(path)], np.array([0]), ["a"])
    tf = build_train_transform(8, 3, [0.5] * 3, [0.5] * 3, crop="pad", pad=1)
    x, label, _ = ImageDataset(base, tf, 3, on_error="skip")[0]
    assert x.shape == (3, 8, 8) and torch.isfinite(x).all() and label in (0, -1)


def test_augmentation_is_the_same_with_or_without_workers(tmp_path):
    """A sample's augmentation depends on its seed only, not on the worker that loads it."""
    data = make_image_folder(tmp_path / "data", train_per_class=8)
    src = resolve_data(str(data))
    tf = build_train_transform(16, 3, [0.5] * 3, [0.25] * 3, crop="rrc", hflip=0.5, re_prob=0.5)
    ds = ImageDataset(src.train, tf, 3)

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = EpochSampler(len(ds), seed=3)
        sampler.set_epoch(1)
        loader = DataLoader(ds, batch_size=5, sampler=sampler, num_workers=workers)
        return [b[0] for b in loader]

    a, b = batches(0), batches(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    sampler = EpochSampler(len(ds), seed=3)
    sampler.set_epoch(2)
    c = [b[0] for b in DataLoader(ds, batch_size=5, sampler=sampler)]
    assert not torch.equal(a[0], c[0])  # another epoch, other crops


def test_epoch_sampler_shards_and_resumes():
    full = EpochSampler(23, seed=5)
    full.set_epoch(4)
    order = [p for p, _ in full]
    assert sorted(order) == list(range(23))
    shards = []
    for rank in range(3):
        s = EpochSampler(23, seed=5, rank=rank, world=3)
        s.set_epoch(4)
        shards.append(list(s))
        assert len(s) == 7
    got = sorted(p for shard in shards for p, _ in shard)
    assert len(got) == len(set(got)) == 21  # disjoint, the uneven tail dropped
    seeds = {p: seed for p, seed in full}
    assert all(seeds[p] == seed for shard in shards for p, seed in shard)  # rank-independent
    s = EpochSampler(23, seed=5, rank=1, world=3)
    s.set_epoch(4, start=3)
    assert list(s) == shards[1][3:] and len(s) == 4


def test_structural_problems_fail_before_training(tmp_path):
    data = make_image_folder(tmp_path / "data")
    (tmp_path / "data" / "train" / "c_empty").mkdir()
    cfg = build_config(preset="tiny-test", extra={"data.data": str(data), "mim.target": "pixel"})
    with pytest.raises(DataError, match="c_empty"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    bad_archive = tmp_path / "data.tar.gz"
    bad_archive.write_bytes(b"\x1f\x8b\x08 not really gzip")
    cfg = build_config(preset="tiny-test", extra={"data.data": str(bad_archive),
                                                   "data.cache_dir": str(tmp_path / "c"),
                                                   "mim.target": "pixel"})
    with pytest.raises(DataError, match="cannot read archive"):
        train(cfg, tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2" / "metrics.jsonl").exists()


def test_train_split_as_eval_leaves_unreadable_images_out(tmp_path):
    """``build_run_data(train_as_eval=True)`` (kNN feature banks): the training images under
    the deterministic eval transform, an unreadable one labelled -1 instead of replaced."""
    from supmim.data.splits import build_run_data
    data = make_image_folder(tmp_path / "data")
    _broken(tmp_path / "data" / "train" / "c1")
    cfg = build_config(preset="tiny-test", extra={"data.data": str(data),
                                                  "data.val_fraction": 0.0,
                                                  "mim.target": "pixel"})
    train_set = build_run_data(cfg).train
    bank = build_run_data(cfg, train_as_eval=True).train
    assert len(bank) == len(train_set) == 3 * 24 + 3
    assert [bank[i][1] for i in range(len(bank))].count(-1) == 3
    assert all(train_set[i][1] >= 0 for i in range(len(train_set)))  # replaced in training
    # the eval transform is deterministic; the training one (random crops, flips) is not
    assert all(torch.equal(bank[i][0], bank[i][0]) for i in range(len(bank)))
    assert not all(torch.equal(train_set[i][0], train_set[i][0]) for i in range(len(train_set)))
