"""CLI commands of the evaluation suite (``supmim embed``, ``supmim eval ...``, ``supmim report``).

This module only parses arguments: each handler builds the task's options from them, loads
the model, runs the task of :mod:`supmim.evaluation.tasks` (where the work is done, and
which Python code calls directly) and writes / prints the result. Handlers import what they
need when they run, so ``supmim --help`` stays fast. Every ``eval`` command writes one JSON
result (default ``MODEL/eval/<task>-<data>.json``, where ``supmim report MODEL`` finds it)
and prints its headline numbers.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from supmim.evaluation.loading import LoadedModel
    from supmim.evaluation.tasks import TaskOptions

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
    p.add_argument("--checkpoint", default="last",
                   help="run directories: which checkpoint (default last, the one reported on test; "
                        "best, or a folder name under RUN/checkpoints)")
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


def _setup(args: argparse.Namespace) -> tuple[LoadedModel, torch.device]:
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


def _task_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options every task takes (:class:`~supmim.evaluation.tasks.TaskOptions`)."""
    return dict(data_root=args.data_root, download=args.download, batch_size=args.batch_size,
                workers=args.workers, cache_dir=args.cache_dir, progress=not args.quiet)


def _feature_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of the tasks on pooled features (``--pool``, ``--no-cache`` too)."""
    return dict(_task_options(args), pool=args.pool, use_cache=not args.no_cache)


def _run(args: argparse.Namespace, task: str, options: TaskOptions) -> dict[str, Any]:
    """Check ``options`` (before the model loads, so bad options fail fast), load the model,
    run ``task`` on ``--data``."""
    from supmim.evaluation.tasks import TASKS

    options.check()
    loaded, device = _setup(args)
    return TASKS[task].run(loaded, args.data, options, device=device)


def _evaluate(args: argparse.Namespace, task: str, options: TaskOptions) -> int:
    """Run an ``eval`` task and write its result where ``--out`` (or the default) says."""
    from supmim.evaluation.tasks import TASKS

    result = _run(args, task, options)
    return _finish(args, result, task, TASKS[task].result_tag(result, options))


def _finish(args: argparse.Namespace, result: dict[str, Any], task: str, tag: str) -> int:
    from pathlib import Path

    from supmim.evaluation.common import default_result_path, write_json

    out = Path(args.out) if args.out else default_result_path(args.model, task, tag)
    write_json(out, result)
    shown = ", ".join(f"{k} {v:.2f}" for k, v in list(result["metrics"].items())[:8])
    print(f"{result['name']}: {shown}\nwrote {out}", flush=True)
    return 0


# --------------------------------------------------------------------------- commands


def cmd_embed(args: argparse.Namespace) -> int:
    from supmim.evaluation.tasks import EmbedOptions

    options = EmbedOptions(out=args.out, split=args.split, normalize=args.normalize, **_feature_options(args))
    result = _run(args, "embed", options)
    n, dim = result["details"]["shape"]
    print(f"{n} features of size {dim} -> {result['details']['features']}", flush=True)
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from supmim.evaluation.tasks import ClassifyOptions

    return _evaluate(args, "classify", ClassifyOptions(split=args.split, **_task_options(args)))


def cmd_linear(args: argparse.Namespace) -> int:
    from supmim.evaluation.tasks import LinearOptions

    options = LinearOptions(train_split=args.train_split, test_split=args.test_split, wd=args.wd,
                            val_fraction=args.val_fraction, seed=args.seed, **_feature_options(args))
    return _evaluate(args, "linear", options)


def cmd_knn(args: argparse.Namespace) -> int:
    from supmim.evaluation.tasks import KnnOptions

    options = KnnOptions(k=args.k, temperature=args.temperature, train_split=args.train_split,
                         test_split=args.test_split, **_feature_options(args))
    return _evaluate(args, "knn", options)


def cmd_retrieval(args: argparse.Namespace) -> int:
    from supmim.evaluation.tasks import RetrievalOptions

    options = RetrievalOptions(query_split=args.query_split, gallery_split=args.gallery_split,
                               leave_one_out=args.leave_one_out, split=args.split, recall_at=args.recall_at,
                               backend=args.backend, topn=args.topn, memory_mb=args.memory_mb,
                               **_feature_options(args))
    return _evaluate(args, "retrieval", options)


def cmd_segment(args: argparse.Namespace) -> int:
    from supmim.evaluation.tasks import SegmentOptions

    options = SegmentOptions(
        train_split=args.train_split, test_split=args.test_split, head=args.head, finetune=args.finetune,
        size=args.size, epochs=args.epochs, seg_batch_size=args.seg_batch_size, lr=args.lr,
        weight_decay=args.weight_decay, encoder_lr_scale=args.encoder_lr_scale, levels=args.levels,
        width=args.width, seed=args.seed, ignore_id=args.ignore_id, num_classes=args.num_classes,
        reduce_zero_label=args.reduce_zero_label, cache_gb=args.cache_gb, **_task_options(args))
    return _evaluate(args, "segment", options)


def cmd_robustness(args: argparse.Namespace) -> int:
    from supmim.evaluation.tasks import RobustnessOptions
    from supmim.evaluation.tasks.robustness import require_input

    options = RobustnessOptions(
        split=args.split, corruptions=args.corruptions, severities=args.severities, subset=args.subset,
        seed=args.seed, baseline=args.baseline, variants=args.variant or [], use_cache=not args.no_cache,
        imagenet_c=args.imagenet_c, imagenet_c_reference=args.imagenet_c_reference,
        checkpoint=args.checkpoint, weights=args.weights, **_task_options(args))
    require_input(args.data, options)
    return _evaluate(args, "robustness", options)


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
                   help="imagenet-a, imagenet-r, imagenet-sketch (<wnid>/ folders) or imagenet-v2 (<0..999>/) "
                        "folder or .tar (repeatable)")
    p.add_argument("--imagenet-c", metavar="PATH",
                   help="an ImageNet-C folder (<corruption>/<severity>/<wnid>/): top-1 per corruption and "
                        "severity, mCE")
    p.add_argument("--imagenet-c-reference", default="alexnet", metavar="alexnet|none|JSON",
                   help="mCE normaliser: AlexNet's published errors (default), none, or a JSON "
                        "{corruption: error %%} / an earlier robustness result with ImageNet-C")
    p.add_argument("--no-cache", action="store_true", help="do not cache corrupted images")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("report", help="side-by-side markdown + plots + JSON of evaluation results")
    p.add_argument("inputs", nargs="+", metavar="RUN_OR_MODEL",
                   help="[LABEL=]PATH[,PATH...]: result JSON files or folders with eval/*.json; "
                        "several paths form one group (mean +- std); the first group is the reference")
    p.add_argument("--out", required=True, help="report .md (the .json and .png files go beside it)")
    p.add_argument("--title", default="Evaluation report")
    p.set_defaults(func=cmd_report)
