"""The evaluation loaders on the project's real data (``$SUPMIM_DATA_DIR``, default
``../shared/data``); skipped, with the reason, where that folder is absent."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from supmim.evaluation.common import shared_data_dir
from supmim.evaluation.datasets import load_split
from supmim.evaluation.segmentation.data import IGNORE_INDEX, load_seg_split

DATA = shared_data_dir()


def need(name: str):
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found: set SUPMIM_DATA_DIR to the folder holding the shared data")
    return path


@pytest.mark.parametrize("name", ["camvid_120x160_uint8.npz", "oxford_pet_sample3_128x128_uint8.npz",
                                  "orl_faces_112x92_uint8.npz"])
def test_checksums_of_the_arrays_we_read(name):
    path = need(name)
    sums = dict(reversed(line.split()) for line in (DATA / "SHA256SUMS").read_text().splitlines() if line)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[name]


def test_camvid_void_is_ignored_and_the_splits_are_segnets():
    path = need("camvid_120x160_uint8.npz")
    train, test = load_seg_split(str(path), "train"), load_seg_split(str(path), "test")
    assert len(train) == 367 and len(test) == 233
    assert train.classes[0] == "Sky" and "Unlabelled" not in train.classes and train.num_classes == 11
    raw = np.load(path)["y_test"]
    _, mask = test.item(5)
    assert np.array_equal(mask == IGNORE_INDEX, raw[5] == 11)
    assert np.array_equal(mask[raw[5] != 11], raw[5][raw[5] != 11])  # the other ids are unchanged


def test_oxford_pet_trimap_mapping_and_split():
    path = need("oxford_pet_sample3_128x128_uint8.npz")
    train, test = load_seg_split(str(path), "train"), load_seg_split(str(path), "test")
    assert (len(train), len(test)) == (480, 120) and train.classes == ["background", "pet"]
    arrays = np.load(path)
    both = np.concatenate([train.masks, test.masks])
    assert sorted(np.unique(both)) == [0, 1, IGNORE_INDEX]
    assert (both == 1).sum() == (arrays["trimap"] == 1).sum()  # 1 = pet
    assert (both == 0).sum() == (arrays["trimap"] == 2).sum()  # 2 = background
    assert (both == IGNORE_INDEX).sum() == (arrays["trimap"] == 3).sum()  # 3 = boundary, ignored


def test_orl_faces_as_one_split_of_40_identities():
    split = load_split(str(need("orl_faces_112x92_uint8.npz")), "all")
    assert len(split) == 400 and len(split.classes) == 40
    img, label = split.base[0]
    assert img.size == (92, 112) and label == split.labels[0]


def test_tiny_imagenet_val_annotations(tmp_path):
    archive = need("tiny-imagenet-10class-subset.tar.gz")
    train = load_split(str(archive), "train", cache_dir=str(tmp_path))
    val = load_split(str(archive), "test", cache_dir=str(tmp_path))
    assert val.split == "val" and train.classes == val.classes and len(train.classes) == 10
    assert len(val) == 500 and np.bincount(val.labels).tolist() == [50] * 10
    assert len(train) == 5000
    img, _ = val.base[0]
    assert img.size == (64, 64)
