"""CLI commands of the evaluation suite (``supmim embed``, ``supmim eval ...``, ``supmim report``).

Each handler imports what it needs when it runs, so ``supmim --help`` stays fast. Every
``eval`` command writes one JSON result (default ``MODEL/eval/<task>-<data>.json``, where
``supmim report MODEL`` finds it) and prints its headline numbers.
"""

from __future__ import annotations

import argparse
from typing import Any

MODEL_HELP = ("an exported timm folder (config.json + model.safetensors) or a supmim run directory")


def _add_common(p: argparse.ArgumentParser, *, data_required: bool = True,
                out_help: str | None = None) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--data", required=data_required,
                   help="image folders / archive / built-in name / .npz (see docs/evaluation.md)")
    p.add_argument("--data-root", help="folder holding a built-in dataset's files")
    p.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100")
    if out_help:
        p.add_argument("--out", required=True, help=out_help)
    else:
        p.add_argument("--out", help="result file (default: MODEL/eval/<task>-<data>.json)")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="run directories: which checkpoint (default last, the one reported on test)")
    p.add_argument("--weights", choices=("auto", "raw", "ema"), default="auto",
                   help="run directories: EMA or raw weights (auto: EMA when the run kept one)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes (0: in the main process)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--cache-dir", help="cache for extracted archives, features and corrupted images "
                                       "(default $SUPMIM_CACHE or ~/.cache/supmim)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_pool(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", choices=("default", "cls", "gap"), default="default",
                   help="image feature: default = what the model's head sees; cls = class token; "
                        "gap = mean of patch tokens")
    p.add_argument("--no-cache", action="store_true", help="recompute features instead of reusing cached ones")


# --------------------------------------------------------------------------- shared plumbing


def _setup(args: argparse.Namespace) -> tuple[Any, Any]:
    """Threads, device, model."""
    import torch

    from supmim.evaluation.common import resolve_device
    from supmim.evaluation.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    loaded = load_model(args.model, checkpoint=args.checkpoint, weights=args.weights)
    loaded.model.to(device)
    return loaded, device


def _split(args: argparse.Namespace, split: str) -> Any:
    from supmim.evaluation.datasets import load_split

    return load_split(args.data, split, data_root=args.data_root, download=args.download,
                      cache_dir=args.cache_dir)


def _features(args: argparse.Namespace, loaded: Any, split: Any, device: Any) -> tuple[Any, Any]:
    from supmim.evaluation.features import split_features

    return split_features(loaded, split, device, pool=args.pool, batch_size=args.batch_size,
                          workers=args.workers, progress=not args.quiet, cache_dir=args.cache_dir,
                          use_cache=not args.no_cache)


def _finish(args: argparse.Namespace, result: dict[str, Any], task: str, tag: str) -> int:
    from pathlib import Path

    from supmim.evaluation.common import default_result_path, write_json

    out = Path(args.out) if args.out else default_result_path(args.model, task, tag)
    write_json(out, result)
    shown = ", ".join(f"{k} {v:.2f}" for k, v in list(result["metrics"].items())[:8])
    print(f"{result['name']}: {shown}\nwrote {out}", flush=True)
    return 0


def _check_positive(name: str, value: float) -> None:
    from supmim.evaluation.common import EvaluationError

    if value <= 0:
        raise EvaluationError(f"{name} must be > 0, got {value}")


# --------------------------------------------------------------------------- commands


