"""The ImageNet robustness sets in the folder layouts their users have on disk.

- **ImageNet-C**: ``<corruption>/<severity>/<wnid>/*.JPEG``, severities 1..5, the 15 standard
  corruptions plus the 4 extra ones (``speckle_noise``, ``gaussian_blur``, ``spatter``,
  ``saturate``); the release's group folders (``noise/``, ``blur/``, ``weather/``,
  ``digital/``, ``extra/``) above the corruption folders are accepted too.
- **ImageNet-A / -R**: ``<wnid>/*.jpg`` for 200 of the 1000 classes (the lists in
  ``data/imagenet_{a,r}_wnids.txt``), scored with the logits of those classes only.
- **ImageNet-Sketch**: ``<wnid>/*.JPEG`` for all 1000 classes; **ImageNet-V2**: ``<i>/*.jpeg``
  with ``i`` = 0..999, the ImageNet-1k class index (not a position in sorted folder names).

The model's outputs are matched to the wnids by :func:`match_wnids`. A dataset's
*universe* is the set of classes its protocol takes the argmax over: the wnid folders present
for A / R (the stored lists only check that they belong to the set), all 1000 wnids for
Sketch, V2 and C. The scored classes are the universe's classes that the model has;
images of other classes are dropped and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from supmim.data import FolderDataset
from supmim.evaluation.classify import ClassMap
from supmim.evaluation.common import EvaluationError
from supmim.evaluation.datasets import EvalSplit, _scan_class_folders, _visible_dirs
from supmim.evaluation.robustness import CORRUPTIONS

DATA_DIR = Path(__file__).with_name("data")
WNID = re.compile(r"^n\d{8}$")
IMAGENET_C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
IMAGENET_C_ALL = tuple(CORRUPTIONS) + IMAGENET_C_EXTRA
IMAGENET_C_GROUPS = ("noise", "blur", "weather", "digital", "extra")  # the release's tar files
# AlexNet's top-1 error (%) per corruption, mean over severities 1..5: the normaliser of the
# published mCE (Hendrycks & Dietterich 2019). Copied from google-research/augmix imagenet.py
# (ALEXNET_ERR, "Raw AlexNet errors taken from https://github.com/hendrycks/robustness"),
# fractions there, in % here. There is no published AlexNet error for the 4 extra corruptions.
ALEXNET_ERRORS = {
    "gaussian_noise": 88.6428, "shot_noise": 89.4468, "impulse_noise": 92.2640,
    "defocus_blur": 81.9880, "glass_blur": 82.6268, "motion_blur": 78.5948, "zoom_blur": 79.8360,
    "snow": 86.6816, "frost": 82.6572, "fog": 81.9324, "brightness": 56.4592, "contrast": 85.3204,
    "elastic_transform": 64.6056, "pixelate": 71.7840, "jpeg_compression": 60.6500,
}
VARIANTS = ("imagenet-a", "imagenet-r", "imagenet-sketch", "imagenet-v2")
_SUBSET_FILES = {"imagenet-a": "imagenet_a_wnids.txt", "imagenet-r": "imagenet_r_wnids.txt"}


@lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted; timm's ``ImageNetInfo``)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_names())


def read_list(name: str) -> list[str]:
    """Lines of ``data/<name>`` without ``#`` comments and blanks."""
    try:
        lines = (DATA_DIR / name).read_text().splitlines()
    except OSError as err:
        raise EvaluationError(f"supmim's data file {DATA_DIR / name} is missing ({err}); reinstall supmim "
                              "(its package data: supmim/evaluation/data/*.txt)") from err
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def subset_wnids(variant: str) -> list[str] | None:
    """ImageNet-A's / -R's 200 wnids (None for the 1000-class variants)."""
    return read_list(_SUBSET_FILES[variant]) if variant in _SUBSET_FILES else None


# --------------------------------------------------------------------------- class matching


@dataclass
class WnidMatch:
    """``class_map.indices[j]`` is the head output of wnid ``scored[j]``."""

    class_map: ClassMap
    scored: list[str]


