"""Tests for supmim.data: sources, splits, datasets and transforms.

Real data comes from ``$SUPMIM_DATA_DIR`` (default ``<repo>/../shared/data``, read-only);
tests that need it skip when it is absent. Archives are always extracted into a tmp cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import Subset

import timm.data
from supmim.data import (
    ACCEPTED_FORMS,
    ArrayDataset,
    DataSource,
    ImageDataset,
    ReadContext,
    build_eval_transform,
    build_train_transform,
    channel_stats,
    labels_of,
    read_idx,
    register_reader,
    resolve_data,
    stratified_split,
    stratified_subset,
    unregister_reader,
)
from supmim.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SUPMIM_DATA_DIR", REPO.parent / "shared" / "data"))
SMALL_TAR = DATA_DIR / "cifar10_small_5k_1k_jpeg_q75.tar.gz"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _need_small_tar() -> Path:
    if not SMALL_TAR.is_file():
        pytest.skip(f"real data not found: {SMALL_TAR} (set SUPMIM_DATA_DIR to the shared data folder)")
    return SMALL_TAR


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One extraction cache for the session, so the CIFAR tarball is unpacked once."""
    return str(tmp_path_factory.mktemp("supmim-cache"))


@pytest.fixture(scope="session")
def cifar_small(cache_dir: str):
    return resolve_data(str(_need_small_tar()), cache_dir=cache_dir)