def cmd_embed(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from supmim.evaluation.common import EvaluationError, Timer, make_result, write_json
    from supmim.evaluation.features import l2_normalize

    timer = Timer()
    out = Path(args.out)
    if out.suffix != ".npz":
        raise EvaluationError(f"--out '{out}' must end in .npz (the metadata goes to the .json beside it)")
    loaded, device = _setup(args)
    split = _split(args, args.split)
    feats, labels = _features(args, loaded, split, device)
    if args.normalize:
        import torch

        feats = l2_normalize(torch.from_numpy(feats)).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, features=feats.astype(np.float32), labels=labels, classes=np.asarray(split.classes))
    result = make_result(
        "embed", f"embed | {split.tag}/{split.split}{_pool_note(args.pool)}", model=loaded.describe(),
        data={"spec": args.data, "tag": split.tag, **split.describe()},
        protocol={"pool": args.pool, "normalized": bool(args.normalize)},
        metrics={}, details={"features": str(out), "shape": list(feats.shape)}, seconds=timer.seconds())
    write_json(out.with_suffix(".json"), result)
    print(f"{feats.shape[0]} features of size {feats.shape[1]} -> {out}", flush=True)
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from supmim.evaluation.classify import classify, resolve_class_map
    from supmim.evaluation.common import Timer, make_result
    from supmim.evaluation.datasets import eval_transform
    from supmim.evaluation.features import make_loader

    timer = Timer()
    loaded, device = _setup(args)
    split = _split(args, args.split)
    class_map = resolve_class_map(loaded.num_classes, loaded.label_names, split.classes)
    dataset = split.with_transform(eval_transform(loaded.data_config), loaded.in_chans)
    scores = classify(loaded.model, make_loader(dataset, args.batch_size, args.workers, device),
                      class_map, device, progress=not args.quiet)
    result = make_result(
        "classify", f"classify | {split.tag}/{split.split}", model=loaded.describe(),
        data={"spec": args.data, "tag": split.tag, **split.describe()},
        protocol={"head": "the model's own", "class_map": class_map.describe(),
                  "preprocessing": {k: v for k, v in loaded.data_config.items()}},
        metrics={"top-1": scores["top1"], "top-5": scores["top5"]},
        details={"loss": scores["loss"], "n": scores["n"]}, seconds=timer.seconds())
    return _finish(args, result, "classify", f"{split.tag}-{split.split}")


def cmd_linear(args: argparse.Namespace) -> int:
    from supmim.evaluation.common import Timer, make_result
    from supmim.evaluation.linear_probe import fit_linear_probe

    timer = Timer()
    loaded, device = _setup(args)
    train, test = _split(args, args.train_split), _split(args, args.test_split)
    train_x, train_y = _features(args, loaded, train, device)
    test_x, test_y = _features(args, loaded, test, device)
    probe = fit_linear_probe(train_x, train_y, len(train.classes), wd_grid=args.wd,
                             val_fraction=args.val_fraction, seed=args.seed)
    scores = probe.evaluate(test_x, test_y)
    result = make_result(
        "linear", f"linear probe | {train.tag}{_pool_note(args.pool)}", model=loaded.describe(),
        data={"spec": args.data, "tag": train.tag, "train": train.describe(), "test": test.describe()},
        protocol={"features": f"frozen, pool={args.pool}, L2-normalised",
                  "classifier": "multinomial logistic regression, full-batch L-BFGS",
                  "wd_grid": list(args.wd), "val_fraction": args.val_fraction, "split_seed": args.seed,
                  "chosen_wd": probe.wd},
        metrics={"top-1": scores["top1"], "top-5": scores["top5"]},
        details={"val_top1_by_wd": {str(k): v for k, v in probe.val_top1.items()}, "test_loss": scores["loss"]},
        seconds=timer.seconds())
    return _finish(args, result, "linear", _tag(train.tag, args.pool))


def _pool_note(pool: str) -> str:
    return "" if pool == "default" else f" | pool={pool}"


def _tag(tag: str, pool: str, *extra: str) -> str:
    parts = [tag] + ([pool] if pool != "default" else []) + [e for e in extra if e]
    return "-".join(parts)


