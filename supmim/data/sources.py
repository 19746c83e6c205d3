"""Where images come from: resolve the CLI's ``--data`` into train/test datasets.

Every dataset here yields ``(PIL.Image.Image, int label)`` and exposes its labels as an
int64 array (``.labels`` or torchvision's ``.targets``) so that :func:`labels_of` can split
and subsample without decoding a single image.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

from supmim.data.datasets import ImageDataset
from supmim.errors import DataError

__all__ = [
    "ACCEPTED_FORMS",
    "ArrayDataset",
    "DataSource",
    "FolderDataset",
    "IMAGE_EXTENSIONS",
    "cache_root",
    "extract_archive",
    "labels_of",
    "read_idx",
    "resolve_data",
    "stratified_split",
    "stratified_subset",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")

ACCEPTED_FORMS = (
    "Accepted forms of --data:\n"
    "  - a folder containing train/ and val/ (or test/), each with one sub-folder per class\n"
    "    holding images (" + " ".join(IMAGE_EXTENSIONS) + ");\n"
    "  - a .tar, .tar.gz or .tgz archive of such a folder (it may sit under one top-level folder);\n"
    "  - the Tiny ImageNet layout (wnids.txt, train/<wnid>/images/*.JPEG, val/images/ +\n"
    "    val/val_annotations.txt), as a folder or such an archive: classes = sorted wnids, test split = val;\n"
    "  - a folder of WebDataset shards written by `supmim data pack`;\n"
    "  - a Hugging Face dataset saved with save_to_disk (Image + ClassLabel columns);\n"
    "  - fashion-mnist  (apt-get install dataset-fashion-mnist, or --data-root with the four IDX .gz files);\n"
    "  - digits         (scikit-learn's load_digits; pip install scikit-learn);\n"
    "  - cifar10 or cifar100  (torchvision; pass --download, or --data-root with the extracted files)."
)

GREY_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
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


@dataclass
class DataSource:
    """A resolved ``--data``: the datasets plus what the trainer needs to know about them."""

    name: str
    train: Dataset
    test: Dataset | None
    test_split: str
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_size: tuple[int, int] | None
    grey: bool


# --------------------------------------------------------------------------- datasets


class ArrayDataset(Dataset):
    """In-memory uint8 images, ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB, with int labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels).astype(np.int64)
        if images.dtype != np.uint8:
            raise DataError(f"ArrayDataset needs uint8 images, got {images.dtype}; scale to 0..255 and cast")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise DataError(f"ArrayDataset needs images shaped (N,H,W) or (N,H,W,3), got {images.shape}")
        if labels.shape != (images.shape[0],):
            raise DataError(f"got {images.shape[0]} images but labels shaped {labels.shape}; pass one label per image")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        # fromarray picks 'L' for 2-D and 'RGB' for (H,W,3) uint8.
        return Image.fromarray(self.images[i]), int(self.labels[i])