def _save(path: Path, img: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _rgb(seed: int, size: tuple[int, int] = (12, 10)) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def _make_tree(root: Path, held: str = "val") -> Path:
    """A 2-class tree with grey, RGBA, palette and nested/upper-case-extension files."""
    _save(root / "train/cat/a.png", _rgb(0))
    _save(root / "train/cat/b.png", _rgb(1).convert("L"))  # greyscale
    _save(root / "train/cat/deep/er/c.JPG", _rgb(2))  # nested, upper-case extension
    (root / "train/cat/notes.txt").write_text("not an image")
    _save(root / "train/dog/d.png", _rgb(3).convert("RGBA"))
    _save(root / "train/dog/e.gif", _rgb(4).convert("P"))  # palette
    _save(root / f"{held}/cat/f.png", _rgb(5))
    _save(root / f"{held}/dog/g.bmp", _rgb(6))
    return root


# --------------------------------------------------------------------------- folders


def test_folder_tree(tmp_path: Path) -> None:
    src = resolve_data(str(_make_tree(tmp_path / "data")))
    assert src.classes == ["cat", "dog"]
    assert src.test_split == "val" and src.test is not None
    assert len(src.train) == 5 and len(src.test) == 2
    assert labels_of(src.train).tolist() == [0, 0, 0, 1, 1]
    assert labels_of(src.test).tolist() == [0, 1]
    assert src.mean == (0.5, 0.5, 0.5) and not src.grey and src.native_size == (10, 12)  # (H, W)
    modes = {src.train[i][0].mode for i in range(len(src.train))}
    assert {"L", "RGBA", "P"} <= modes  # the loader keeps the file's mode
    for in_chans in (1, 3):
        tf = build_eval_transform(8, *channel_stats(src.mean, src.std, in_chans))
        ds = ImageDataset(src.train, tf, in_chans)
        for i in range(len(ds)):
            x, y, j = ds[i]
            assert x.shape == (in_chans, 8, 8) and x.dtype == torch.float32
            assert j == i and y == labels_of(src.train)[i]


def test_folder_test_split_and_none(tmp_path: Path) -> None:
    src = resolve_data(str(_make_tree(tmp_path / "t", held="test")))
    assert src.test_split == "test" and len(src.test) == 2
    only = tmp_path / "only"
    _save(only / "train/a/x.png", _rgb(0, (16, 16)))
    _save(only / "train/b/y.png", _rgb(1, (16, 16)))
    src = resolve_data(str(only))
    assert src.test is None and src.test_split == ""
    assert src.native_size == (16, 16)


def test_folder_grey_probe(tmp_path: Path) -> None:
    for i, c in enumerate("ab"):
        _save(tmp_path / f"train/{c}/x.png", _rgb(i, (9, 9)).convert("L"))
    src = resolve_data(str(tmp_path))
    assert src.grey and src.native_size == (9, 9)
    assert src.train[0][0].mode == "L"


def test_folder_class_not_in_train(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "d")
    _save(root / "val/horse/h.png", _rgb(7))
    with pytest.raises(DataError, match="horse"):
        resolve_data(str(root))


def test_folder_empty_class(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "d")
    (root / "train/emu").mkdir()
    with pytest.raises(DataError, match="emu"):
        resolve_data(str(root))


def test_folder_without_train(tmp_path: Path) -> None:
    _save(tmp_path / "cats/a.png", _rgb(0))
    with pytest.raises(DataError, match="train/"):
        resolve_data(str(tmp_path))


@pytest.mark.parametrize("spec", ["/definitely/not/here", "imagenet-9000", "mnist"])
def test_unknown_spec_lists_forms(spec: str) -> None:
    with pytest.raises(DataError) as err:
        resolve_data(spec)
    msg = str(err.value)
    assert ACCEPTED_FORMS in msg
    for form in ("train/", ".tar.gz", "fashion-mnist", "digits", "cifar10", "cifar100"):
        assert form in msg


def test_non_archive_file(tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_text("a,b\n")
    with pytest.raises(DataError, match="Accepted forms"):
        resolve_data(str(f))


def test_labels_of_does_not_open_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = resolve_data(str(_make_tree(tmp_path / "d")))

    def boom(*a, **k):
        raise AssertionError("labels_of opened an image")

    monkeypatch.setattr(Image, "open", boom)
    full = labels_of(src.train)
    assert full.dtype == np.int64
    assert labels_of(Subset(src.train, [4, 0])).tolist() == [1, 0]
    assert labels_of(ImageDataset(src.train, None, 3, np.array([3, 1]))).tolist() == [1, 0]
    assert labels_of(Subset(ImageDataset(src.train, None, 3, np.array([3, 1, 0])), [2])).tolist() == [0]


def test_corrupt_image_file(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "d")
    (root / "train/cat/a.png").write_bytes(b"not a png")
    src = resolve_data(str(root))
    with pytest.raises(DataError, match="a.png"):
        src.train[0]


# --------------------------------------------------------------------------- archives


def test_shared_archive_checksum() -> None:
    tar = _need_small_tar()
    sums = dict(line.split()[::-1] for line in (DATA_DIR / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert hashlib.sha256(tar.read_bytes()).hexdigest() == sums[tar.name]


def test_shared_archive_resolves(cifar_small) -> None:
    src = cifar_small
    assert len(src.train) == 5000 and len(src.test) == 1000 and src.test_split == "test"
    assert len(src.classes) == 10 and src.classes[0] == "airplane"
    assert np.bincount(labels_of(src.train)).tolist() == [500] * 10
    assert np.bincount(labels_of(src.test)).tolist() == [100] * 10
    assert src.native_size == (32, 32) and not src.grey
    img, label = src.train[0]
    assert img.size == (32, 32) and img.mode == "RGB" and label == 0


def test_archive_cache_reused(cifar_small, cache_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    extracted = list((Path(cache_dir) / "archives").iterdir())
    assert len(extracted) == 1 and not extracted[0].name.startswith(".")
    mtime = extracted[0].stat().st_mtime_ns

    def no_extract(*a, **k):
        raise AssertionError("archive extracted a second time")

    monkeypatch.setattr(tarfile, "open", no_extract)
    again = resolve_data(str(SMALL_TAR), cache_dir=cache_dir)
    assert len(again.train) == 5000
    assert extracted[0].stat().st_mtime_ns == mtime


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    _rgb(seed, (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


def test_archive_under_top_folder(tmp_path: Path) -> None:
    members = {f"mydata/{s}/{c}/{i}.png": _png_bytes(i) for s in ("train", "val") for c in ("x", "y") for i in range(2)}
    tar = _tar_gz(tmp_path / "ro" / "mydata.tgz", members)
    os.chmod(tar.parent, 0o555)  # the archive's folder is read-only: nothing may be written beside it
    try:
        src = resolve_data(str(tar), cache_dir=str(tmp_path / "cache"))
    finally:
        os.chmod(tar.parent, 0o755)
    assert src.classes == ["x", "y"] and len(src.train) == 4 and src.test_split == "val"
    assert src.native_size == (8, 8)
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == ["mydata.tgz"]
    (out,) = (tmp_path / "cache" / "archives").iterdir()
    assert out.name.startswith("mydata-") and len(out.name) == len("mydata-") + 16


@pytest.mark.parametrize("evil", ["../evil.txt", "../../evil.txt"])
def test_archive_path_traversal(tmp_path: Path, evil: str) -> None:
    tar = _tar_gz(tmp_path / "bad.tar.gz", {"train/a/x.png": _png_bytes(0), evil: b"pwned"})
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="bad.tar.gz"):
        resolve_data(str(tar), cache_dir=str(cache))
    assert not list(tmp_path.rglob("evil.txt"))
    assert list((cache / "archives").iterdir()) == []  # no half-extracted folder left behind


def test_archive_absolute_member(tmp_path: Path) -> None:
    target = tmp_path / "abs_evil.txt"
    tar = _tar_gz(tmp_path / "abs.tar.gz", {"train/a/x.png": _png_bytes(0), str(target): b"pwned"})
    try:
        src = resolve_data(str(tar), cache_dir=str(tmp_path / "cache"))
    except DataError:
        pass
    else:  # the data filter may instead strip the leading "/" and keep it inside the cache
        assert len(src.train) == 1
    assert not target.exists()


def test_archive_corrupt(tmp_path: Path) -> None:
    bad = tmp_path / "junk.tar.gz"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="junk.tar.gz"):
        resolve_data(str(bad), cache_dir=str(tmp_path / "cache"))
    assert list((tmp_path / "cache" / "archives").iterdir()) == []


# --------------------------------------------------------------------------- built-ins


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_known_values(tmp_path: Path) -> None:
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", imgs)
    raw = (tmp_path / "x.gz").read_bytes()
    assert gzip.decompress(raw)[:4] == b"\x00\x00\x08\x03"  # magic 2051
    out = read_idx(tmp_path / "x.gz")
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    assert out[1, 2, 3] == 23 and out[0, 0, 1] == 1
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x12\x34\x08\x01\x00\x00\x00\x01\x05"))
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01"))
    with pytest.raises(DataError, match="expected shape"):
        read_idx(tmp_path / "short.gz")


def test_fashion_mnist_tiny_root(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    src = resolve_data("fashion-mnist", root=str(tmp_path))
    assert len(src.train) == 6 and len(src.test) == 3
    assert labels_of(src.train).tolist() == [0, 1, 2, 3, 4, 5]
    img, label = src.test[2]
    assert img.mode == "L" and img.size == (28, 28) and label == 2


def test_fashion_mnist_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        resolve_data("fashion-mnist", root=str(tmp_path))
    assert "--data-root" in str(err.value)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real() -> None:
    src = resolve_data("fashion-mnist")
    assert src.name == "fashion-mnist" and src.test_split == "test"
    assert len(src.train) == 60000 and len(src.test) == 10000
    assert src.classes[0] == "T-shirt/top" and src.classes[9] == "Ankle boot"
    assert src.native_size == (28, 28) and src.grey
    assert src.mean == (0.286,) * 3 and src.std == (0.353,) * 3
    img, _ = src.train[0]
    assert img.mode == "L" and img.size == (28, 28)
    assert np.bincount(labels_of(src.train)).tolist() == [6000] * 10
    assert np.bincount(labels_of(src.test)).tolist() == [1000] * 10


def test_digits() -> None:
    pytest.importorskip("sklearn")
    src = resolve_data("digits")
    assert len(src.train) + len(src.test) == 1797 and src.test_split == "test"
    tr, te = labels_of(src.train), labels_of(src.test)
    all_counts = np.bincount(tr, minlength=10) + np.bincount(te, minlength=10)
    assert np.bincount(te, minlength=10).tolist() == [round(0.2 * c) for c in all_counts]
    img, _ = src.train[0]
    assert img.mode == "L" and img.size == (8, 8) and src.grey and src.native_size == (8, 8)
    assert max(int(np.asarray(src.train[i][0]).max()) for i in range(50)) == 255
    again = resolve_data("digits")
    assert np.array_equal(labels_of(again.test), te)  # the carved test split is fixed


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_without_download(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DataError, match="--download") as err:
        resolve_data(name, root=str(tmp_path), download=False)
    assert folder in str(err.value) and "--data-root" in str(err.value)
    with pytest.raises(DataError, match="--download"):
        resolve_data(name, cache_dir=str(tmp_path / "cache"))


# --------------------------------------------------------------------------- reader registry

TOY_MARKER = "TOY_FORMAT"


def _toy_source(path: Path, ctx: ReadContext) -> DataSource:
    """A toy format: the marker file holds the number of 4x4 grey images, labels alternate 0/1."""
    n = int((path / TOY_MARKER).read_text())
    images = np.full((n, 4, 4), 7, dtype=np.uint8)
    ds = ArrayDataset(images, np.arange(n) % 2)
    return DataSource(ctx.name, ds, None, "", ["even", "odd"], (0.5,) * 3, (0.5,) * 3, (4, 4), True)


@pytest.fixture
def toy_reader():
    register_reader("toy-format", lambda p: (p / TOY_MARKER).is_file(), _toy_source)
    yield
    unregister_reader("toy-format")


def test_registered_reader_is_dispatched_to(tmp_path: Path, toy_reader) -> None:
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / TOY_MARKER).write_text("5")
    src = resolve_data(str(folder))
    assert src.name == str(folder.resolve()) and src.classes == ["even", "odd"]
    assert labels_of(src.train).tolist() == [0, 1, 0, 1, 0] and src.test is None
    # The same files in an archive: the extracted folder goes through the registry too.
    archive = tmp_path / "toy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / TOY_MARKER, arcname=TOY_MARKER)
    src = resolve_data(str(archive), cache_dir=str(tmp_path / "cache"))
    assert src.name == str(archive.resolve()) and len(src.train) == 5


def test_unregistered_reader_is_gone(tmp_path: Path) -> None:
    (tmp_path / TOY_MARKER).write_text("5")
    register_reader("toy-format", lambda p: (p / TOY_MARKER).is_file(), _toy_source)
    assert unregister_reader("toy-format") is not None
    with pytest.raises(DataError, match="has no train/ folder"):  # back to the image-folder reader
        resolve_data(str(tmp_path))


def test_registered_dataset_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ReadContext] = []

    def load(path: Path, ctx: ReadContext) -> DataSource:
        seen.append(ctx)
        return _toy_source(tmp_path, ctx)

    (tmp_path / TOY_MARKER).write_text("3")
    register_reader("toy-set", None, load)
    try:
        src = resolve_data("Toy_Set", root="/somewhere", download=True)
        assert len(src.train) == 3 and seen[-1].root == "/somewhere" and seen[-1].download
        monkeypatch.chdir(tmp_path)
        with pytest.raises(DataError, match="no such folder or file"):  # a path, not the name
            resolve_data("./toy-set")
    finally:
        unregister_reader("toy-set")


def test_deprecated_module_paths_alias_the_new_objects() -> None:
    import supmim.data.hf as old_hf
    import supmim.data.readers.hf as new_hf
    import supmim.data.readers.shards as new_shards
    import supmim.data.readers.tiny_imagenet as new_tiny
    import supmim.data.shards as old_shards
    import supmim.data.sources as old_sources
    import supmim.data.tiny_imagenet as old_tiny
    from supmim import data

    for name in ("INDEX", "ShardDataset", "is_shard_folder", "load_shards", "pack"):
        assert getattr(old_shards, name) is getattr(new_shards, name)
    for name in ("HFImageDataset", "is_hf_folder", "load_hf"):
        assert getattr(old_hf, name) is getattr(new_hf, name)
    for name in ("is_tiny_imagenet", "load_tiny_imagenet"):
        assert getattr(old_tiny, name) is getattr(new_tiny, name)
    for name in ("ACCEPTED_FORMS", "ArrayDataset", "DataSource", "FolderDataset", "IMAGE_EXTENSIONS",
                 "cache_root", "extract_archive", "labels_of", "read_idx", "resolve_data",
                 "stratified_split", "stratified_subset"):
        assert getattr(old_sources, name) is getattr(data, name)


# --------------------------------------------------------------------------- splits


def _labels(counts: list[int], seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    return np.random.default_rng(seed).permutation(labels)


def test_stratified_split() -> None:
    labels = _labels([50, 30, 7, 1])
    keep, held = stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[held], minlength=4).tolist() == [10, 6, 1, 0]
    assert np.intersect1d(keep, held).size == 0 and keep.size + held.size == labels.size
    assert np.all(np.diff(keep) > 0) and np.all(np.diff(held) > 0)
    assert keep.dtype == np.int64 and held.dtype == np.int64
    k2, h2 = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(keep, k2) and np.array_equal(held, h2)
    assert not np.array_equal(held, stratified_split(labels, 0.2, seed=4)[1])
    with pytest.raises(DataError):
        stratified_split(labels, 1.5, seed=0)


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_stratified_split_property(counts: list[int], fraction: float, seed: int) -> None:
    labels = _labels(counts, seed)
    keep, held = stratified_split(labels, fraction, seed)
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(labels.size))
    for c, n in enumerate(counts):
        assert int(np.sum(labels[held] == c)) == round(fraction * n)


def test_stratified_subset() -> None:
    labels = _labels([100, 100, 100, 5])
    idx = stratified_subset(labels, 50, seed=1)
    assert idx.size == 50 and np.unique(idx).size == 50 and np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx], minlength=4)
    assert counts[3] == 5 and counts[:3].max() - counts[:3].min() <= 1  # small class gives all it has
    assert np.array_equal(idx, stratified_subset(labels, 50, seed=1))
    balanced = np.bincount(labels[stratified_subset(labels, 20, seed=0)], minlength=4)
    assert balanced.tolist() == [5, 5, 5, 5]
    assert stratified_subset(labels, labels.size, seed=0).size == labels.size
    with pytest.raises(DataError):
        stratified_subset(labels, labels.size + 1, seed=0)


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=6), data=st.data())
def test_stratified_subset_property(counts: list[int], data: st.DataObject) -> None:
    labels = _labels(counts)
    n = data.draw(st.integers(0, labels.size))
    idx = stratified_subset(labels, n, seed=data.draw(st.integers(0, 1000)))
    assert idx.size == n and np.unique(idx).size == n
    got = np.bincount(labels[idx], minlength=len(counts))
    # Balanced as far as possible: any class short of the max gave everything it had.
    top = got.max(initial=0)
    for g, c in zip(got, counts):
        assert g == c or g >= top - 1


