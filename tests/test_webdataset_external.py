"""External data formats: standard WebDataset shards written by webdataset.ShardWriter or
plain tar (indexed, or streamed through pipe:), and Hugging Face load_dataset sources
(imagefolder, parquet, streaming). Nothing here is written by `supmim data pack`."""

from __future__ import annotations

import collections
import io
import json
import os
import tarfile
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # no network, before datasets is imported

import numpy as np
import pytest
import torch
from PIL import Image

from supmim.config import build_config
from supmim.data import EpochSampler, ImageDataset, labels_of, read_bad_log, resolve_data
from supmim.data.readers.registry import ReadOptions
from supmim.data.streaming import StreamingImages, stream_share
from supmim.errors import ConfigError, DataError
from supmim.training import train
from tests._fixtures import make_image_folder

wds = pytest.importorskip("webdataset")


@pytest.fixture(autouse=True)
def _offline_hf(tmp_path, monkeypatch):
    """Hugging Face: offline, its cache inside the test's folder."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _items(folder: Path, split: str) -> list[tuple[bytes, int]]:
    """(PNG bytes, label) of every image of a split of ``make_image_folder``'s tree."""
    src = resolve_data(str(folder))
    ds = src.train if split == "train" else src.test
    return [(Path(p).read_bytes(), int(y)) for p, y in zip(ds.paths, labels_of(ds))]


def _shardwriter(out: Path, items: list[tuple[bytes, int]], split: str, per: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=per, verbose=0) as sink:
        for i, (data, y) in enumerate(items):
            sink.write({"__key__": f"{split}{i:05d}", "png": data, "cls": str(y)})


