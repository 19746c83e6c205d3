"""``eval robustness``: accuracy under ImageNet-C-style corruptions of a split, mCE against
a baseline, an ImageNet-C folder as published (mCE against AlexNet), and accuracy on the
ImageNet variants (-A, -R, -Sketch, -V2) in their folder layouts."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from supmim.data import cache_root, channel_stats, stratified_subset
from supmim.evaluation.classify import resolve_class_map
from supmim.evaluation.common import EvaluationError, Timer, make_result
from supmim.evaluation.datasets import eval_transform
from supmim.evaluation.loading import LoadedModel, load_model
from supmim.evaluation.robustness import (CORRUPTIONS, SEVERITIES, clean_images,
                                          corruption_accuracies, corruption_cache_key, corruption_functions,
                                          mce, split_transform)
from supmim.evaluation.tasks._common import TaskOptions, get_split, prepare
from supmim.evaluation.tasks.imagenet_folders import imagenet_c_scores, variant_scores, variants_note


@dataclass(kw_only=True)
class RobustnessOptions(TaskOptions):
    """Options of :func:`run_robustness`."""

    split: str = "test"
    corruptions: Sequence[str] = ("all",)  # names, or all (the 15 standard ones)
    severities: Sequence[int] = SEVERITIES
    subset: int | None = None  # a fixed, class-balanced subset of this many images
    seed: int = 0  # seed of the subset and of the corruptions
    baseline: str | None = None  # reference for mCE: a robustness result JSON or a MODEL
    variants: Sequence[str] = ()  # "NAME=PATH" texts: imagenet-a, -r, -sketch or -v2 folders
    imagenet_c: str | None = None  # an ImageNet-C folder: <corruption>/<severity>/<wnid>/
    imagenet_c_reference: str = "alexnet"  # mCE normaliser: alexnet, none, or a JSON table / result
    use_cache: bool = True  # cache corrupted images
    checkpoint: str = "last"  # a baseline run directory: which checkpoint
    weights: str = "auto"  # a baseline run directory: EMA or raw weights


def require_input(data: str | None, options: RobustnessOptions) -> None:
    """There must be something to evaluate: ``data`` (its corruptions), ImageNet-C, variants."""
    if not data and not options.variants and not options.imagenet_c:
        raise EvaluationError("give --data (corruptions of its --split), --imagenet-c PATH and/or "
                              "--variant NAME=PATH")


def run_robustness(model: LoadedModel, data: str | None, options: RobustnessOptions, *,
                   device: torch.device | str) -> dict[str, Any]:
    """Corruptions of split ``options.split`` of ``data`` (when given; with mCE when
    ``options.baseline`` is), then every variant of ``options.variants``."""
    require_input(data, options)
    options.check()
    timer = Timer()
    device = prepare(model, device)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    lower: list[str] = []
    tag, data_section = "variants", {}
    if data:
        scores, tag, data_section = corruption_scores(model, data, options, device)
        protocol = scores.pop("protocol")
        details.update(scores)
        metrics["clean top-1"] = scores["clean"]
        metrics["corrupted top-1"] = scores["mean_corrupted"]
        for s, acc in zip(scores["severities"], scores["per_severity"]):
            metrics[f"severity {s} top-1"] = acc
        if options.baseline:
            _add_mce(scores, baseline_scores(data, options, protocol, device), metrics, details, lower)
    if options.imagenet_c:
        tag = "imagenet-c" if not data else tag
        _add_imagenet_c(model, options, device, metrics, details, protocol, lower)
    for text in options.variants:
        name, _, path = text.partition("=")
        top1, info = variant_scores(model, name, path, batch_size=options.batch_size, workers=options.workers,
                                    cache_dir=options.cache_dir, device=device)
        metrics[f"{name} top-1"] = top1
        details.setdefault("variants", {})[name] = info
    if options.variants:
        protocol["variants"] = variants_note([t.partition("=")[0] for t in options.variants])
    return make_result("robustness", f"robustness | {tag}", model=model.describe(), data=data_section,
                       protocol=protocol, metrics=metrics, details=details, seconds=timer.seconds(),
                       lower_is_better=lower)


def result_tag(result: dict[str, Any], options: RobustnessOptions) -> str:
    """``<data>-<split>-corrupted`` or ``variants``: the ``<tag>`` of the default
    ``MODEL/eval/robustness-<tag>.json``."""
    data = result["data"]
    if data:
        return f"{data['tag']}-{data['split']}-corrupted"
    return "imagenet-c" if options.imagenet_c else "variants"


def _add_mce(scores: dict[str, Any], ref: dict[str, Any], metrics: dict[str, float],
             details: dict[str, Any], lower: list[str]) -> None:
    """mCE and relative mCE of ``scores`` against the reference ``ref``, into the result parts."""
    errors = {c: [100 - a for a in acc] for c, acc in scores["accuracy"].items()}
    ref_errors = {c: [100 - a for a in acc] for c, acc in ref["accuracy"].items()}
    m = mce(errors, ref_errors, 100 - scores["clean"], 100 - ref["clean"])
    for key, name in (("mCE", "mCE"), ("relative_mCE", "relative mCE")):
        if m.get(key) is not None:
            metrics[name] = m[key]
            lower.append(name)
    details["mce"] = {**m, "baseline": ref["source"]}


def _add_imagenet_c(model: LoadedModel, options: RobustnessOptions, device: torch.device,
                    metrics: dict[str, float], details: dict[str, Any], protocol: dict[str, Any],
                    lower: list[str]) -> None:
    """The ImageNet-C folder's scores, into the result parts (None-valued numbers left out)."""
    c = imagenet_c_scores(model, options.imagenet_c, reference=options.imagenet_c_reference,
                          batch_size=options.batch_size, workers=options.workers, cache_dir=options.cache_dir,
                          progress=options.progress, device=device)
    for key, name in (("top1", "imagenet-c top-1"), ("mCE", "imagenet-c mCE"),
                      ("unnormalised_mCE", "imagenet-c unnormalised mCE"), ("extra_top1", "imagenet-c extra top-1")):
        if c[key] is not None:
            metrics[name] = c[key]
            lower += [name] if "mCE" in key else []
    protocol["imagenet_c"] = c.pop("protocol")
    details["imagenet_c"] = c