def model_wnids(num_outputs: int, label_names: list[str] | None) -> tuple[list[str], str]:
    """The wnid of each head output, and how it was found."""
    if num_outputs <= 0:
        raise EvaluationError("the model has no classification head; ImageNet-style folders are scored with "
                              "the head, so use `supmim eval linear` or `eval knn` on ImageNet-style data")
    names = [str(n) for n in label_names or []]
    if names and len(names) == num_outputs and all(WNID.match(n) for n in names):
        return names, "by wnid (the model's class names)"
    if num_outputs == 1000:
        return list(imagenet_wnids()), "ImageNet-1k class order (1000 outputs)"
    if names:
        raise EvaluationError(
            f"the model's classes ({', '.join(names[:3])}, ...) are not ImageNet wnids, so they cannot be "
            "matched to the wnid folders; train on class folders named by wnid (n01440764, ...) or use "
            "`supmim eval linear` / `eval knn` on this data")
    raise EvaluationError(f"the model's {num_outputs} outputs have no class names to match to wnid folders; "
                          "evaluate a supmim run directory (it keeps its classes) or an export with label names")


def match_wnids(num_outputs: int, label_names: list[str] | None, universe: list[str],
                layout: str) -> WnidMatch:
    """Score the wnids of ``universe`` that the model has, in ``universe``'s order."""
    names, how = model_wnids(num_outputs, label_names)
    index = {w: i for i, w in enumerate(names)}
    scored = [w for w in universe if w in index]
    if not scored:
        raise EvaluationError(f"none of the model's {len(names)} classes ({', '.join(names[:3])}, ...) is among "
                              f"{layout}'s wnids; evaluate a model trained on ImageNet classes")
    return WnidMatch(ClassMap([index[w] for w in scored], how, num_outputs), scored)


# --------------------------------------------------------------------------- folder layouts


def layout_root(path: str | Path, cache_dir: str | None = None) -> Path:
    """``path`` as a folder: an archive is extracted; a lone top-level folder is entered."""
    root = Path(path).expanduser()
    if root.is_file():
        from supmim.data import extract_archive

        root = extract_archive(root, cache_dir)
    if not root.is_dir():
        raise EvaluationError(f"'{path}' does not exist (or is not a folder or .tar archive)")
    dirs = _visible_dirs(root)
    if len(dirs) == 1 and not _class_like(dirs[0].name) and dirs[0].name not in IMAGENET_C_ALL:
        return dirs[0]
    return root


def _class_like(name: str) -> bool:
    return bool(WNID.match(name)) or name.isdigit()


def wnid_folders(root: Path, layout: str, allowed: list[str] | None = None) -> dict[str, Path]:
    """``{wnid: folder}`` of a ``<wnid>/`` tree; one-line errors for any other layout."""
    dirs = {d.name: d for d in _visible_dirs(root)}
    if not dirs:
        raise EvaluationError(f"'{root}' has no class folders; {layout} is <wnid>/<image> folders")
    bad = [n for n in dirs if not WNID.match(n)]
    if bad and all(n.isdigit() for n in dirs):
        raise EvaluationError(f"'{root}' has class-index folders (0, 1, ...), ImageNet-V2's layout, not "
                              f"{layout}'s wnid folders; pass it as --variant imagenet-v2=PATH")
    if bad:
        raise EvaluationError(f"'{root}': folder(s) {', '.join(sorted(bad)[:3])} are not ImageNet wnids; {layout} "
                              "has one folder per wnid (n01440764, ...): point at the folder that holds them")
    known = set(imagenet_wnids())
    foreign = sorted(n for n in dirs if n not in known)
    if foreign:
        raise EvaluationError(f"'{root}': {', '.join(foreign[:3])} are not ImageNet-1k wnids; {layout} uses "
                              "ImageNet-1k classes")
    outside = sorted(set(dirs) - set(allowed)) if allowed is not None else []
    if outside:
        raise EvaluationError(f"'{root}' has {len(outside)} folder(s) outside {layout}'s {len(allowed)} classes "
                              f"(e.g. {outside[0]}): is it another variant? check the NAME of --variant NAME=PATH")
    return dict(sorted(dirs.items()))


