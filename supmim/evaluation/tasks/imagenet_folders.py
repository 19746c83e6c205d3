"""``eval robustness`` on the ImageNet sets as folders: ImageNet-C (``--imagenet-c``, top-1
per corruption and severity, mCE) and ImageNet-A / -R / -Sketch / -V2 (``--variant``).
Layouts and class matching: :mod:`supmim.evaluation.imagenet_layouts`."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from supmim.evaluation.classify import classify
from supmim.evaluation.common import EvaluationError
from supmim.evaluation.datasets import EvalSplit, eval_transform
from supmim.evaluation.features import make_loader
from supmim.evaluation.imagenet_layouts import (ALEXNET_ERRORS, IMAGENET_C_EXTRA, VARIANTS, WnidMatch,
                                                imagenet_c_folders, imagenet_wnids, index_folders, layout_root,
                                                match_wnids, scored_split, subset_wnids, wnid_folders)
from supmim.evaluation.loading import LoadedModel
from supmim.evaluation.robustness import CORRUPTIONS, SEVERITIES

ALEXNET_SOURCE = ("AlexNet, Hendrycks & Dietterich 2019 (mean error over severities 1-5 per corruption, "
                  "as in google-research/augmix imagenet.py)")
C_PROTOCOL = ("ImageNet-C images are stored centre-cropped at 224: each is resized to the model's input size "
              "with no further crop (crop_pct 1), as Hendrycks' test.py feeds them uncropped")


def _top1(model: LoadedModel, split: EvalSplit, match: WnidMatch, transform: Any, batch_size: int,
          workers: int, device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 (%) of the head over ``match``'s scored classes on ``split``."""
    dataset = split.with_transform(transform, model.in_chans)
    loader = make_loader(dataset, batch_size, workers, device)
    return classify(model.model, loader, match.class_map, device, progress=False)


# --------------------------------------------------------------------------- ImageNet-C


def imagenet_c_scores(model: LoadedModel, path: str, *, reference: str = "alexnet", batch_size: int = 256,
                      workers: int = 0, cache_dir: str | None = None, progress: bool = True,
                      device: torch.device) -> dict[str, Any]:
    """Top-1 per corruption and severity of the ImageNet-C folder ``path``, and the summary of
    :func:`imagenet_c_summary` against ``reference`` (``alexnet``, ``none`` or a JSON table)."""
    folders = imagenet_c_folders(layout_root(path, cache_dir))
    match = match_wnids(model.num_classes, model.label_names, list(imagenet_wnids()), "ImageNet-C")
    transform = eval_transform({**model.data_config, "crop_pct": 1.0})
    accuracy: dict[str, dict[int, float]] = {}
    images, dropped = 0, 0
    jobs = [(c, s, f) for c, sev in folders.items() for s, f in sev.items()]
    for c, s, folder in tqdm(jobs, desc="imagenet-c", disable=not progress, leave=False):
        split, lost = scored_split(wnid_folders(folder, f"ImageNet-C {c}/{s}"), match.scored,
                                   "imagenet-c", str(folder))
        accuracy.setdefault(c, {})[s] = _top1(model, split, match, transform, batch_size, workers, device)["top1"]
        images, dropped = images + len(split), dropped + lost
    table, source, why = _reference_table(reference, len(match.scored))
    summary = imagenet_c_summary(accuracy, table)
    summary.update(path=path, reference=source, reference_note=why, images=images, dropped_images=dropped,
                   classes_scored=len(match.scored), class_map=match.class_map.describe(), protocol=C_PROTOCOL)
    return summary


