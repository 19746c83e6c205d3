"""Robustness: accuracy under ImageNet-C-style corruptions, mCE, and the ImageNet variants.

Corruptions: the 15 standard ImageNet-C corruptions (Hendrycks & Dietterich 2019), 5
severities each, computed by the ``imagecorruptions`` functions (pip package
``imagecorruptions-imaug``, the maintained fork of bethgelab's ``imagecorruptions``, which no
longer imports with current setuptools and scikit-image). As in ImageNet-C, an image is
first resized and cropped to the model's input size (its eval transform minus the tensor
conversion), then corrupted, then normalised. The functions need sides of >= 32 pixels and
use ImageNet-C's severity parameters at every size, so results on 32 px images are not
comparable with the published CIFAR-10-C. Each image gets its own seed from (seed,
corruption, severity, index), so every model sees the same corrupted pixels.

mCE (Hendrycks & Dietterich): for corruption c, CE_c = sum_s E(c, s) / sum_s E_ref(c, s), with
E the top-1 error (%) and ref the reference model (``--baseline``); mCE = mean_c CE_c, in %.
Relative mCE uses (E(c, s) - E_clean) in both sums. Below 100% means fewer errors than the reference.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from supmim.evaluation.classify import ClassMap, mapped_logits
from supmim.evaluation.common import EvaluationError, eval_mode
from supmim.evaluation.datasets import EvalSplit

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)


def corruption_functions() -> Callable[..., np.ndarray]:
    """The package's ``corrupt(image, severity, corruption_name)``, or a clear error.

    Imported here, on first use, never at module import: it brings opencv, scikit-image,
    scipy and numba, which a plain ``pip install supmim`` does not need."""
    try:
        from imagecorruptions import corrupt
    except ImportError as err:
        raise EvaluationError(
            "corruptions need the robustness extra: pip install 'supmim[robustness]' (the "
            f"imagecorruptions-imaug package); import failed with: {err}") from err
    return corrupt


def corrupt_one(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """image (H, W, 3) uint8 -> the same shape, corrupted; deterministic in ``seed``.

    Most functions draw from numpy's global RNG, so it is seeded for the call and its state
    restored afterwards (the caller's random stream is left as it was).
    """
    corrupt = corruption_functions()
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        kwargs = {"seed": seed % 2**31} if name in ("glass_blur", "impulse_noise") else {}
        out = corrupt(image, severity=severity, corruption_name=name, **kwargs)
    finally:
        np.random.set_state(state)
    return np.asarray(out, dtype=np.uint8).reshape(image.shape)


def item_seed(seed: int, name: str, severity: int, index: int) -> int:
    return zlib.crc32(f"{seed}/{name}/{severity}/{index}".encode())


def split_transform(transform: Any) -> tuple[Callable, Callable]:
    """Cut timm's eval Compose at the tensor conversion: (geometric PIL part, tensor part).

    The geometric part (resize, centre crop) runs before corrupting, as in ImageNet-C."""
    steps = list(getattr(transform, "transforms", []))
    for i, step in enumerate(steps):
        if "ToTensor" in type(step).__name__:
            from torchvision.transforms import Compose

            return Compose(steps[:i]), Compose(steps[i:])
    raise EvaluationError("cannot find the tensor conversion in the model's eval transform")


class _Geometric(Dataset):
    """(uint8 (H, W, 3) at the model's input size, label) for chosen indices of a split."""

    def __init__(self, split: EvalSplit, geometric: Callable, indices: np.ndarray) -> None:
        self.split, self.geometric, self.indices = split, geometric, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from supmim.data.datasets import to_mode

        img, label = self.split.base[int(self.indices[i])]
        return np.asarray(self.geometric(to_mode(img, "RGB")), dtype=np.uint8), int(label)


class _Corrupted(Dataset):
    def __init__(self, clean: np.ndarray, name: str, severity: int, seed: int, indices: np.ndarray) -> None:
        self.clean, self.name, self.severity, self.seed, self.indices = clean, name, severity, seed, indices

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, i: int) -> np.ndarray:
        return corrupt_one(self.clean[i], self.name, self.severity,
                           item_seed(self.seed, self.name, self.severity, int(self.indices[i])))


def _stack_pairs(batch: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([x for x, _ in batch]), np.array([y for _, y in batch])


def clean_images(split: EvalSplit, geometric: Callable, indices: np.ndarray,
                 workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The chosen images at the model's input size: (N, H, W, 3) uint8 and labels (N,)."""
    loader = DataLoader(_Geometric(split, geometric, indices), batch_size=64, num_workers=workers,
                        collate_fn=_stack_pairs)
    parts = list(loader)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.int64)


def corrupted_images(clean: np.ndarray, indices: np.ndarray, name: str, severity: int, seed: int, *,
                     workers: int = 0, cache: Path | None = None) -> np.ndarray:
    """``clean`` (N, H, W, 3) uint8 corrupted by ``name`` at ``severity``; cached as .npy."""
    if cache is not None and cache.is_file():
        arr = np.load(cache)
        if arr.shape == clean.shape:
            return arr
    loader = DataLoader(_Corrupted(clean, name, severity, seed, indices), batch_size=64,
                        num_workers=workers, collate_fn=np.stack)
    arr = np.concatenate(list(loader))
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.stem}.tmp.npy")
            np.save(tmp, arr)
            tmp.replace(cache)
        except OSError:
            pass  # an unwritable cache only costs time
    return arr


def to_batch(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, C, H, W), C = len(mean): what timm's
    ToTensor + Normalize give, for a whole batch at once (grey models: PIL's luma, as theirs)."""
    if len(mean) == 1:
        images = np.stack([np.asarray(Image.fromarray(x).convert("L")) for x in images])[..., None]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def accuracy_on_arrays(model: nn.Module, images: np.ndarray, labels: np.ndarray, class_map: ClassMap,
                       mean: Sequence[float], std: Sequence[float], device: torch.device,
                       batch_size: int = 256) -> float:
    """Top-1 (%) of the model on uint8 images (N, H, W, 3) at its input size."""
    hits = 0
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = to_batch(images[start:start + batch_size], mean, std)
            pred = mapped_logits(model, batch.to(device), class_map).argmax(dim=1).cpu().numpy()
            hits += int((pred == labels[start:start + batch_size]).sum())
    return 100.0 * hits / max(len(images), 1)


def corruption_cache_key(split: EvalSplit, indices: np.ndarray, geometric: Callable, seed: int) -> str:
    key = json.dumps({"data": split.source, "split": split.split, "n": len(split),
                      "indices": hashlib.sha256(np.asarray(indices).tobytes()).hexdigest()[:16],
                      "geometric": repr(geometric), "seed": seed}, sort_keys=True)
    return f"{split.tag}-{split.split}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def corruption_accuracies(model: nn.Module, clean: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                          class_map: ClassMap, mean: Sequence[float], std: Sequence[float],
                          device: torch.device, *,
                          corruptions: Sequence[str] = CORRUPTIONS,
                          severities: Sequence[int] = SEVERITIES, seed: int = 0, workers: int = 0,
                          cache_dir: Path | None = None, batch_size: int = 256,
                          progress: bool = True) -> dict[str, Any]:
    """Top-1 (%) on the clean images and for every corruption and severity.

    Returns {"clean": a, "accuracy": {name: [a_s1, ..., a_s5]}}.
    """
    accuracy: dict[str, list[float]] = {}
    jobs = [(c, s) for c in corruptions for s in severities]
    bar = tqdm(total=len(jobs) + 1, desc="corruptions", disable=not progress, leave=False)
    clean_acc = accuracy_on_arrays(model, clean, labels, class_map, mean, std, device, batch_size)
    bar.update(1)
    for name, severity in jobs:
        cache = cache_dir / f"{name}-{severity}.npy" if cache_dir is not None else None
        images = corrupted_images(clean, indices, name, severity, seed, workers=workers, cache=cache)
        accuracy.setdefault(name, []).append(
            accuracy_on_arrays(model, images, labels, class_map, mean, std, device, batch_size))
        bar.set_postfix_str(f"{name} s{severity}", refresh=False)
        bar.update(1)
    bar.close()
    return {"clean": clean_acc, "accuracy": accuracy}


def mce(errors: dict[str, Sequence[float]], ref_errors: dict[str, Sequence[float]],
        clean_error: float | None = None, ref_clean_error: float | None = None) -> dict[str, Any]:
    """mCE (and, given clean errors, relative mCE) in %, over the corruptions both have.

    errors / ref_errors: {corruption: [top-1 error (%) per severity]}, same severities.
    """
    common = [c for c in errors if c in ref_errors]
    if not common:
        raise EvaluationError("the baseline has none of the evaluated corruptions; rerun it with the same set")
    ce, rel = {}, {}
    for c in common:
        e, r = np.asarray(errors[c], float), np.asarray(ref_errors[c], float)
        if e.shape != r.shape:
            raise EvaluationError(f"'{c}': {e.size} severities here but {r.size} in the baseline; "
                                  "evaluate both with the same --severities")
        ce[c] = 100.0 * e.sum() / r.sum() if r.sum() > 0 else float("nan")
        if clean_error is not None and ref_clean_error is not None:
            denom = (r - ref_clean_error).sum()
            rel[c] = 100.0 * (e - clean_error).sum() / denom if denom > 0 else float("nan")
    out: dict[str, Any] = {"mCE": _nanmean(ce.values()), "CE": ce}
    if rel:
        # None when the reference loses no accuracy under any corruption (nothing to divide by)
        out["relative_mCE"] = _nanmean(rel.values())
        out["relative_CE"] = rel
    return out


def _nanmean(values: Any) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None