class FolderDataset(Dataset):
    """Image files on disk with their labels; files are opened only in ``__getitem__``."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, classes: list[str]) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        path = self.paths[i]
        try:
            # Our own file handle, so multi-frame files (GIF, TIFF) never leak one;
            # load() reads the (first frame's) pixels before the handle closes.
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()
        except Exception as e:  # noqa: BLE001 - PIL raises many types for malformed files
            raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}; replace or "
                            "remove the file") from e
        return img, int(self.labels[i])


# --------------------------------------------------------------------------- labels & splits


def labels_of(dataset: Any) -> np.ndarray:
    """Int64 labels of every item of ``dataset``, read from metadata rather than images.

    Understands our datasets (``.labels``), torchvision's (``.targets``), and ``Subset``,
    ``ConcatDataset`` and :class:`ImageDataset` around them. Anything else falls back to
    iterating ``dataset[i][1]``, which does decode images (slow, but correct).
    """
    if isinstance(dataset, ImageDataset):
        labels = labels_of(dataset.base)
        return labels if dataset.indices is None else labels[dataset.indices]
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, ConcatDataset):
        parts = [labels_of(d) for d in dataset.datasets]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    for attr in ("labels", "targets"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values):
            return np.asarray(values, dtype=np.int64).reshape(-1)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}; use labels_of(dataset)"
        )
    return labels


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into ``(keep, heldout)``, holding out ``round(fraction * n_c)`` of each class c.

    Deterministic in ``(labels, fraction, seed)``; both arrays are sorted int64 and disjoint.
    ``round`` is Python's (half to even).
    """
    labels = _check_labels(labels)
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"split fraction must be in [0, 1], got {fraction}; e.g. 0.1 holds out 10% of each class")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):  # sorted, so the RNG stream is consumed in a fixed order
        idx = np.flatnonzero(labels == c)
        k = round(fraction * idx.size)
        held.append(rng.permutation(idx)[:k])
    heldout = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(labels.size, dtype=bool)
    mask[heldout] = False
    return np.flatnonzero(mask).astype(np.int64), heldout.astype(np.int64)


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` positions, as class-balanced as the class sizes allow; deterministic, sorted.

    Each class gets ``n // n_classes``; classes too small give all they have and the
    rest is shared among the others; the last few leftovers go to classes picked by ``seed``.
    """
    labels = _check_labels(labels)
    if not 0 <= n <= labels.size:
        raise DataError(f"cannot take a subset of {n} from {labels.size} samples; pass 0 <= n <= {labels.size}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.zeros_like(counts)
    remaining = n
    while remaining > 0:
        open_ = np.flatnonzero(quota < counts)
        share = remaining // open_.size
        if share == 0:
            # Fewer leftovers than open classes: one extra each for a seeded choice.
            quota[rng.choice(open_, size=remaining, replace=False)] += 1
            break
        give = np.minimum(share, counts[open_] - quota[open_])
        quota[open_] += give
        remaining -= int(give.sum())
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- folders & archives


def cache_root(cache_dir: str | None = None) -> Path:
    """Cache folder: ``cache_dir``, else ``$SUPMIM_CACHE``, else ``~/.cache/supmim``."""
    return Path(cache_dir or os.environ.get("SUPMIM_CACHE") or Path.home() / ".cache" / "supmim").expanduser()


def _visible(p: Path) -> bool:
    # Skip hidden entries and macOS archive clutter ("._x.jpg", "__MACOSX").
    return not p.name.startswith(".") and p.name != "__MACOSX"


def _find_layout_root(top: Path) -> Path | None:
    """The folder holding ``train/``: ``top`` itself or a single folder below it."""
    if (top / "train").is_dir():
        return top
    subdirs = [d for d in top.iterdir() if d.is_dir() and _visible(d)]
    hits = [d for d in subdirs if (d / "train").is_dir()]
    return hits[0] if len(hits) == 1 else None


def _scan_split(split_dir: Path, class_names: list[str]) -> tuple[list[str], list[int], list[Path]]:
    """Image paths and labels under ``split_dir/<class>/**``; also the empty class folders."""
    index = {c: i for i, c in enumerate(class_names)}
    paths: list[str] = []
    labels: list[int] = []
    empty: list[Path] = []
    for cdir in sorted(d for d in split_dir.iterdir() if d.is_dir() and _visible(d)):
        found = []
        for dirpath, dirnames, filenames in os.walk(cdir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [
                os.path.join(dirpath, f)
                for f in filenames
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        if not found:
            empty.append(cdir)
        found.sort()  # os.walk order is filesystem-dependent; sorting keeps indices stable
        paths += found
        labels += [index[cdir.name]] * len(found)
    return paths, labels, empty


def _probe(paths: list[str], k: int = 16) -> tuple[tuple[int, int] | None, bool]:
    """Guess ``(native_size, grey)`` from the headers of up to ``k`` evenly spaced files.

    Only headers are read (no decoding), so it is cheap; it is a sample, so a folder of
    mixed sizes may still report one size. Any failure just means "unknown".
    """
    if not paths:
        return None, False
    sizes, greys = set(), set()
    try:
        for i in np.linspace(0, len(paths) - 1, min(k, len(paths))).astype(int):
            with Image.open(paths[i]) as im:
                sizes.add((im.height, im.width))
                greys.add(im.mode in ("1", "L", "LA", "I", "I;16", "F"))
    except Exception:  # a probe must never stop loading; bad files surface in __getitem__
        return None, False
    return (sizes.pop() if len(sizes) == 1 else None), greys == {True}


def _load_folder(top: Path, name: str, what: str) -> DataSource:
    root = _find_layout_root(top)
    if root is None:
        raise DataError(
            f"{what} {name} has no train/ folder (looked in it and in its sub-folders); "
            "lay it out as train/<class>/*.jpg plus val/<class>/ or test/<class>/.\n" + ACCEPTED_FORMS
        )
    from supmim.data.tiny_imagenet import is_tiny_imagenet, load_tiny_imagenet
    if is_tiny_imagenet(root):
        train_ds, test_ds, split_name, wnids = load_tiny_imagenet(root)
        size, grey = _probe(train_ds.paths)
        mean, std = GREY_STATS
        return DataSource(name, train_ds, test_ds, split_name, wnids, mean, std, size, grey)
    train_dir = root / "train"
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and _visible(d))
    if not classes:
        raise DataError(f"{train_dir} has no class folders; put each class's images in train/<class>/")
    paths, labels, empty = _scan_split(train_dir, classes)
    if empty:
        raise DataError(
            f"class folder {empty[0]} has no images ({len(empty)} empty in all); add images with one of the "
            f"extensions {' '.join(IMAGE_EXTENSIONS)} or remove the folder"
        )
    train = FolderDataset(paths, np.asarray(labels), classes)

    # "test" wins over "val" when both exist: it is the split meant for the final report.
    test, test_split = None, ""
    for split in ("test", "val"):
        split_dir = root / split
        if split_dir.is_dir():
            extra = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and _visible(d) and d.name not in classes)
            if extra:
                raise DataError(
                    f"{split_dir} has class folder(s) {', '.join(repr(c) for c in extra)} that train/ lacks; "
                    f"every {split}/ class must also be in train/ (rename or remove it, or add training images)"
                )
            t_paths, t_labels, _ = _scan_split(split_dir, classes)
            test, test_split = FolderDataset(t_paths, np.asarray(t_labels), classes), split
            break
    size, grey = _probe(paths)
    mean, std = GREY_STATS
    return DataSource(name, train, test, test_split, classes, mean, std, size, grey)


def _archive_name(path: Path) -> str | None:
    low = path.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if low.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def extract_archive(path: Path, cache_dir: str | None) -> Path:
    """Extract ``path`` once into the cache and return the folder; reuse it afterwards.

    The folder name hashes (absolute path, size, mtime), so an edited archive gets a fresh
    copy. Extraction goes to a hidden temp folder that is renamed into place only when
    complete, so a crash never leaves a half-extracted folder that looks finished.
    """
    name = _archive_name(path) or path.name
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    parent = cache_root(cache_dir) / "archives"
    final = parent / f"{name}-{key}"
    if final.is_dir():
        return final
    if not hasattr(tarfile, "data_filter"):
        raise DataError(
            f"safe extraction of {path} needs Python >= 3.10.12 / 3.11.4 (tarfile filter='data'); "
            "upgrade Python, or extract it yourself and pass the folder to --data"
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create cache folder {parent}: {e}; set SUPMIM_CACHE (or cache_dir) to a writable folder"
        ) from e
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{key}-", dir=parent))
    try:
        with tarfile.open(path, "r:*") as tar:
            # filter="data" refuses absolute paths, "../" escapes, links pointing outside,
            # device files, and drops unsafe permission bits.
            tar.extractall(tmp, filter="data")
    except tarfile.FilterError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"refusing to extract {path}: unsafe member ({e}); rebuild the archive with relative paths only"
        ) from e
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot read archive {path}: {e}; check that the file is a complete .tar/.tar.gz/.tgz") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        # Another process finished first: use its copy.
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    return final


# --------------------------------------------------------------------------- built-in datasets


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), optionally gzipped, checking its magic number."""
    dtypes = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    path = str(path)
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; re-install or re-download it") from e
    # Magic: two zero bytes, a type code, then the number of dimensions.
    if len(data) < 4 or data[0] or data[1] or data[2] not in dtypes:
        raise DataError(f"{path} is not an IDX file (magic bytes {data[:4].hex()}); re-install or re-download it")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"IDX file {path} is truncated (header); re-install or re-download it")
    shape = struct.unpack(f">{ndim}I", data[4:offset])
    dtype = np.dtype(dtypes[data[2]])
    if len(data) - offset != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise DataError(f"IDX file {path} holds {len(data) - offset} data bytes, expected shape {shape}; re-install it")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _fashion_mnist(root: str | None) -> DataSource:
    base = Path(root).expanduser() if root else Path(FASHION_MNIST_DIR)
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


def _digits() -> DataSource:
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


def _cifar(name: str, root: str | None, download: bool, cache_dir: str | None) -> DataSource:
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


# --------------------------------------------------------------------------- entry point

_BUILTIN = {"fashionmnist": "fashion-mnist", "digits": "digits", "cifar10": "cifar10", "cifar100": "cifar100"}


def resolve_data(
    spec: str, *, root: str | None = None, download: bool = False, cache_dir: str | None = None
) -> DataSource:
    """Turn ``--data`` into a :class:`DataSource`; see :data:`ACCEPTED_FORMS`.

    A built-in name wins over a same-named folder in the working directory; write
    ``./cifar10`` to mean the folder. ``root`` (``--data-root``) only matters for the
    built-in datasets; ``cache_dir`` holds extracted archives and downloads.
    """
    spec = str(spec).strip()
    key = spec.lower().replace("-", "").replace("_", "")
    if key in _BUILTIN and os.sep not in spec and not spec.startswith("."):
        name = _BUILTIN[key]
        if name == "fashion-mnist":
            return _fashion_mnist(root)
        if name == "digits":
            return _digits()
        return _cifar(name, root, download, cache_dir)

    path = Path(spec).expanduser()
    if path.is_dir():
        from supmim.data.hf import is_hf_folder, load_hf
        from supmim.data.shards import is_shard_folder, load_shards
        for known, load in ((is_shard_folder, load_shards), (is_hf_folder, load_hf)):
            if known(path):
                train, test, test_split, classes = load(path)
                mean, std = GREY_STATS
                return DataSource(str(path.resolve()), train, test, test_split, classes, mean,
                                  std, None, False)
        return _load_folder(path, str(path.resolve()), "folder")
    if path.is_file():
        if _archive_name(path) is None:
            raise DataError(f"--data {spec!r} is a file but not a .tar/.tar.gz/.tgz archive.\n" + ACCEPTED_FORMS)
        extracted = extract_archive(path, cache_dir)
        return _load_folder(extracted, str(path.resolve()), "archive")
    if path.exists():
        raise DataError(f"--data {spec!r} is neither a folder nor a regular file.\n" + ACCEPTED_FORMS)
    raise DataError(f"--data {spec!r}: no such folder or file, and not a built-in dataset name.\n" + ACCEPTED_FORMS)