def imagenet_c_summary(accuracy: Mapping[str, Mapping[int, float]],
                       reference: Mapping[str, float] | None) -> dict[str, Any]:
    """accuracy: {corruption: {severity: top-1 %}}; reference: {corruption: mean error %} or None.

    Per corruption: the mean top-1 over its severities. ``top1``: the mean of those over the
    standard corruptions present (``extra_top1``: over the extra ones); ``unnormalised_mCE``:
    100 - ``top1`` (Hendrycks' "mCE (unnormalized)"); CE_c = 100 * mean_s E(c, s) / E_ref(c)
    for the corruptions with all 5 severities and a reference error; ``mCE``: their mean, only
    when all 15 standard corruptions have a CE (else None: not the published number).
    """
    per_c = {c: statistics.fmean(v.values()) for c, v in accuracy.items()}
    standard = [c for c in CORRUPTIONS if c in per_c]
    extra = [c for c in IMAGENET_C_EXTRA if c in per_c]
    ce = {c: 100.0 * (100.0 - per_c[c]) / reference[c] for c in standard
          if reference and c in reference and sorted(accuracy[c]) == list(SEVERITIES)}
    top1 = statistics.fmean(per_c[c] for c in standard) if standard else None
    return {"accuracy": {c: [accuracy[c][s] for s in sorted(accuracy[c])] for c in accuracy},
            "severities": {c: sorted(accuracy[c]) for c in accuracy}, "per_corruption": per_c,
            "top1": top1, "unnormalised_mCE": None if top1 is None else 100.0 - top1,
            "extra_top1": statistics.fmean(per_c[c] for c in extra) if extra else None,
            "CE": ce, "mCE": statistics.fmean(ce.values()) if len(ce) == len(CORRUPTIONS) else None}


def _reference_table(reference: str, n_scored: int) -> tuple[dict[str, float] | None, str | None, str | None]:
    """The mCE normaliser: (table, its source, why there is none)."""
    if reference == "none":
        return None, None, "no reference asked (--imagenet-c-reference none)"
    if reference == "alexnet":
        if n_scored != 1000:
            return None, None, (f"AlexNet's errors are over all 1000 classes; this model scores {n_scored}, so "
                                "only the unnormalised mean corruption error is reported")
        return dict(ALEXNET_ERRORS), ALEXNET_SOURCE, None
    return _table_from_json(Path(reference)), reference, None


def _table_from_json(path: Path) -> dict[str, float]:
    """{corruption: mean error %} from a JSON table of that form or from a robustness result
    with an ``imagenet_c`` section (error = 100 - its per-corruption top-1)."""
    try:
        obj = json.loads(path.read_text())
        if isinstance(obj, dict) and "details" in obj:
            return {c: 100.0 - float(a) for c, a in obj["details"]["imagenet_c"]["per_corruption"].items()}
        return {str(c): float(e) for c, e in obj.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise EvaluationError(f"--imagenet-c-reference '{path}' is neither alexnet, none, a JSON "
                              f"{{corruption: error %}} nor a robustness result with ImageNet-C: {err}") from err


# --------------------------------------------------------------------------- A / R / Sketch / V2


def variant_scores(model: LoadedModel, name: str, path: str, *, batch_size: int = 256, workers: int = 0,
                   cache_dir: str | None = None, device: torch.device) -> tuple[float, dict[str, Any]]:
    """Top-1 on the ImageNet variant ``name`` (its folder layout at ``path``) and its details."""
    if name not in VARIANTS or not path:
        raise EvaluationError(f"--variant '{name}={path}': use NAME=PATH with NAME one of {', '.join(VARIANTS)}")
    root = layout_root(path, cache_dir)
    allowed = subset_wnids(name)
    folders = index_folders(root) if name == "imagenet-v2" else wnid_folders(root, name, allowed)
    universe = list(folders) if allowed is not None else list(imagenet_wnids())
    match = match_wnids(model.num_classes, model.label_names, universe, name)
    split, dropped = scored_split(folders, match.scored, name, str(root))
    scores = _top1(model, split, match, eval_transform(model.data_config), batch_size, workers, device)
    expected = len(allowed) if allowed is not None else 1000
    return scores["top1"], {"path": path, "n": len(split), "top5": scores["top5"],
                            "class_folders": len(folders), "complete": len(folders) == expected,
                            "classes_scored": len(match.scored), "dropped_images": dropped,
                            "class_map": match.class_map.describe()}


def variants_note(names: Sequence[str]) -> str:
    """The protocol line of the variants."""
    return ("the model's head; ImageNet-A/-R: the argmax is over the wnid folders present (their 200 "
            "classes in the full sets); Sketch/V2: over all the model's ImageNet classes; V2's folder i "
            f"is ImageNet-1k class i ({', '.join(names)})")