def index_folders(root: Path) -> dict[str, Path]:
    """ImageNet-V2's ``<i>/`` folders (i = ImageNet-1k class index) as ``{wnid: folder}``."""
    dirs = {d.name: d for d in _visible_dirs(root)}
    if not dirs:
        raise EvaluationError(f"'{root}' has no class folders; ImageNet-V2 is <class index 0..999>/<image>")
    if all(WNID.match(n) for n in dirs):
        raise EvaluationError(f"'{root}' has wnid folders, but ImageNet-V2's are class indices 0..999; for a "
                              "wnid tree use --variant imagenet-sketch=PATH (1000 classes)")
    bad = sorted(n for n in dirs if not (n.isdigit() and int(n) < 1000))
    if bad:
        raise EvaluationError(f"'{root}': folder(s) {', '.join(bad[:3])} are not class indices 0..999 (the "
                              "ImageNet-V2 layout): point at the folder that holds 0/ ... 999/")
    wnids = imagenet_wnids()
    return dict(sorted((wnids[int(n)], d) for n, d in dirs.items()))


def scored_split(folders: dict[str, Path], scored: list[str], tag: str, source: str) -> tuple[EvalSplit, int]:
    """The images of ``folders`` whose wnid is in ``scored``, labelled by position in
    ``scored``, and the number of images dropped (their class is not scored)."""
    position = {w: j for j, w in enumerate(scored)}
    paths: list[str] = []
    labels: list[int] = []
    dropped = 0
    for w, folder in folders.items():
        found, _ = _scan_class_folders(folder.parent, [folder.name])
        if w in position:
            paths += found
            labels += [position[w]] * len(found)
        else:
            dropped += len(found)
    if not paths:
        raise EvaluationError(f"no images of the scored classes under '{source}' ({len(folders)} class folders, "
                              f"{dropped} images of classes the model does not have)")
    y = np.asarray(labels, dtype=np.int64)
    return EvalSplit(FolderDataset(paths, y, list(scored)), y, list(scored), "all", tag, source), dropped


def imagenet_c_folders(root: Path) -> dict[str, dict[int, Path]]:
    """``{corruption: {severity: folder}}`` of an ImageNet-C tree (corruptions in the
    standard order, then the extra ones); one-line errors for any other layout."""
    found: dict[str, Path] = {}
    unknown: list[str] = []
    for d in _visible_dirs(root):
        if d.name in IMAGENET_C_ALL:
            found[d.name] = d
        elif d.name in IMAGENET_C_GROUPS:  # noise/gaussian_noise/..., as the release's tar files unpack
            for sub in _visible_dirs(d):
                if sub.name in IMAGENET_C_ALL:
                    found[sub.name] = sub
                else:
                    unknown.append(f"{d.name}/{sub.name}")
        else:
            unknown.append(d.name)
    names = [d.name for d in _visible_dirs(root)]
    if not found and names and all(n in ("1", "2", "3", "4", "5") for n in names):
        raise EvaluationError(f"'{root}' is one corruption's severity folders; --imagenet-c takes the folder "
                              "above it, which holds the corruption folders (gaussian_noise/, ...)")
    if not found and names and all(_class_like(n) for n in names):
        raise EvaluationError(f"'{root}' holds class folders, not ImageNet-C's <corruption>/<severity>/<wnid>/; "
                              "pass it as --variant or --data, or --imagenet-c the folder holding gaussian_noise/ ...")
    if unknown or not found:
        raise EvaluationError(f"'{root}': {', '.join(unknown[:3]) or 'no folders'} - ImageNet-C has corruption "
                              f"folders {', '.join(IMAGENET_C_ALL[:3])}, ... ({len(IMAGENET_C_ALL)} names) with "
                              "severity folders 1..5; rename or remove the others")
    return {c: _severities(found[c]) for c in IMAGENET_C_ALL if c in found}


def _severities(folder: Path) -> dict[int, Path]:
    dirs = {d.name: d for d in _visible_dirs(folder)}
    bad = sorted(n for n in dirs if n not in ("1", "2", "3", "4", "5"))
    if bad or not dirs:
        raise EvaluationError(f"'{folder}' must hold severity folders 1..5 (<severity>/<wnid>/<image>), "
                              f"found {', '.join(bad[:3]) or 'none'}")
    return {int(n): dirs[n] for n in sorted(dirs)}