def cmd_knn(args: argparse.Namespace) -> int:
    from supmim.evaluation.common import Timer, make_result
    from supmim.evaluation.knn import knn_evaluate

    _check_positive("--temperature", args.temperature)
    timer = Timer()
    loaded, device = _setup(args)
    train, test = _split(args, args.train_split), _split(args, args.test_split)
    train_x, train_y = _features(args, loaded, train, device)
    test_x, test_y = _features(args, loaded, test, device)
    scores = knn_evaluate(train_x, train_y, test_x, test_y, ks=args.k, temperature=args.temperature,
                          num_classes=len(train.classes))
    metrics = {}
    for k, s in scores.items():
        metrics[f"k={k} top-1"] = s["top1"]
    for k, s in scores.items():
        metrics[f"k={k} top-5"] = s["top5"]
    result = make_result(
        "knn", f"kNN | {train.tag}{_pool_note(args.pool)}", model=loaded.describe(),
        data={"spec": args.data, "tag": train.tag, "bank": train.describe(), "queries": test.describe()},
        protocol={"similarity": "cosine (L2-normalised features)", "weights": "exp(sim / T)",
                  "temperature": args.temperature, "k": list(args.k), "pool": args.pool},
        metrics=metrics, details={"per_k": {str(k): v for k, v in scores.items()}}, seconds=timer.seconds())
    return _finish(args, result, "knn", _tag(train.tag, args.pool))


def cmd_retrieval(args: argparse.Namespace) -> int:
    from supmim.evaluation.common import Timer, make_result
    from supmim.evaluation.retrieval import retrieval_metrics

    timer = Timer()
    loaded, device = _setup(args)
    if args.leave_one_out:
        query = _split(args, args.split or "all")
        q_x, q_y = _features(args, loaded, query, device)
        scores = retrieval_metrics(q_x, q_y, ks=args.recall_at, leave_one_out=True, backend=args.backend,
                                   topn=args.topn, memory_mb=args.memory_mb)
        protocol_text = f"leave-one-out on {query.split}"
        data = {"spec": args.data, "tag": query.tag, "set": query.describe()}
    else:
        query, gallery = _split(args, args.query_split), _split(args, args.gallery_split)
        q_x, q_y = _features(args, loaded, query, device)
        g_x, g_y = _features(args, loaded, gallery, device)
        if query.classes != gallery.classes:
            from supmim.evaluation.common import EvaluationError

            raise EvaluationError("query and gallery splits have different class lists; labels would not match")
        scores = retrieval_metrics(q_x, q_y, g_x, g_y, ks=args.recall_at, backend=args.backend,
                                   topn=args.topn, memory_mb=args.memory_mb)
        protocol_text = f"{query.split} -> {gallery.split}"
        data = {"spec": args.data, "tag": query.tag, "queries": query.describe(), "gallery": gallery.describe()}
    metrics = {k: v for k, v in scores.items() if k.startswith(("R@", "mAP"))}
    result = make_result(
        "retrieval", f"retrieval | {query.tag} | {protocol_text}{_pool_note(args.pool)}", model=loaded.describe(),
        data=data,
        protocol={"similarity": "cosine", "relevant": "same label", "protocol": protocol_text,
                  "recall": "R@K = % of queries with a relevant item in the top K",
                  "mAP": "full-ranking average precision, averaged over queries with a relevant item"
                  if args.backend == "torch" else f"AP over the top {args.topn or 100}",
                  "backend": args.backend, "pool": args.pool},
        metrics=metrics, details={k: v for k, v in scores.items() if k not in metrics},
        seconds=timer.seconds())
    return _finish(args, result, "retrieval", _tag(query.tag, args.pool, "loo" if args.leave_one_out else ""))


def _size(args: argparse.Namespace, loaded: Any) -> tuple[int, int]:
    from supmim.evaluation.common import EvaluationError

    if not args.size:
        return int(loaded.data_config["input_size"][1]), int(loaded.data_config["input_size"][2])
    if len(args.size) > 2:
        raise EvaluationError("--size takes H or H W")
    return (args.size[0], args.size[-1])