def _plain_tar(path: Path, items: list[tuple[bytes, int]], names: list[str]) -> None:
    """KEY.jpg (a JPEG) + KEY.json {"class": name} members, written with tarfile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, (data, y) in enumerate(items):
            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).convert("RGB").save(buf, format="JPEG", quality=95)
            for name, blob in ((f"s/{path.stem}_{i}.jpg", buf.getvalue()),
                               (f"s/{path.stem}_{i}.json",
                                json.dumps({"class": names[y], "w": 16}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))


def _train(tmp_path: Path, out: str, spec: str, **extra) -> dict:
    cfg = build_config(preset="tiny-test", extra={"data.data": spec, "mim.target": "pixel",
                                                  "data.cache_dir": str(tmp_path / "cache"),
                                                  "train.max_steps": 2, "data.batch_size": 8,
                                                  **extra})
    return train(cfg, tmp_path / out, progress=False)


def test_shardwriter_folder_is_indexed_trains_and_evaluates(tmp_path):
    folder = make_image_folder(tmp_path / "data", train_per_class=8, test_per_class=4)
    train_items, test_items = _items(folder, "train"), _items(folder, "test")
    _shardwriter(tmp_path / "shards", train_items, "train", per=10)
    _shardwriter(tmp_path / "shards", test_items, "val", per=10)
    src = resolve_data(str(tmp_path / "shards"), cache_dir=str(tmp_path / "cache"))
    assert src.test_split == "val" and src.classes == ["0", "1", "2"]
    assert labels_of(src.train).tolist() == [y for _, y in train_items]
    assert labels_of(src.test).tolist() == [y for _, y in test_items]
    img, _ = src.train[13]
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(train_items[13][0]))))
    summary = _train(tmp_path, "run", str(tmp_path / "shards"), **{"data.val_fraction": 0.0})
    assert summary["steps"] == 2 and summary["test"]["n"] == len(test_items)
    assert summary["bad_files"]["count"] == 0


def test_plain_tar_pattern_with_json_class_names_and_cached_index(tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "data", train_per_class=8, test_per_class=3)
    names = ["cat", "dog", "emu"]
    items = _items(folder, "train")
    for n in range(3):
        _plain_tar(tmp_path / "d" / f"train-{n:06d}.tar", items[n::3], names)
    _plain_tar(tmp_path / "d" / "eval.tar", _items(folder, "test"), names)
    spec = str(tmp_path / "d" / "train-{000000..000002}.tar")
    evals = tmp_path / "d" / "eval.tar"
    opts = ReadOptions(test_data=f"{evals}::{evals}")
    src = resolve_data(spec, cache_dir=str(tmp_path / "cache"), options=opts)
    assert src.classes == names and len(src.test) == 2 * 9  # the :: list repeats the shard
    expected = [y for n in range(3) for _, y in items[n::3]]
    assert labels_of(src.train).tolist() == expected
    # the index is cached: a second resolve reads no tar header
    from supmim.data.readers import wds as reader
    monkeypatch.setattr(reader, "scan_shard", lambda *a: pytest.fail("rescanned"))
    again = resolve_data(spec, cache_dir=str(tmp_path / "cache"), options=opts)
    assert labels_of(again.train).tolist() == expected
    monkeypatch.undo()
    summary = _train(tmp_path, "run", spec, **{"data.test_data": str(tmp_path / "d" / "eval.tar"),
                                               "data.val_fraction": 0.25})
    assert summary["steps"] == 2 and summary["test"]["n"] == 9 and summary["val"]["n"] > 0


def _cut_member_shard(tmp_path: Path) -> tuple[Path, int]:
    """A shard of 6 samples whose 3rd image member is cut short (the tar stays valid)."""
    folder = make_image_folder(tmp_path / "data", train_per_class=2, test_per_class=2)
    items = _items(folder, "train")
    shard = tmp_path / "cut" / "train-000000.tar"
    shard.parent.mkdir(parents=True)
    with tarfile.open(shard, "w") as tar:
        for i, (data, y) in enumerate(items):
            data = data[: len(data) // 2] if i == 2 else data
            for name, blob in ((f"k{i}.png", data), (f"k{i}.cls", str(y).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return shard, len(items)


def test_truncated_member_is_skipped_and_counted(tmp_path):
    shard, n = _cut_member_shard(tmp_path)
    # indexed: substituted in training and listed in the run's bad-file log
    summary = _train(tmp_path, "run", str(shard.parent), **{
        "data.test_data": str(shard), "data.max_bad_fraction": 0.5,
        "data.batch_size": 4, "data.val_fraction": 0.0})
    assert summary["bad_files"]["count"] == 1
    assert summary["bad_files"]["files"][0].startswith(f"{shard}@")
    assert summary["test"]["n"] == n - 1
    # streamed: skipped and listed by its key
    src = resolve_data(f"pipe:cat {shard}", cache_dir=str(tmp_path / "cache"))
    log = tmp_path / "bad.log"
    stream = src.train.configured(None, 3, train=False, seed=0, bad_log=log)
    assert len(src.train) == n and len(list(stream)) == n - 1
    assert list(read_bad_log(log)) == [f"pipe:cat {shard}#k2"]


def test_indexed_two_ranks_two_workers_see_every_sample_once(tmp_path):
    folder = make_image_folder(tmp_path / "data", train_per_class=6, test_per_class=1)
    _shardwriter(tmp_path / "s", _items(folder, "train"), "train", per=5)
    src = resolve_data(str(tmp_path / "s"), cache_dir=str(tmp_path / "cache"))
    ds = ImageDataset(src.train, lambda img: torch.zeros(1), 3)
    seen = []
    for rank in range(2):
        sampler = EpochSampler(len(ds), seed=3, rank=rank, world=2)
        sampler.set_epoch(1)
        loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler, num_workers=2)
        seen += [int(i) for _, _, index in loader for i in index]
    assert sorted(seen) == list(range(18))


def test_stream_share_partitions_every_pass():
    for n_units in (1, 3, 4, 5, 9):
        samples = {u: [(u, j) for j in range(u + 2)] for u in range(n_units)}  # uneven shards
        for pass_ in range(2):
            got = []
            for rank in range(2):
                for worker in range(2):
                    units, every, offset = stream_share(n_units, seed=1, epoch=2, rank=rank,
                                                        world=2, worker=worker, workers=2,
                                                        pass_=pass_)
                    read = [s for u in units for s in samples[u]]
                    got += [s for j, s in enumerate(read) if j % every == offset]
            assert sorted(got) == sorted(s for v in samples.values() for s in v), n_units


def test_streamed_two_ranks_two_workers_and_mid_epoch_skip(tmp_path):
    folder = make_image_folder(tmp_path / "data", train_per_class=7, test_per_class=1)
    _shardwriter(tmp_path / "s", _items(folder, "train"), "train", per=4)  # 6 shards
    src = resolve_data(str(tmp_path / "s"), cache_dir=str(tmp_path / "cache"),
                       options=ReadOptions(streaming=True))
    assert isinstance(src.train, StreamingImages) and len(src.train) == 21
    ds = src.train.configured(lambda img: torch.zeros(1), 3, train=False, seed=0, bad_log=None)
    seen = []
    for rank in range(2):
        ds.place(rank, 2)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
        seen += [int(i) for _, _, index in loader for i in index]
    assert len(seen) == 21 and len(set(seen)) == 21
    # training order: resuming after k batches gives the rest of the uninterrupted epoch
    tr = src.train.configured(lambda img: torch.zeros(1), 3, train=True, seed=5, bad_log=None)
    tr.place(0, 1, batch=2)
    tr.set_epoch(1)
    full = [item[2] for _, item in zip(range(30), tr)]
    ds.place(0, 1)
    plain = [int(i) for _, _, i in ds]
    assert sorted(full[:21]) == sorted(plain) and full[:21] != plain  # one pass, shuffled
    tr.set_epoch(1, start=6)
    assert [item[2] for _, item in zip(range(24), tr)] == full[6:]


def test_pipe_cat_streams_trains_and_evaluates(tmp_path):
    folder = make_image_folder(tmp_path / "data", train_per_class=8, test_per_class=4)
    _shardwriter(tmp_path / "s", _items(folder, "train"), "train", per=10)
    _shardwriter(tmp_path / "s", _items(folder, "test"), "test", per=100)
    spec = f"pipe:cat {tmp_path}/s/train-{{000000..000002}}.tar"
    summary = _train(tmp_path, "run", spec, **{
        "data.test_data": f"pipe:cat {tmp_path}/s/test-000000.tar", "data.num_workers": 2})
    assert summary["steps"] == 2 and summary["test"]["n"] == 12 and summary["test_split"] == "test"
    with pytest.raises(ConfigError, match="data.test_data"):
        _train(tmp_path, "run2", spec)  # a stream has no split to carve a validation set from


# ------------------------------------------------------------------ Hugging Face


def test_hf_imagefolder_builder(tmp_path):
    folder = make_image_folder(tmp_path / "data", train_per_class=8, test_per_class=4)
    src = resolve_data(f"hf:imagefolder:{folder}")
    ours = resolve_data(str(folder))
    assert src.classes == ours.classes and src.test_split == "test"
    for a, b in ((src.train, ours.train), (src.test, ours.test)):
        assert collections.Counter(labels_of(a).tolist()) == collections.Counter(labels_of(b).tolist())
    summary = _train(tmp_path, "run", f"hf:imagefolder:{folder}")
    assert summary["steps"] == 2 and summary["test"]["n"] == 12


def _parquet(tmp_path: Path) -> Path:
    from datasets import Dataset
    folder = make_image_folder(tmp_path / "data", train_per_class=8, test_per_class=4)
    for split in ("train", "test"):
        items = _items(folder, split)
        Dataset.from_dict({"pixels": [{"bytes": d, "path": None} for d, _ in items],
                           "y": [y for _, y in items]}).to_parquet(
            str(tmp_path / "pq" / f"{split}.parquet"))
    return tmp_path / "pq"


def test_hf_parquet_columns_set_and_detected_errors(tmp_path):
    pq = _parquet(tmp_path)
    opts = ReadOptions(image_column="pixels", label_column="y",
                       test_data=f"hf:parquet:{pq}/test.parquet")
    src = resolve_data(f"hf:parquet:{pq}/train.parquet", options=opts)
    assert src.classes == ["0", "1", "2"] and len(src.train) == 24 and len(src.test) == 12
    assert labels_of(src.train).tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert src.train[9][0].size == (16, 16)
    with pytest.raises(DataError, match=r"has no image column .*data.image_column"):
        resolve_data(f"hf:parquet:{pq}/train.parquet")  # "pixels" is not a common name
    with pytest.raises(DataError, match=r"data.label_column='lbl' is not a column"):
        resolve_data(f"hf:parquet:{pq}/train.parquet",
                     options=ReadOptions(image_column="pixels", label_column="lbl"))


def test_hf_streaming_parquet_trains(tmp_path):
    pq = _parquet(tmp_path)
    summary = _train(tmp_path, "run", f"hf+stream:parquet:{pq}/train.parquet", **{
        "data.test_data": f"hf:parquet:{pq}/test.parquet", "data.image_column": "pixels",
        "data.label_column": "y"})
    assert summary["steps"] == 2 and summary["test"]["n"] == 12


def test_bad_data_options_fail_before_work(tmp_path):
    with pytest.raises(ConfigError, match="data.image_column"):
        build_config(preset="tiny-test", overrides=["data.image_column=''"])
    folder = make_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    with pytest.raises(DataError, match="data.test_data does not apply"):
        resolve_data(str(folder), options=ReadOptions(test_data="x"))
    with pytest.raises(DataError, match="do not exist"):
        resolve_data(str(tmp_path / "none-{000..001}.tar"))
