"""``supmim <command>``: train, compare, tokenizer train, export, demo, config.

Every command builds and validates its configuration before touching data, so a bad key or
value fails in a second with a message naming the key and its valid values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from supmim.config import PRESETS, build_config, save_config
from supmim.errors import SupmimError


def _add_config_args(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    p.add_argument("--data", required=data_required,
                   help="image-folder tree (train/ + val/ or test/), a .tar/.tar.gz of one, "
                        "or a built-in name: fashion-mnist, digits, cifar10, cifar100")
    p.add_argument("--data-root", help="folder holding a built-in dataset's files")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download cifar10/cifar100 into --data-root")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named starting configuration")
    p.add_argument("--config", help="a YAML file of {section: {key: value}} overrides")
    p.add_argument("--epochs", type=int)
    p.add_argument("--mim-weight", type=float, help="lambda; the loss is CE + lambda * MIM")
    p.add_argument("--target", choices=("vq", "pixel", "hog"), help="MIM target")
    p.add_argument("--tokenizer", help="tokenizer folder for --target vq, or 'auto' to train one")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=3e-4 (repeatable)")


_ARG_KEYS = {"data": "data.data", "data_root": "data.root", "epochs": "train.epochs",
             "mim_weight": "mim.weight", "target": "mim.target", "tokenizer": "mim.tokenizer",
             "device": "train.device", "seed": "train.seed"}


def _config_from(args: argparse.Namespace):
    extra: dict[str, Any] = {key: getattr(args, name) for name, key in _ARG_KEYS.items()
                             if getattr(args, name, None) is not None}
    if getattr(args, "download", False):
        extra["data.download"] = True
    if getattr(args, "no_mim", False):
        extra["mim.enabled"] = False
    preset = args.preset
    if preset is None and args.data in PRESETS:  # `--data cifar10` picks the cifar10 preset
        preset = args.data
    return build_config(preset=preset, file=args.config, overrides=args.overrides, extra=extra)


def _resume_config(args: argparse.Namespace):
    """``--resume``: the run's own config.yaml, plus --epochs and --set overrides."""
    from supmim.config import load_config, parse_override, set_key, validate
    path = Path(args.out) / "config.yaml"
    if not path.is_file():
        raise SupmimError(f"--resume: '{path}' not found; is --out a supmim run directory?")
    cfg = load_config(path)
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    for text in args.overrides:
        set_key(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from supmim.engine.trainer import train
    if args.resume:
        cfg = _resume_config(args)
    else:
        if args.data is None:
            raise SupmimError("--data is required (except with --resume)")
        cfg = _config_from(args)
    summary = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    _print_result(args.out, summary)
    return 0


def _print_result(out: str, summary: dict[str, Any]) -> None:
    parts = [f"{split} top-1 {summary[split]['top1']:.2f}%" for split in ("val", "test")
             if split in summary]
    print(f"run {out}: " + ", ".join(parts), flush=True)


def cmd_compare(args: argparse.Namespace) -> int:
    from supmim.compare import compare
    cfg = _config_from(args)
    compare(cfg, args.out, args.seeds, progress=not args.quiet)
    print(Path(args.out, "compare.md").read_text())
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from supmim.tokenizer import train_tokenizer_for_run
    args.tokenizer, args.target = None, "pixel"  # the run config's MIM target is irrelevant here
    cfg = _config_from(args)
    summary = train_tokenizer_for_run(cfg, args.out, steps=args.steps, factor=args.factor,
                                      codebook_size=args.codebook_size,
                                      progress=not args.quiet)
    print(f"tokenizer {args.out}: PSNR {summary['psnr']:.2f} dB, codebook usage "
          f"{summary['usage']:.1f}%, perplexity {summary['perplexity']:.1f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from supmim.export import export_run
    out = export_run(args.run, args.out, checkpoint=args.checkpoint, weights=args.weights,
                     head=not args.no_head)
    print(f"exported to {out}; load with timm.create_model('local-dir:{out}', pretrained=True)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from supmim.demo import run_demo
    run_demo(args.out, seeds=args.seeds, progress=not args.quiet)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    if args.save:
        save_config(cfg, args.save)
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supmim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run (supervised + MIM, or --no-mim)")
    _add_config_args(p, data_required=False)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-mim", action="store_true", help="supervised baseline (no MIM branch)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its own config.yaml (--epochs and "
                        "--set still apply)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="baseline vs MIM over seeds, same recipe")
    _add_config_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tokenizer", help="VQ tokenizer commands")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a VQ tokenizer whose grid matches the ViT's")
    _add_config_args(t)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=4000,
                   help="optimizer steps of batch 32 (4000: about 2.5 min for CIFAR-10 on 2 CPU cores)")
    t.add_argument("--factor", type=int, choices=(2, 4, 8, 16),
                   help="downsampling factor (default: from the preset's patch size)")
    t.add_argument("--codebook-size", type=int, default=512)
    t.add_argument("--seed", type=int)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("export", help="export a run's encoder as a timm model folder")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", choices=("last", "best"), default="last")
    p.add_argument("--weights", choices=("auto", "raw", "ema"), default="auto")
    p.add_argument("--no-head", action="store_true", help="export the encoder without its head")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the main job: tokenizer + baseline vs MIM on Fashion-MNIST")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("config", help="print (and --save) the resolved configuration")
    _add_config_args(p, data_required=False)
    p.add_argument("--seed", type=int)
    p.add_argument("--save", help="write the resolved config to this YAML file")
    p.set_defaults(func=cmd_config)

    # commands that live beside what they do
    from supmim.evaluation.cli import register as register_eval
    from supmim.visualize import register as register_visualize
    register_eval(sub)
    register_visualize(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SupmimError as err:
        print(f"supmim: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("supmim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
