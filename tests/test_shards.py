"""Large-data formats: WebDataset shards written by `supmim data pack` and Hugging Face
datasets saved on disk train exactly like the image folder they came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supmim.cli import main
from supmim.config import build_config
from supmim.data import labels_of, resolve_data
from supmim.data.readers.shards import INDEX
from supmim.training import train
from supmim.errors import DataError
from tests._fixtures import make_image_folder


def _pixels(ds, i: int) -> np.ndarray:
    img, _ = ds[i]
    return np.asarray(img.convert("RGB"))


def test_pack_round_trip_and_standard_webdataset(tmp_path):
    import webdataset as wds
    folder = make_image_folder(tmp_path / "data", train_per_class=7, test_per_class=3)
    assert main(["data", "pack", str(folder), "--out", str(tmp_path / "shards"),
                 "--shard-size", "8", "--quiet"]) == 0
    shards = sorted(p.name for p in (tmp_path / "shards").glob("*.tar"))
    # 21 train and 9 test images, 8 per shard
    assert shards == ["test-000000.tar", "test-000001.tar"] + [f"train-{i:06d}.tar" for i in range(3)]
    src, packed = resolve_data(str(folder)), resolve_data(str(tmp_path / "shards"))
    assert packed.classes == src.classes and packed.test_split == "test"
    for a, b in ((src.train, packed.train), (src.test, packed.test)):
        assert np.array_equal(labels_of(a), labels_of(b))
        assert all(np.array_equal(_pixels(a, i), _pixels(b, i)) for i in range(len(a)))
    # the shards are plain WebDataset: the library reads them without supmim's index
    urls = [str(tmp_path / "shards" / s) for s in shards[2:]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("png", "cls"))
    assert [int(c) for _, c in samples] == labels_of(src.train).tolist()


def test_train_from_shards_matches_the_folder(tmp_path):
    folder = make_image_folder(tmp_path / "data")
    main(["data", "pack", str(folder), "--out", str(tmp_path / "shards"), "--quiet"])

    def run(spec: str, out: str) -> dict:
        cfg = build_config(preset="tiny-test", extra={"data.data": spec, "mim.target": "pixel"},
                           overrides=["data.batch_size=8", "data.num_workers=2"])
        return train(cfg, tmp_path / out, progress=False)
    a, b = run(str(folder), "from_folder"), run(str(tmp_path / "shards"), "from_shards")
    assert a["test"] == b["test"] and a["val"] == b["val"]


def test_pack_refuses_to_overwrite_and_missing_shards_are_named(tmp_path):
    folder = make_image_folder(tmp_path / "data", train_per_class=4, test_per_class=2)
    main(["data", "pack", str(folder), "--out", str(tmp_path / "s"), "--quiet"])
    assert main(["data", "pack", str(folder), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    (tmp_path / "s" / "test-000000.tar").unlink()
    with pytest.raises(DataError, match="test-000000.tar"):
        resolve_data(str(tmp_path / "s"))
    assert (tmp_path / "s" / INDEX).is_file()


def test_hugging_face_dataset_on_disk(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature
    folder = make_image_folder(tmp_path / "data")
    src = resolve_data(str(folder))
    features = Features({"img": ImageFeature(), "y": ClassLabel(names=src.classes)})

    def split(ds) -> Dataset:
        return Dataset.from_dict({"img": [ds[i][0] for i in range(len(ds))],
                                  "y": labels_of(ds).tolist()}, features=features)
    DatasetDict({"train": split(src.train), "test": split(src.test)}).save_to_disk(
        str(tmp_path / "hf"))
    hf = resolve_data(str(tmp_path / "hf"))
    assert hf.classes == src.classes and hf.test_split == "test"
    assert np.array_equal(labels_of(hf.train), labels_of(src.train))
    assert np.array_equal(_pixels(hf.train, 5), _pixels(src.train, 5))
    cfg = build_config(preset="tiny-test", extra={"data.data": str(tmp_path / "hf"),
                                                   "mim.target": "pixel"},
                       overrides=["data.batch_size=8"])
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["test"]["n"] == len(src.test)
    assert torch.isfinite(torch.tensor(summary["test"]["loss"]))