def cmd_segment(args: argparse.Namespace) -> int:
    from supmim.data import channel_stats
    from supmim.evaluation.common import Timer, make_result
    from supmim.evaluation.segmentation.data import load_seg_split
    from supmim.evaluation.segmentation.train import SegProtocol, run_segmentation

    for name in ("epochs", "lr", "batch_size"):
        _check_positive(f"--{name.replace('_', '-')}", getattr(args, name))
    timer = Timer()
    loaded, device = _setup(args)
    kw = dict(ignore_ids=args.ignore_id, num_classes=args.num_classes,
              reduce_zero_label=args.reduce_zero_label, cache_dir=args.cache_dir)
    train = load_seg_split(args.data, args.train_split, **kw)
    test = load_seg_split(args.data, args.test_split, **kw)
    proto = SegProtocol(size=_size(args, loaded), head=args.head, finetune=args.finetune,
                        epochs=args.epochs, batch_size=args.seg_batch_size, lr=args.lr,
                        weight_decay=args.weight_decay, encoder_lr_scale=args.encoder_lr_scale,
                        levels=args.levels, width=args.width, seed=args.seed, cache_gb=args.cache_gb)
    mean, std = channel_stats(loaded.data_config["mean"], loaded.data_config["std"], loaded.in_chans)
    out = run_segmentation(loaded.model, train, test, proto, mean=mean, std=std, in_chans=loaded.in_chans,
                           interpolation=loaded.data_config.get("interpolation", "bilinear"),
                           device=device, workers=args.workers, progress=not args.quiet)
    mode = "fine-tuned" if args.finetune else "frozen"
    result = make_result(
        "segment", f"segment | {train.tag} | {args.head} head, {mode}", model=loaded.describe(),
        data={"spec": args.data, "tag": train.tag, "train": train.describe(), "test": test.describe()},
        protocol={**out["protocol"], "levels": out["levels"], "feature_grid": out["feature_grid"],
                  "input": f"images resized to {proto.size[0]}x{proto.size[1]}, no augmentation",
                  "evaluation": "logits upsampled bilinearly to the label resolution; ignore index 255"},
        metrics={"mIoU": out["mIoU"], "pixel acc": out["pixel_acc"], "mean class acc": out["mean_acc"]},
        details={"per_class_iou": dict(zip(train.classes, out["per_class_iou"])),
                 "train_loss": out["train_loss"], "confusion": out["confusion"],
                 "cached_features": out["cached_features"], "seconds": out["seconds"]},
        seconds=timer.seconds())
    return _finish(args, result, "segment", f"{train.tag}-{args.head}{'-ft' if args.finetune else ''}")


def cmd_robustness(args: argparse.Namespace) -> int:
    from supmim.evaluation.common import EvaluationError, Timer, make_result

    if not args.data and not args.variant:
        raise EvaluationError("give --data (corruptions of its --split) and/or --variant NAME=PATH")
    timer = Timer()
    loaded, device = _setup(args)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    lower: list[str] = []
    tag, data = "variants", {}
    if args.data:
        scores, tag, data = _corruption_run(args, loaded, device)
        protocol = scores.pop("protocol")
        details.update(scores)
        metrics["clean top-1"] = scores["clean"]
        metrics["corrupted top-1"] = scores["mean_corrupted"]
        for s, acc in zip(scores["severities"], scores["per_severity"]):
            metrics[f"severity {s} top-1"] = acc
        if args.baseline:
            from supmim.evaluation.robustness import mce

            ref = _baseline_scores(args, protocol)
            errors = {c: [100 - a for a in acc] for c, acc in scores["accuracy"].items()}
            ref_errors = {c: [100 - a for a in acc] for c, acc in ref["accuracy"].items()}
            m = mce(errors, ref_errors, 100 - scores["clean"], 100 - ref["clean"])
            for key, name in (("mCE", "mCE"), ("relative_mCE", "relative mCE")):
                if m.get(key) is not None:
                    metrics[name] = m[key]
                    lower.append(name)
            details["mce"] = {**m, "baseline": ref["source"]}
    for text in args.variant or []:
        name, _, path = text.partition("=")
        top1, info = _variant_run(args, loaded, device, name, path)
        metrics[f"{name} top-1"] = top1
        details.setdefault("variants", {})[name] = info
    if args.variant:
        protocol["variants"] = ("the model's head; for a dataset with a subset of its classes "
                                "(ImageNet-A/-R: 200 of 1000) the argmax is over that subset's logits only")
    result = make_result("robustness", f"robustness | {tag}", model=loaded.describe(), data=data,
                         protocol=protocol, metrics=metrics, details=details, seconds=timer.seconds(),
                         lower_is_better=lower)
    return _finish(args, result, "robustness", tag)


