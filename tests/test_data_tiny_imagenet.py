"""The Tiny ImageNet layout as ``--data`` (folder and archive), for training and evaluation.

Synthetic layouts are built in ``tmp_path``; the real 10-class subset comes from
``$SUPMIM_DATA_DIR`` (default ``<repo>/../shared/data``) and is skipped when absent.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supmim.data import ImageDataset, build_train_transform, resolve_data
from supmim.data.readers.tiny_imagenet import is_tiny_imagenet
from supmim.errors import DataError
from supmim.evaluation.common import shared_data_dir
from supmim.evaluation.datasets import load_split

WNIDS = ["n09246464", "n01641577", "n04067472"]  # deliberately not sorted: classes are the sorted wnids
CLASSES = sorted(WNIDS)
SIZE = 64
REAL = "tiny-imagenet-10class-subset.tar.gz"


def _jpeg(path: Path, seed: int, grey: bool = False) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (SIZE, SIZE) if grey else (SIZE, SIZE, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG")


def make_tiny(root: Path, per_class: int = 2, val: dict[str, str] | None = None,
              annotations: list[str] | None = None) -> Path:
    """A Tiny ImageNet tree at ``root``; ``val`` maps val file -> wnid (default: one per class).

    ``annotations`` replaces the generated ``val_annotations.txt`` lines. ``train/<wnid0>/images/
    <wnid0>_0.JPEG`` and ``val_0.JPEG`` are greyscale.
    """
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(WNIDS)))
    for c, wnid in enumerate(WNIDS):
        for k in range(per_class):
            _jpeg(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", 10 * c + k, grey=c == 0 and k == 0)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    val = val if val is not None else {f"val_{i}.JPEG": w for i, w in enumerate(WNIDS)}
    for i, name in enumerate(val):
        _jpeg(root / "val" / "images" / name, 100 + i, grey=i == 0)
    lines = annotations if annotations is not None else [f"{n}\t{w}\t0\t1\t60\t61" for n, w in val.items()]
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def _tar_gz(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return out


def test_folder_splits_labels_and_classes(tmp_path: Path) -> None:
    root = make_tiny(tmp_path / "tiny-imagenet-3")
    src = resolve_data(str(root), cache_dir=str(tmp_path / "cache"))
    assert src.classes == CLASSES and src.test_split == "val"
    assert len(src.train) == 6 and src.test is not None and len(src.test) == 3
    for path, label in zip(src.train.paths, src.train.labels):
        assert Path(path).parent.parent.name == CLASSES[label]
    assert [Path(p).name for p in src.test.paths] == ["val_0.JPEG", "val_1.JPEG", "val_2.JPEG"]
    assert [CLASSES[y] for y in src.test.labels] == WNIDS  # val_i is labelled WNIDS[i]
    assert src.native_size == (SIZE, SIZE) and not src.grey
    assert is_tiny_imagenet(root)


def test_greyscale_images_become_rgb_and_64px_fit_a_32px_model(tmp_path: Path) -> None:
    src = resolve_data(str(make_tiny(tmp_path / "t")), cache_dir=str(tmp_path / "cache"))
    grey_train = [i for i, p in enumerate(src.train.paths) if Image.open(p).mode == "L"]
    assert len(grey_train) == 1 and Image.open(src.test.paths[0]).mode == "L"
    img, _, _ = ImageDataset(src.train, None, 3)[grey_train[0]]
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (SIZE, SIZE, 3)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    # The cifar10 preset's crop="pad" resizes to img_size first, then pads and crops.
    tf = build_train_transform(32, 3, (0.5,) * 3, (0.5,) * 3, crop="pad", pad=4)
    for ds in (src.train, src.test):
        x, _, _ = ImageDataset(ds, tf, 3)[0]
        assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32)


def test_archive_form_matches_the_folder(tmp_path: Path) -> None:
    folder = make_tiny(tmp_path / "src" / "tiny-imagenet-3")
    archive = _tar_gz(folder, tmp_path / "tiny.tar.gz")
    a = resolve_data(str(archive), cache_dir=str(tmp_path / "cache"))
    f = resolve_data(str(folder), cache_dir=str(tmp_path / "cache"))
    assert a.name == str(archive.resolve()) and a.classes == f.classes == CLASSES
    assert np.array_equal(a.train.labels, f.train.labels) and np.array_equal(a.test.labels, f.test.labels)
    assert [Path(p).name for p in a.train.paths] == [Path(p).name for p in f.train.paths]
    assert str(tmp_path / "cache") in a.train.paths[0]  # read from the extraction cache


def test_evaluation_reads_the_same_splits(tmp_path: Path) -> None:
    archive = _tar_gz(make_tiny(tmp_path / "src" / "tiny-imagenet-3"), tmp_path / "tiny.tar.gz")
    train = load_split(str(archive), "train", cache_dir=str(tmp_path / "cache"))
    val = load_split(str(archive), "test", cache_dir=str(tmp_path / "cache"))
    assert (train.split, len(train), val.split, len(val)) == ("train", 6, "val", 3)
    assert train.classes == val.classes == CLASSES and val.source == str(archive.resolve())
    assert [CLASSES[y] for y in val.labels] == WNIDS
    with pytest.raises(DataError, match="no split 'all'"):
        load_split(str(archive), "all", cache_dir=str(tmp_path / "cache"))


def test_unknown_val_wnid_names_the_file_and_line(tmp_path: Path) -> None:
    val = {"val_0.JPEG": WNIDS[0], "val_1.JPEG": "n00000001"}
    root = make_tiny(tmp_path / "t", val=val)
    with pytest.raises(DataError, match=r"val_annotations\.txt, line 2: val_1\.JPEG is labelled 'n00000001'"):
        resolve_data(str(root))


def test_annotation_of_a_missing_file_names_the_file_and_line(tmp_path: Path) -> None:
    lines = [f"val_0.JPEG\t{WNIDS[0]}\t0\t0\t1\t1", "", f"val_9.JPEG\t{WNIDS[1]}\t0\t0\t1\t1"]
    root = make_tiny(tmp_path / "t", val={"val_0.JPEG": WNIDS[0]}, annotations=lines)
    with pytest.raises(DataError, match=r"line 3: names 'val_9\.JPEG', but .*val_9\.JPEG does not exist"):
        resolve_data(str(root))


@pytest.mark.parametrize("lines, message", [
    ([f"val_0.JPEG\t{WNIDS[0]}", f"val_0.JPEG\t{WNIDS[0]}"], r"line 2: val_0\.JPEG is annotated a second time"),
    (["val_0.JPEG n01641577 0 0 1 1"], r"line 1: expected 'file<TAB>wnid"),
    ([], r"val_0\.JPEG has no line in .*val_annotations\.txt"),
])
def test_malformed_annotations(tmp_path: Path, lines: list[str], message: str) -> None:
    root = make_tiny(tmp_path / "t", val={"val_0.JPEG": WNIDS[0]}, annotations=lines)
    with pytest.raises(DataError, match=message):
        resolve_data(str(root))


def test_wnids_must_match_the_train_folders(tmp_path: Path) -> None:
    root = make_tiny(tmp_path / "t")
    (root / "wnids.txt").write_text("\n".join(WNIDS + ["n07920052"]))
    with pytest.raises(DataError, match="wnids without a train/ folder: n07920052"):
        resolve_data(str(root))


def test_unrecognised_layout_lists_tiny_imagenet(tmp_path: Path) -> None:
    (tmp_path / "nothing" / "here").mkdir(parents=True)
    with pytest.raises(DataError, match="Tiny ImageNet layout"):
        resolve_data(str(tmp_path / "nothing"))


def test_real_tiny_imagenet_subset(tmp_path: Path) -> None:
    path = shared_data_dir() / REAL
    if not path.is_file():
        pytest.skip(f"real data not found: {path} (set SUPMIM_DATA_DIR to the shared data folder)")
    src = resolve_data(str(path), cache_dir=str(tmp_path / "cache"))
    assert len(src.classes) == 10 and src.classes == sorted(src.classes) and src.test_split == "val"
    assert len(src.train) == 5000 and len(src.test) == 500 and src.native_size == (64, 64)
    assert np.bincount(src.train.labels).tolist() == [500] * 10
    assert np.bincount(src.test.labels).tolist() == [50] * 10
    grey = next(i for i, p in enumerate(src.train.paths) if Image.open(p).mode == "L")
    img, label, _ = ImageDataset(src.train, None, 3)[grey]
    assert img.mode == "RGB" and img.size == (64, 64) and src.classes[label] in src.train.paths[grey]