# --------------------------------------------------------------------------- datasets & transforms


def test_image_dataset_returns_base_index() -> None:
    base = ArrayDataset(np.arange(10, dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2), np.arange(10) % 3)
    ds = ImageDataset(base, None, 3, indices=np.array([7, 2, 9]))
    assert len(ds) == 3
    img, label, index = ds[0]
    assert index == 7 and label == 1 and img.mode == "RGB" and np.asarray(img)[0, 0, 0] == 7
    assert ds[-1][2] == 9
    assert labels_of(ds).tolist() == [1, 2, 0]
    with pytest.raises(DataError):
        ImageDataset(base, None, 3, indices=np.array([10]))


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("crop", ["pad", "rrc", "none"])
def test_train_transform_shape(in_chans: int, crop: str) -> None:
    mean, std = channel_stats((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), in_chans)
    tf = build_train_transform(32, in_chans, mean, std, crop=crop, re_prob=0.5)
    for img in (_rgb(0, (32, 32)), _rgb(1, (40, 24)).convert("L")):  # also off-size and wrong-mode input
        x = tf(img)
        assert x.shape == (in_chans, 32, 32) and x.dtype == torch.float32


def test_train_transform_rand_augment() -> None:
    tf = build_train_transform(32, 3, (0.5,) * 3, (0.5,) * 3, rand_augment="rand-m9-mstd0.5")
    assert tf(_rgb(0, (32, 32))).shape == (3, 32, 32)
    with pytest.raises(DataError, match="RGB"):
        build_train_transform(32, 1, (0.5,), (0.5,), rand_augment="rand-m9-mstd0.5")
    for bad in ("randq", "bogus"):  # timm itself ignores unknown sections inside "rand-..."
        with pytest.raises(DataError, match="rand-m9"):
            build_train_transform(32, 3, (0.5,) * 3, (0.5,) * 3, rand_augment=bad)