def _corruption_run(args: argparse.Namespace, loaded: Any, device: Any) -> tuple[dict[str, Any], str, dict]:
    import statistics

    import numpy as np

    from supmim.data import channel_stats, stratified_subset
    from supmim.data.sources import cache_root
    from supmim.evaluation.classify import resolve_class_map
    from supmim.evaluation.common import EvaluationError
    from supmim.evaluation.datasets import eval_transform
    from supmim.evaluation.robustness import (CORRUPTIONS, clean_images, corruption_accuracies,
                                              corruption_cache_key, corruption_functions,
                                              split_transform)

    corruption_functions()  # fail early, before any work, when the package is missing
    corruptions = CORRUPTIONS if args.corruptions == ["all"] else args.corruptions
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise EvaluationError(f"unknown corruption(s) {unknown}; choose from {', '.join(CORRUPTIONS)} or all")
    if any(s not in (1, 2, 3, 4, 5) for s in args.severities):
        raise EvaluationError(f"--severities must be within 1..5, got {args.severities}")
    h, w = loaded.data_config["input_size"][1:]
    if min(h, w) < 32:
        raise EvaluationError(f"the corruption functions need images of at least 32x32; the model takes "
                              f"{h}x{w}")
    split = _split(args, args.split)
    class_map = resolve_class_map(loaded.num_classes, loaded.label_names, split.classes)
    indices = np.arange(len(split))
    if args.subset:
        if args.subset > len(split):
            raise EvaluationError(f"--subset {args.subset} exceeds the split's {len(split)} images")
        indices = stratified_subset(split.labels, args.subset, args.seed)
    geometric, _ = split_transform(eval_transform(loaded.data_config))
    mean, std = channel_stats(loaded.data_config["mean"], loaded.data_config["std"], loaded.in_chans)
    clean, labels = clean_images(split, geometric, indices, args.workers)
    cache_dir = None if args.no_cache else \
        cache_root(args.cache_dir) / "corrupted" / corruption_cache_key(split, indices, geometric, args.seed)
    result = corruption_accuracies(loaded.model, clean, labels, indices, class_map, mean, std, device,
                                   corruptions=corruptions, severities=args.severities, seed=args.seed,
                                   workers=args.workers, cache_dir=cache_dir, batch_size=args.batch_size,
                                   progress=not args.quiet)
    acc = result["accuracy"]
    per_sev = [statistics.fmean(acc[c][i] for c in acc) for i in range(len(args.severities))]
    scores = {"clean": result["clean"], "accuracy": acc, "severities": list(args.severities),
              "per_severity": per_sev, "mean_corrupted": statistics.fmean(per_sev),
              "per_corruption": {c: statistics.fmean(v) for c, v in acc.items()},
              "protocol": {"corruptions": list(corruptions), "severities": list(args.severities),
                           "images": int(len(indices)),
                           "subset": f"{args.subset} (stratified, seed {args.seed})" if args.subset else "all",
                           "seed": args.seed, "package": "imagecorruptions (imagecorruptions-imaug)",
                           "order": "resize/crop to the model's input size, corrupt, normalise",
                           "class_map": class_map.describe()}}
    tag = f"{split.tag}-{split.split}-corrupted"
    return scores, tag, {"spec": args.data, "tag": split.tag, **split.describe(), "images": int(len(indices))}


