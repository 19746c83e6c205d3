"""The built-in datasets, chosen by name: ``fashion-mnist`` (IDX files, read by
:func:`read_idx`), ``digits`` (scikit-learn) and ``cifar10`` / ``cifar100`` (torchvision).

Each is registered with ``detect=None``, so :func:`~supmim.data.readers.registry.resolve_data`
picks it when ``--data`` is its name; ``--data-root`` (``ctx.root``) says where its files are.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from supmim.data.readers.registry import ReadContext, register_reader
from supmim.data.source import ArrayDataset, DataSource, cache_root
from supmim.data.stratified import stratified_split
from supmim.errors import DataError

__all__ = [
    "CIFAR_STATS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "cifar_source",
    "digits_source",
    "fashion_mnist_source",
    "read_idx",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- fashion-mnist


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), optionally gzipped, checking its magic number."""
    path = str(path)
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; re-install or re-download it") from e
    # Magic: two zero bytes, a type code, then the number of dimensions.
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (magic bytes {data[:4].hex()}); re-install or re-download it")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"IDX file {path} is truncated (header); re-install or re-download it")
    shape = struct.unpack(f">{ndim}I", data[4:offset])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    if len(data) - offset != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise DataError(f"IDX file {path} holds {len(data) - offset} data bytes, expected shape {shape}; re-install it")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _fashion_mnist_files(base: Path) -> dict[str, Path]:
    """The four IDX files in ``base`` or torchvision's ``base/FashionMNIST/raw``; {} if incomplete."""
    # Also accept torchvision's layout (<root>/FashionMNIST/raw) and un-gzipped files.
    found: dict[str, Path] = {}
    for d in (base, base / "FashionMNIST" / "raw"):
        for key, stem in FASHION_MNIST_FILES.items():
            for fname in (stem + ".gz", stem):
                if key not in found and (d / fname).is_file():
                    found[key] = d / fname
        if len(found) == 4:
            break
        found = {}
    return found


def fashion_mnist_source(root: str | None) -> DataSource:
    """Fashion-MNIST from ``root`` (``--data-root``), else the Debian package's folder."""
    base = Path(root).expanduser() if root else Path(FASHION_MNIST_DIR)
    found = _fashion_mnist_files(base)
    if not found:
        raise DataError(
            f"Fashion-MNIST not found in {base} (need {', '.join(s + '.gz' for s in FASHION_MNIST_FILES.values())}); "
            "install it with `apt-get install dataset-fashion-mnist` or pass --data-root with the four files "
            "(--download is not supported for fashion-mnist)"
        )
    arrays = {k: read_idx(p) for k, p in found.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.dtype != np.uint8:
            raise DataError(
                f"Fashion-MNIST {split} files in {base} are inconsistent ({x.shape} vs {y.shape}); re-install them"
            )
    train = ArrayDataset(arrays["train_images"], arrays["train_labels"])
    test = ArrayDataset(arrays["test_images"], arrays["test_labels"])
    size = tuple(int(s) for s in arrays["train_images"].shape[1:3])
    return DataSource(
        "fashion-mnist", train, test, "test", list(FASHION_MNIST_CLASSES),
        (0.286,) * 3, (0.353,) * 3, size, True,  # type: ignore[arg-type]
    )  # fmt: skip


# --------------------------------------------------------------------------- digits


def digits_source() -> DataSource:
    """scikit-learn's 8x8 digits, with a fixed stratified 20% held out as the test split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("the digits dataset needs scikit-learn; `pip install scikit-learn` (or supmim[sklearn])") from e
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    labels = bunch.target.astype(np.int64)
    # No official test split: hold out a fixed stratified 20% (seed 0), the same for every run.
    keep, held = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    # Stats from the training part only, so the test split never leaks into preprocessing.
    m = float(images[keep].mean() / 255.0)
    s = float(images[keep].std() / 255.0)
    return DataSource(
        "digits", ArrayDataset(images[keep], labels[keep]), ArrayDataset(images[held], labels[held]), "test",
        [str(int(c)) for c in bunch.target_names], (m, m, m), (s, s, s), (8, 8), True,
    )  # fmt: skip


# --------------------------------------------------------------------------- cifar


def cifar_source(name: str, root: str | None, download: bool, cache_dir: str | None) -> DataSource:
    """CIFAR-10 / CIFAR-100 (``name``) through torchvision, from ``root`` or the cache."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = cls.base_folder  # "cifar-10-batches-py" / "cifar-100-python"
    base = Path(root).expanduser() if root else cache_root(cache_dir) / "datasets"
    if base.name == folder:  # the user pointed at the extracted folder itself
        base = base.parent
    if not download and not (base / folder).is_dir():
        raise DataError(
            f"{name} not found: {base / folder} does not exist; pass --download to fetch it into {base}, "
            f"or --data-root pointing at the folder containing {folder}"
        )
    try:
        train = cls(str(base), train=True, download=download)
        test = cls(str(base), train=False, download=download)
    except (RuntimeError, OSError, ValueError) as e:
        # torchvision raises RuntimeError for a missing/corrupt copy; a failed download is an OSError (URLError).
        how = "check your network connection" if download else "pass --download to fetch a fresh copy"
        raise DataError(
            f"cannot load {name} from {base}: {e}; {how}, or --data-root pointing at the folder containing {folder}"
        ) from e
    mean, std = CIFAR_STATS[name]
    return DataSource(name, train, test, "test", list(train.classes), mean, std, (32, 32), False)


# --------------------------------------------------------------------------- registration


def _read_fashion_mnist(_path: Path, ctx: ReadContext) -> DataSource:
    """The reader's load for ``--data fashion-mnist``."""
    return fashion_mnist_source(ctx.root)


def _read_digits(_path: Path, _ctx: ReadContext) -> DataSource:
    """The reader's load for ``--data digits``."""
    return digits_source()


def _read_cifar(_path: Path, ctx: ReadContext) -> DataSource:
    """The reader's load for ``--data cifar10`` / ``cifar100`` (``ctx.name`` says which)."""
    return cifar_source(ctx.name, ctx.root, ctx.download, ctx.cache_dir)


register_reader("fashion-mnist", None, _read_fashion_mnist)
register_reader("digits", None, _read_digits)
register_reader("cifar10", None, _read_cifar)
register_reader("cifar100", None, _read_cifar)