def test_train_transform_bad_args() -> None:
    with pytest.raises(DataError, match="pad, rrc, none"):
        build_train_transform(32, 3, (0.5,) * 3, (0.5,) * 3, crop="zoom")
    with pytest.raises(DataError, match="channel_stats"):
        build_train_transform(32, 1, (0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("in_chans, size, crop_pct", [(3, 32, 1.0), (3, 24, 0.875), (1, 16, 1.0)])
def test_eval_transform_matches_timm(in_chans: int, size: int, crop_pct: float) -> None:
    mean, std = channel_stats((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), in_chans)
    ours = build_eval_transform(size, mean, std, crop_pct=crop_pct)
    ref = timm.data.create_transform(
        input_size=(in_chans, size, size), is_training=False, interpolation="bicubic",
        mean=mean, std=std, crop_pct=crop_pct,
    )  # fmt: skip
    img = _rgb(0, (37, 29)).convert("L" if in_chans == 1 else "RGB")
    a, b = ours(img), ref(img)
    assert a.shape == (in_chans, size, size) and torch.equal(a, b)


def test_channel_stats() -> None:
    m, s = channel_stats((0.3, 0.6, 0.9), (0.1, 0.2, 0.3), 1)
    assert m == pytest.approx((0.6,)) and s == pytest.approx((0.2,))
    assert channel_stats((0.3, 0.6, 0.9), (0.1, 0.2, 0.3), 3) == ((0.3, 0.6, 0.9), (0.1, 0.2, 0.3))
    assert channel_stats((0.5,), (0.2,), 3) == ((0.5,) * 3, (0.2,) * 3)