def _baseline_scores(args: argparse.Namespace, mine: dict[str, Any]) -> dict[str, Any]:
    """The reference's clean and per-corruption accuracy: a result JSON, or a MODEL evaluated here."""
    import json
    from pathlib import Path

    from supmim.evaluation.common import EvaluationError

    path = Path(args.baseline)
    if path.is_file():
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
    from types import SimpleNamespace

    sub = SimpleNamespace(**{**vars(args), "model": args.baseline, "baseline": None})
    loaded, device = _setup(sub)
    ref, _, _ = _corruption_run(sub, loaded, device)
    return {"clean": ref["clean"], "accuracy": ref["accuracy"], "source": args.baseline}


def _variant_run(args: argparse.Namespace, loaded: Any, device: Any, name: str, path: str) -> tuple[float, dict]:
    from supmim.evaluation.classify import classify, resolve_class_map
    from supmim.evaluation.common import EvaluationError
    from supmim.evaluation.datasets import eval_transform, load_split
    from supmim.evaluation.features import make_loader
    from supmim.evaluation.robustness import VARIANT_CLASSES

    if name not in VARIANT_CLASSES or not path:
        raise EvaluationError(f"--variant '{name}={path}': use NAME=PATH with NAME one of "
                              f"{', '.join(VARIANT_CLASSES)}")
    split = load_split(path, "all", cache_dir=args.cache_dir)
    if len(split.classes) != VARIANT_CLASSES[name]:
        raise EvaluationError(f"{name} has {VARIANT_CLASSES[name]} classes but '{path}' has "
                              f"{len(split.classes)} class folders; is it the right folder?")
    class_map = resolve_class_map(loaded.num_classes, loaded.label_names, split.classes)
    dataset = split.with_transform(eval_transform(loaded.data_config), loaded.in_chans)
    scores = classify(loaded.model, make_loader(dataset, args.batch_size, args.workers, device), class_map,
                      device, progress=not args.quiet, desc=name)
    return scores["top1"], {"path": path, "n": len(split), "top5": scores["top5"],
                            "class_map": class_map.describe()}


def cmd_report(args: argparse.Namespace) -> int:
    from supmim.evaluation.report import report

    result = report(args.inputs, args.out, title=args.title)
    print(f"wrote {args.out} ({len(result['rows'])} rows, {len(result['plots'])} plots) and "
          f"{args.out[:-3] if args.out.endswith('.md') else args.out}.json", flush=True)
    return 0