def _chosen_corruptions(options: RobustnessOptions) -> Sequence[str]:
    """The corruptions to run (``all``: the 15 standard ones); unknown names and severities
    outside 1..5 are errors."""
    corruptions = CORRUPTIONS if list(options.corruptions) == ["all"] else options.corruptions
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise EvaluationError(f"unknown corruption(s) {unknown}; choose from {', '.join(CORRUPTIONS)} or all")
    if any(s not in (1, 2, 3, 4, 5) for s in options.severities):
        raise EvaluationError(f"--severities must be within 1..5, got {options.severities}")
    return corruptions


def corruption_scores(model: LoadedModel, data: str, options: RobustnessOptions,
                      device: torch.device) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Clean and corrupted accuracy of split ``options.split`` of ``data``: the scores (with
    their ``protocol``), the result tag and the result's ``data`` section."""
    corruption_functions()  # fail early, before any work, when the package is missing
    corruptions = _chosen_corruptions(options)
    h, w = model.data_config["input_size"][1:]
    if min(h, w) < 32:
        raise EvaluationError(f"the corruption functions need images of at least 32x32; the model takes "
                              f"{h}x{w}")
    split = get_split(data, options.split, options)
    class_map = resolve_class_map(model.num_classes, model.label_names, split.classes)
    indices = np.arange(len(split))
    if options.subset:
        if options.subset > len(split):
            raise EvaluationError(f"--subset {options.subset} exceeds the split's {len(split)} images")
        indices = stratified_subset(split.labels, options.subset, options.seed)
    geometric, _ = split_transform(eval_transform(model.data_config))
    mean, std = channel_stats(model.data_config["mean"], model.data_config["std"], model.in_chans)
    clean, labels = clean_images(split, geometric, indices, options.workers)
    cache_dir = None
    if options.use_cache:
        key = corruption_cache_key(split, indices, geometric, options.seed)
        cache_dir = cache_root(options.cache_dir) / "corrupted" / key
    result = corruption_accuracies(model.model, clean, labels, indices, class_map, mean, std, device,
                                   corruptions=corruptions, severities=options.severities,
                                   seed=options.seed, workers=options.workers, cache_dir=cache_dir,
                                   batch_size=options.batch_size, progress=options.progress)
    acc = result["accuracy"]
    per_sev = [statistics.fmean(acc[c][i] for c in acc) for i in range(len(options.severities))]
    scores = {"clean": result["clean"], "accuracy": acc, "severities": list(options.severities),
              "per_severity": per_sev, "mean_corrupted": statistics.fmean(per_sev),
              "per_corruption": {c: statistics.fmean(v) for c, v in acc.items()},
              "protocol": _corruption_protocol(options, corruptions, len(indices), class_map.describe())}
    data_section = {"spec": data, "tag": split.tag, **split.describe(), "images": int(len(indices))}
    return scores, f"{split.tag}-{split.split}-corrupted", data_section


def _corruption_protocol(options: RobustnessOptions, corruptions: Sequence[str], images: int,
                         class_map: dict[str, Any]) -> dict[str, Any]:
    """The ``protocol`` section of a corruption run (a baseline must match it)."""
    return {"corruptions": list(corruptions), "severities": list(options.severities),
            "images": int(images),
            "subset": f"{options.subset} (stratified, seed {options.seed})" if options.subset else "all",
            "seed": options.seed, "package": "imagecorruptions (imagecorruptions-imaug)",
            "order": "resize/crop to the model's input size, corrupt, normalise",
            "class_map": class_map}


def baseline_scores(data: str, options: RobustnessOptions, mine: dict[str, Any],
                    device: torch.device) -> dict[str, Any]:
    """The reference's clean and per-corruption accuracy: a result JSON (evaluated as
    ``mine`` says), or a MODEL evaluated here the same way."""
    path = Path(options.baseline)
    if path.is_file():
        return _baseline_from_json(path, mine)
    ref_model = load_model(options.baseline, checkpoint=options.checkpoint, weights=options.weights)
    prepare(ref_model, device)
    ref, _, _ = corruption_scores(ref_model, data, options, device)
    return {"clean": ref["clean"], "accuracy": ref["accuracy"], "source": options.baseline}


def _baseline_from_json(path: Path, mine: dict[str, Any]) -> dict[str, Any]:
    """Clean and per-corruption accuracy of a robustness result file; its protocol must match."""
    try:
        ref = json.loads(path.read_text())
        details, theirs = ref["details"], ref.get("protocol", {})
        out = {"clean": details["clean"], "accuracy": details["accuracy"], "source": str(path)}
    except (OSError, ValueError, KeyError) as err:
        raise EvaluationError(f"--baseline '{path}' is not a robustness result of `supmim eval "
                              f"robustness`: {err}") from err
    for key in ("severities", "images", "subset", "seed"):
        if key in theirs and theirs[key] != mine[key]:
            raise EvaluationError(f"--baseline '{path}' was evaluated with {key}={theirs[key]}, this run "
                                  f"with {mine[key]}; evaluate both the same way")
    return out
