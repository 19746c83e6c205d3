"""Segmentation data: images with per-pixel labels, whatever the source layout.

Every split yields ``(image uint8 (H, W, 3), mask int64 (H, W))`` with classes 0..K-1 and
``IGNORE_INDEX`` (255) for pixels that do not count. Layouts (``--data``):

- **CamVid-style .npz** (``x_<split>`` (N, H, W, 3) uint8 and ``y_<split>`` (N, H, W)): a class
  named Unlabelled / void / ignore in ``classes`` becomes ignore (CamVid: id 11), or pass
  ``ignore_ids``; splits are the file's (CamVid: train 367, val 101, test 233).
- **Oxford-IIIT Pet .npz** (``x`` (N, H, W, 3), ``trimap`` (N, H, W), ``y`` breed): trimap 1 =
  pet -> class 1, 2 = background -> class 0, 3 = boundary -> ignore. The file has no split,
  so a fixed one is carved: 20% of each breed (seed 0) is ``test``, the rest ``train``.
- **ADE20K-style folder** (or archive): ``images/<split>/*.jpg`` and ``annotations/<split>/*.png``
  with the same file stems; ``train`` means ``training`` and ``val``/``test`` mean
  ``validation`` when those folders exist (ADEChallengeData2016). With ``reduce_zero_label``
  (the ADE20K convention, on by default for this layout) label 0 ("other") is ignored and
  labels 1..150 become 0..149. Class names come from ``classes.txt`` (one per line) if present.
  **ADEChallengeData2016** itself (a folder of that name, or one with ``objectInfo150.txt``)
  has 150 classes without a scan of its annotations (values above 150 are ignored), named
  from its ``objectInfo150.txt`` or, without one, from the stored copy of that list
  (``supmim/evaluation/data/ade20k_classes.txt``, first synonym of each name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from supmim.data import IMAGE_EXTENSIONS, stratified_split
from supmim.errors import DataError
from supmim.evaluation.common import data_tag
from supmim.evaluation.segmentation.metrics import IGNORE_INDEX

SEG_DATA_FORMS = (
    "Accepted forms of --data for segmentation:\n"
    "  - a CamVid-style .npz: x_<split> (N,H,W,3) uint8 images, y_<split> (N,H,W) label ids, classes;\n"
    "  - an Oxford-IIIT Pet .npz: x (N,H,W,3), trimap (N,H,W) (1 pet, 2 background, 3 ignore), y breed;\n"
    "  - an ADE20K-style folder or archive: images/<split>/*.jpg + annotations/<split>/*.png."
)
_VOID_NAMES = {"unlabelled", "unlabeled", "void", "ignore", "background-ignore"}
PETS_TEST_FRACTION = 0.2
PETS_SPLIT_SEED = 0
ADE20K_CLASSES = 150
_ADE_NAMES = Path(__file__).resolve().parents[1] / "data" / "ade20k_classes.txt"


@dataclass
class SegSplit:
    """One split: ``images`` is a (N, H, W, 3) uint8 array or a list of file paths; ``masks``
    likewise ((N, H, W) int64 ids with 255 = ignore, or paths read through ``lut``)."""

    images: np.ndarray | list[str]
    masks: np.ndarray | list[str]
    classes: list[str]
    split: str
    tag: str
    lut: np.ndarray | None = None  # (256,) raw label value -> class id / 255, for paths

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """image (H, W, 3) uint8, mask (H, W) int64."""
        if isinstance(self.images, np.ndarray):
            img = self.images[i]
            mask = np.asarray(self.masks[i], dtype=np.int64)
        else:
            img = _read_rgb(self.images[i])
            raw = np.asarray(Image.open(self.masks[i]))
            if raw.ndim != 2:
                raise DataError(f"annotation {self.masks[i]} is not a single-channel label map")
            mask = self.lut[raw].astype(np.int64) if self.lut is not None else raw.astype(np.int64)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        return img, mask

    def describe(self) -> dict[str, Any]:
        return {"split": self.split, "n": len(self), "num_classes": self.num_classes,
                "classes": self.classes, "ignore_index": IGNORE_INDEX}


def _read_rgb(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def _lut(mapping: dict[int, int], default_identity: bool = True) -> np.ndarray:
    lut = np.arange(256, dtype=np.int64) if default_identity else np.full(256, IGNORE_INDEX, np.int64)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def load_seg_split(spec: str, split: str, *, ignore_ids: Sequence[int] | None = None,
                   num_classes: int | None = None, reduce_zero_label: bool | None = None,
                   cache_dir: str | None = None) -> SegSplit:
    """Load ``split`` of the segmentation data ``spec`` (see the module docstring)."""
    path = Path(spec).expanduser()
    tag = data_tag(spec)
    if path.is_file() and path.name.lower().endswith(".npz"):
        with np.load(path, allow_pickle=False) as arrays:
            keys = set(arrays.files)
            if "trimap" in keys:
                return _pets(arrays, split, tag)
            if f"x_{split}" in keys and f"y_{split}" in keys:
                return _split_npz(arrays, split, tag, ignore_ids)
        splits = sorted(k[2:] for k in keys if k.startswith("x_"))
        raise DataError(f"'{spec}' has no segmentation split '{split}' (splits: {', '.join(splits) or 'none'}; "
                        f"keys: {', '.join(sorted(keys))}).\n{SEG_DATA_FORMS}")
    if path.is_file():
        from supmim.data import extract_archive  # the data package's safe, cached extraction

        path = extract_archive(path, cache_dir)
    if path.is_dir():
        return _ade_folder(path, split, tag, num_classes, reduce_zero_label, ignore_ids)
    raise DataError(f"--data '{spec}' does not exist.\n{SEG_DATA_FORMS}")


def _split_npz(arrays: Any, split: str, tag: str, ignore_ids: Sequence[int] | None) -> SegSplit:
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or y.ndim != 3 or x.shape[:3] != y.shape:
        raise DataError(f"x_{split} {x.shape} {x.dtype} / y_{split} {y.shape} are not uint8 images with "
                        "one label map each")
    names = [str(c) for c in arrays["classes"]] if "classes" in arrays.files else \
        [str(i) for i in range(int(y.max()) + 1)]
    void = set(ignore_ids) if ignore_ids is not None else \
        {i for i, n in enumerate(names) if n.lower() in _VOID_NAMES}
    kept = [i for i in range(len(names)) if i not in void]
    mapping = {old: new for new, old in enumerate(kept)}
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)  # ids beyond the names are ignored too
    for old, new in mapping.items():
        lut[old] = new
    return SegSplit(x, lut[y], [names[i] for i in kept], split, tag)


def _pets(arrays: Any, split: str, tag: str) -> SegSplit:
    x, trimap = arrays["x"], arrays["trimap"]
    breeds = arrays["y"].astype(np.int64) if "y" in arrays.files else np.zeros(len(x), np.int64)
    train_idx, test_idx = stratified_split(breeds, PETS_TEST_FRACTION, PETS_SPLIT_SEED)
    if split == "train":
        idx = train_idx
    elif split in ("test", "val"):
        idx, split = test_idx, "test"
    else:
        raise DataError(f"the Oxford Pet arrays have splits train and test (carved: "
                        f"{PETS_TEST_FRACTION:.0%} of each breed, seed {PETS_SPLIT_SEED}); got --split {split}")
    lut = _lut({1: 1, 2: 0, 3: IGNORE_INDEX}, default_identity=False)
    return SegSplit(x[idx], lut[trimap[idx]], ["background", "pet"], split, tag)


def _ade_folder(root: Path, split: str, tag: str, num_classes: int | None,
                reduce_zero_label: bool | None, ignore_ids: Sequence[int] | None) -> SegSplit:
    if not (root / "images").is_dir():
        children = [d for d in root.iterdir() if d.is_dir() and (d / "images").is_dir()]
        if len(children) != 1:
            raise DataError(f"'{root}' has no images/ and annotations/ folders.\n{SEG_DATA_FORMS}")
        root = children[0]
    aliases = {"train": ["training", "train"], "val": ["validation", "val"],
               "test": ["validation", "test", "val"]}
    names = [n for n in aliases.get(split, []) + [split] if (root / "images" / n).is_dir()]
    if not names:
        have = sorted(d.name for d in (root / "images").iterdir() if d.is_dir())
        raise DataError(f"'{root}/images' has no split for '{split}' (found: {', '.join(have) or 'none'})")
    folder = names[0]
    if not (root / "annotations" / folder).is_dir():
        raise DataError(f"'{root}' has images/{folder}/ but no annotations/{folder}/; the ADE20K layout pairs "
                        f"images/{folder}/<stem>.jpg with annotations/{folder}/<stem>.png")
    images = sorted(str(p) for p in (root / "images" / folder).iterdir()
                    if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    ann_dir = root / "annotations" / folder
    masks = [str(ann_dir / (Path(p).stem + ".png")) for p in images]
    missing = [m for m in masks if not Path(m).is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) in {root / 'images' / folder} have no annotation, "
                        f"e.g. {missing[0]}; each image needs annotations/{folder}/<stem>.png")
    if not images:
        raise DataError(f"no images in {root / 'images' / folder}")
    if reduce_zero_label is None:
        reduce_zero_label = folder in ("training", "validation")
    # raw value -> class id: 0 -> ignore and v -> v - 1 with reduce_zero_label, else identity
    lut = np.arange(256, dtype=np.int64)
    if reduce_zero_label:
        lut = np.concatenate([[IGNORE_INDEX], np.arange(255)]).astype(np.int64)
        lut[255] = IGNORE_INDEX
    for i in ignore_ids or ():
        lut[i] = IGNORE_INDEX
    ade_names = _ade_challenge_names(root)
    if num_classes is None and ade_names is not None:
        num_classes = ADE20K_CLASSES
    if num_classes is None:
        seen = 0
        for m in masks:  # one pass over the annotations (state --num-classes to skip it)
            ids = lut[np.unique(np.asarray(Image.open(m)))]
            ids = ids[ids != IGNORE_INDEX]
            seen = max(seen, int(ids.max()) + 1 if ids.size else 0)
        num_classes = seen
    lut[(lut >= num_classes) & (lut != IGNORE_INDEX)] = IGNORE_INDEX
    class_file = root / "classes.txt"
    classes = [line.strip() for line in class_file.read_text().splitlines() if line.strip()] \
        if class_file.is_file() else ade_names if ade_names is not None and len(ade_names) == num_classes \
        else [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise DataError(f"{class_file} names {len(classes)} classes but --num-classes is {num_classes}")
    return SegSplit(images, masks, classes, "train" if split == "train" else split, tag, lut=lut)


def _ade_challenge_names(root: Path) -> list[str] | None:
    """The 150 class names when ``root`` is ADEChallengeData2016 (None otherwise): from its
    ``objectInfo150.txt`` (tab-separated Idx, Ratio, Train, Val, Name; the first synonym of
    Name), else from the stored copy of that file."""
    info = root / "objectInfo150.txt"
    if not info.is_file() and root.name != "ADEChallengeData2016":
        return None
    if info.is_file():
        rows = [line.split("\t") for line in info.read_text().splitlines()[1:] if line.strip()]
        names = [r[-1].strip() for r in rows]
        if len(names) != ADE20K_CLASSES:
            raise DataError(f"{info} lists {len(names)} classes, not ADE20K's {ADE20K_CLASSES}; restore the "
                            "dataset's own file or remove it")
    else:
        names = [n for n in _ADE_NAMES.read_text().splitlines() if n.strip() and not n.startswith("#")]
    return [n.split(",")[0].strip() for n in names]


class SegTensors(Dataset):
    """``(image (C, H, W) float normalised at the model's input size, mask, index)``.

    The mask stays at the label's own resolution (for scoring), or with ``label_size`` is
    resized to it by nearest neighbour (for training, where it halves nothing but the cost).
    """

    def __init__(self, split: SegSplit, size: tuple[int, int], mean: Sequence[float],
                 std: Sequence[float], in_chans: int = 3, interpolation: str = "bilinear",
                 label_size: tuple[int, int] | None = None) -> None:
        self.split, self.size, self.in_chans, self.label_size = split, size, in_chans, label_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                         "bicubic": Image.BICUBIC}.get(interpolation, Image.BILINEAR)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        img, mask = self.split.item(i)
        pil = Image.fromarray(img).resize((self.size[1], self.size[0]), self.resample)
        if self.in_chans == 1:
            pil = pil.convert("L")
        x = torch.from_numpy(np.array(pil, dtype=np.float32) / 255.0)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        if self.label_size is not None and mask.shape != self.label_size:
            small = Image.fromarray(mask.astype(np.uint8)).resize(self.label_size[::-1], Image.NEAREST)
            mask = np.asarray(small, dtype=np.int64)
        return (x - self.mean) / self.std, torch.from_numpy(mask), i


def collate(batch: list[tuple[Tensor, Tensor, int]]) -> tuple[Tensor, list[Tensor], list[int]]:
    """Images stack; masks stay a list, since their sizes may differ (ADE20K)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch], [b[2] for b in batch]