# --------------------------------------------------------------------------- parser


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``embed``, ``eval {classify,linear,knn,retrieval,segment,robustness}`` and ``report``."""
    p = sub.add_parser("embed", help="write a split's image features (and labels) to a .npz")
    _add_common(p, out_help="features file (.npz; metadata in the .json beside it)")
    p.add_argument("--split", default="test", help="train, test, val or all (default test)")
    _add_pool(p)
    p.add_argument("--normalize", action="store_true", help="L2-normalise each feature vector")
    p.set_defaults(func=cmd_embed)

    ev = sub.add_parser("eval", help="evaluate an encoder: classify, linear, knn, retrieval, segment, robustness")
    esub = ev.add_subparsers(dest="eval_command", required=True)

    p = esub.add_parser("classify", help="top-1 / top-5 with the model's own head")
    _add_common(p)
    p.add_argument("--split", default="test", help="default test")
    p.set_defaults(func=cmd_classify)

    p = esub.add_parser("linear", help="linear probe on frozen features (for any head, or none)")
    _add_common(p)
    _add_pool(p)
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--wd", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
                   help="weight-decay grid, chosen on a validation split of train")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of train held out to choose wd")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.set_defaults(func=cmd_linear)

    p = esub.add_parser("knn", help="weighted k-NN on cosine similarity (DINO protocol)")
    _add_common(p)
    _add_pool(p)
    p.add_argument("--train-split", default="train", help="the neighbour bank (default train)")
    p.add_argument("--test-split", default="test")
    p.add_argument("--k", type=int, nargs="+", default=[10, 20, 100, 200])
    p.add_argument("--temperature", type=float, default=0.07)
    p.set_defaults(func=cmd_knn)

    p = esub.add_parser("retrieval", help="Recall@K and mAP: queries against a gallery")
    _add_common(p)
    _add_pool(p)
    p.add_argument("--query-split", default="test")
    p.add_argument("--gallery-split", default="train")
    p.add_argument("--leave-one-out", action="store_true",
                   help="every image of --split queries all the others (e.g. ORL faces)")
    p.add_argument("--split", help="the set for --leave-one-out (default all)")
    p.add_argument("--recall-at", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--backend", choices=("torch", "faiss"), default="torch",
                   help="torch: exact, full-ranking mAP; faiss: top-N search (pip install faiss-cpu)")
    p.add_argument("--topn", type=int, help="also report mAP@N (faiss: the search depth, default 100)")
    p.add_argument("--memory-mb", type=int, default=256, help="bound on the similarity block in memory")
    p.set_defaults(func=cmd_retrieval)

    p = esub.add_parser("segment", help="segmentation head on patch features: mIoU, per-class IoU")
    _add_common(p)
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--head", choices=("linear", "multilevel"), default="linear")
    p.add_argument("--finetune", action="store_true", help="train the encoder too (default: frozen)")
    p.add_argument("--size", type=int, nargs="+", metavar="H [W]",
                   help="input size, multiples of the patch size (default: the model's input size)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seg-batch-size", type=int, default=16, help="head-training batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--encoder-lr-scale", type=float, default=0.1, help="--finetune: encoder lr = lr x this")
    p.add_argument("--levels", type=int, nargs="+", help="block indices to read (default: the last for "
                                                         "linear, 4 evenly spaced for multilevel)")
    p.add_argument("--width", type=int, default=64, help="multilevel head width (channels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-id", type=int, nargs="+", help="label ids to ignore (besides the layout's own)")
    p.add_argument("--num-classes", type=int, help="ADE-style folders: number of classes (default: scanned)")
    p.add_argument("--reduce-zero-label", action=argparse.BooleanOptionalAction, default=None,
                   help="ADE-style folders: label 0 is ignored and 1.. become 0.. (default: on for "
                        "images/training, images/validation)")
    p.add_argument("--cache-gb", type=float, default=2.0, help="frozen: keep encoder maps in memory up to this")
    p.set_defaults(func=cmd_segment)

    p = esub.add_parser("robustness", help="corruptions (ImageNet-C style), mCE, ImageNet-A/-R/-Sketch/-V2")
    _add_common(p, data_required=False)
    p.add_argument("--split", default="test")
    p.add_argument("--corruptions", nargs="+", default=["all"], help="names, or all (the 15 standard ones)")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--subset", type=int, help="a fixed, class-balanced subset of this many images")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the corruptions")
    p.add_argument("--baseline", help="reference for mCE: a robustness result JSON or a MODEL")
    p.add_argument("--variant", action="append", metavar="NAME=PATH",
                   help="imagenet-a, imagenet-r, imagenet-sketch or imagenet-v2 folder (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="do not cache corrupted images")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("report", help="side-by-side markdown + plots + JSON of evaluation results")
    p.add_argument("inputs", nargs="+", metavar="RUN_OR_MODEL",
                   help="[LABEL=]PATH[,PATH...]: result JSON files or folders with eval/*.json; "
                        "several paths form one group (mean +- std); the first group is the reference")
    p.add_argument("--out", required=True, help="report .md (the .json and .png files go beside it)")
    p.add_argument("--title", default="Evaluation report")
    p.set_defaults(func=cmd_report)
