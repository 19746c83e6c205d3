"""``supmim <command>``: train, compare, tokenizer, export, demo, bench, config, and the
evaluation commands. PYTHON_ARGCOMPLETE_OK (tab completion: :mod:`supmim.completion`).

Every command builds and validates its configuration before touching data, so a bad key or
value fails in a second with a message naming the key and its valid values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from supmim.cli_help import BENCH_NOTES, TRAIN_EXAMPLES, describe_subcommands
from supmim.completion import enable as enable_completion
from supmim.config import PRESETS, build_config, save_config
from supmim.errors import Interrupted, SupmimError
from supmim.experiments.sweep_cli import add_sweep_args
from supmim.targets.registry import TargetNames


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
    p.add_argument("--target", choices=TargetNames(), metavar="TARGET",
                   help="MIM target: vq (tokenizer ids, the paper), pixel (MAE), hog "
                        "(MaskFeat), or any registered with supmim.targets.register_target")
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
    """``--resume``: the run's own config (from its latest checkpoint), plus --epochs and
    --set overrides."""
    from supmim.config import parse_override, set_key, validate
    from supmim.run import RunDir
    if not (Path(args.out) / RunDir.CONFIG).is_file():
        raise SupmimError(f"--resume: '{Path(args.out) / RunDir.CONFIG}' not found; is --out "
                          "a supmim run directory?")
    cfg = RunDir(args.out).config()
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    for text in args.overrides:
        set_key(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from supmim.run import RunDir
    from supmim.training import train
    continuing = args.resume == "yes" or (args.resume == "auto"
                                          and RunDir(args.out).has_checkpoints())
    if continuing:
        cfg = _resume_config(args)
    else:
        if args.data is None:
            raise SupmimError("--data is required (except when resuming a run that has a "
                              "checkpoint)")
        cfg = _config_from(args)
    if args.dry_run:
        from supmim.dry_run import describe, plan
        print(describe(cfg, plan(cfg)))
        return 0
    # "auto" without a checkpoint: a new run (clearing a pre-checkpoint crash's log)
    resume: bool | str = True if continuing else ("auto" if args.resume == "auto" else False)
    from supmim.engine import dist
    try:
        summary = train(cfg, args.out, resume=resume, progress=not args.quiet)
        main_process = dist.is_main()
    finally:
        dist.teardown()
    if main_process:
        _print_result(args.out, summary)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from supmim.run import RunDir
    from supmim.run.checkpoint import check_run
    run = RunDir.open(args.run)
    rows = check_run(run.path)
    if not rows:
        print(f"{run.path}: no checkpoints")
        return 1
    print(f"{'checkpoint':<22} {'step':>8} {'epoch':>5}  status      reason")
    for r in rows:
        print(f"{r['checkpoint']:<22} {r['step'] if r['step'] is not None else '?':>8} "
              f"{r['epoch'] if r['epoch'] is not None else '?':>5}  {r['status']:<10}  "
              f"{r['reason']}")
    broken = sum(r["status"] == "broken" for r in rows)
    print(f"{len(rows)} checkpoints, {broken} broken")
    return 1 if broken else 0


def _print_result(out: str, summary: dict[str, Any]) -> None:
    parts = [f"{split} top-1 {summary[split]['top1']:.2f}%" for split in ("val", "test")
             if split in summary]
    print(f"run {out}: " + ", ".join(parts), flush=True)


def cmd_compare(args: argparse.Namespace) -> int:
    from supmim.experiments.compare import compare
    cfg = _config_from(args)
    compare(cfg, args.out, args.seeds, progress=not args.quiet, knn=not args.no_knn)
    print(Path(args.out, "compare.md").read_text())
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from supmim.run.tokenizer import train_tokenizer_for_run
    args.tokenizer, args.target = None, "pixel"  # the run config's MIM target is irrelevant here
    cfg = _config_from(args)
    overrides = {k: v for k, v in (("lr", args.lr), ("disc_weight", args.disc_weight),
                                   ("disc_start", args.disc_start),
                                   ("log_every", args.log_every)) if v is not None}
    summary = train_tokenizer_for_run(cfg, args.out, steps=args.steps, factor=args.factor,
                                      codebook_size=args.codebook_size,
                                      batch_size=args.batch_size, progress=not args.quiet,
                                      train_overrides=overrides)
    print(f"tokenizer {args.out}: PSNR {summary['psnr']:.2f} dB, codebook usage "
          f"{summary['usage']:.1f}%, perplexity {summary['perplexity']:.1f} "
          f"({summary['seconds']:.0f} s; {Path(args.out, 'summary.json')})")
    return 0


# = supmim.targets.vqgan_import.FORMATS, spelled out so `supmim --help` does not import torch
IMPORT_FORMATS = ("maskgit-bin", "mage-ckpt", "maskgit-flax", "taming-ckpt")


def cmd_tokenizer_import(args: argparse.Namespace) -> int:
    from supmim.targets.tokenizers.importers import import_tokenizer
    tok = import_tokenizer(args.src, args.format, args.out, sha256=args.sha256,
                           img_size=args.img_size)
    c = tok.config
    verified = "verified" if args.sha256 else "not verified: pass --sha256 to check it"
    print(f"imported {args.src} ({args.format}) -> {args.out}: {tok.kind}, f{tok.factor}, "
          f"{tok.codebook_size} codes x {c.embed_dim}, channels {c.ch} x {c.ch_mult}, input "
          f"range {list(tok.input_range)}; sha256 {tok.metadata['source_sha256']} ({verified})")
    return 0


def cmd_tokenizer_eval(args: argparse.Namespace) -> int:
    from supmim.files import write_json
    from supmim.run.tokenizer import evaluate_tokenizer_for_run
    args.tokenizer, args.target = None, "pixel"
    cfg = _config_from(args)
    result = evaluate_tokenizer_for_run(cfg, args.tok, split=args.split,
                                        max_batches=args.max_batches)
    result["tokenizer"] = str(args.tok)
    print(f"tokenizer {args.tok} on {result['images']} {args.split} images at "
          f"{result['image_size']} px: PSNR {result['psnr']:.2f} dB, codebook usage "
          f"{result['usage']:.1f}%, perplexity {result['perplexity']:.1f}")
    if args.json:
        write_json(args.json, result)
    return 0


def cmd_tokenizer_cache(args: argparse.Namespace) -> int:
    from supmim.run.token_views import build_view_cache, check_cacheable
    args.target = "vq"
    cfg = check_cacheable(_config_from(args), args.out)
    result = build_view_cache(cfg, cfg.mim.tokenizer or "", views=args.views, out=args.out,
                              batch=args.batch, device=args.device, progress=not args.quiet)
    print(f"view cache {args.out}: {result['images']} images x {result['views']} views of "
          f"{result['tokens']} tokens, built in {result['seconds']:.1f} s on "
          f"{result['device']} ({result['precision']}); {result['bytes']} bytes, "
          f"{result['bytes_per_image']:.0f} per image. Train with --set "
          f"mim.token_cache={args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from supmim.experiments.demo import run_demo
    run_demo(args.out, seeds=args.seeds, progress=not args.quiet)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from supmim.experiments.sweep_cli import cmd_sweep as run_sweep
    return run_sweep(args, _config_from)


def cmd_data_pack(args: argparse.Namespace) -> int:
    from supmim.data.shards import pack
    result = pack(args.data, args.out, shard_size=args.shard_size, progress=not args.quiet,
                  root=args.data_root)
    counts = ", ".join(f"{k} {v}" for k, v in result["splits"].items())
    print(f"packed {counts} samples into {args.out}; train with --data {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from supmim.experiments.bench import BenchConfig, bench, format_result, write_result
    b = BenchConfig(model=args.model, img_size=args.img_size, patch_size=args.patch_size,
                    batch=args.batch, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                    target=args.target, mask_ratio=args.mask_ratio,
                    decoder_depth=args.decoder_depth, device=args.device, amp=args.amp,
                    compile=args.compile, threads=args.threads, peak_tflops=args.peak_tflops,
                    data=args.data, workers=args.workers)
    result = bench(b)
    print(format_result(result))
    if args.out:
        write_result(result, args.out)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    if args.save:
        save_config(cfg, args.save)
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supmim", description="Supervised ViT training with an auxiliary masked-image-"
        "modeling loss (VQ-token targets), and the evaluations that measure what it does. "
        "`supmim COMMAND --help` for each command's options.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run (supervised + MIM, or --no-mim)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=TRAIN_EXAMPLES)
    _add_config_args(p, data_required=False)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-mim", action="store_true", help="supervised baseline (no MIM branch)")
    p.add_argument("--resume", nargs="?", const="yes", choices=("yes", "auto"),
                   help="continue the run in --out from its latest checkpoint, with its own "
                        "config.yaml (--epochs and --set still apply); 'auto': continue if "
                        "there is a checkpoint, else start a new run from --data")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, data and tokenizer; print the steps, parameters and "
                        "FLOPs per step; train nothing and write nothing to --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="baseline vs MIM over seeds, same recipe")
    _add_config_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="2 or more: a t-interval")
    p.add_argument("--no-knn", action="store_true",
                   help="skip the kNN top-1 (k = 20) of each arm's encoder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tokenizer", help="VQ tokenizer commands: train, import, eval, cache")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a VQ tokenizer whose grid matches the ViT's")
    _add_config_args(t)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=4000,
                   help="optimizer steps of batch 32 (4000: about 2.5 min for CIFAR-10 on 2 CPU cores)")
    t.add_argument("--factor", type=int, choices=(2, 4, 8, 16),
                   help="downsampling factor (default: from the preset's patch size)")
    t.add_argument("--codebook-size", type=int, default=512)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, help="peak learning rate (default 3e-3)")
    t.add_argument("--disc-weight", type=float,
                   help="add a patch discriminator (hinge loss) with this generator weight, "
                        "e.g. 0.1 (default: off)")
    t.add_argument("--disc-start", type=int, help="step at which the discriminator starts")
    t.add_argument("--log-every", type=int, help="steps between metrics.jsonl lines (100)")
    t.add_argument("--seed", type=int)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_tokenizer_train)

    t = tsub.add_parser("import", help="import a public VQGAN checkpoint (MaskGIT, MAGE, "
                                       "taming) as a supmim tokenizer folder")
    t.add_argument("src", help="the checkpoint file (see docs/tokenizers.md for where to get it)")
    t.add_argument("--format", required=True, choices=IMPORT_FORMATS,
                   help="maskgit-bin: open-muse/TiTok PyTorch port (.bin); mage-ckpt: MAGE's "
                        "vqgan .ckpt; maskgit-flax: MaskGIT's Flax msgpack; taming-ckpt: "
                        "taming-transformers Lightning .ckpt")
    t.add_argument("--out", required=True, help="tokenizer folder to write")
    t.add_argument("--sha256", help="expected sha256 of SRC; a mismatch is refused")
    t.add_argument("--img-size", type=int, default=256,
                   help="resolution the tokenizer was trained at (recorded only)")
    t.set_defaults(func=cmd_tokenizer_import)

    t = tsub.add_parser("eval", help="PSNR, codebook usage and perplexity of a tokenizer on a "
                                     "dataset, at the size the MIM target feeds it")
    t.add_argument("tok", help="tokenizer folder (trained or imported)")
    _add_config_args(t)
    t.add_argument("--split", choices=("val", "test", "train"), default="val")
    t.add_argument("--max-batches", type=int, help="evaluate only this many batches of 64")
    t.add_argument("--json", help="also write the numbers to this JSON file")
    t.set_defaults(func=cmd_tokenizer_eval)

    t = tsub.add_parser("cache", help="precompute the token ids of K augmented views per "
                                      "training image (train with --set mim.token_cache=OUT)")
    _add_config_args(t)
    t.add_argument("--views", type=int, required=True,
                   help="K: views per image; an epoch uses one, each is reused epochs/K times")
    t.add_argument("--out", required=True, help="folder to write views.safetensors into")
    t.add_argument("--seed", type=int, help="the views' seed (default: train.seed)")
    t.add_argument("--batch", type=int, default=256, help="views per tokenizer forward")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_tokenizer_cache)

    from supmim.export_cli import register as register_export
    register_export(sub)

    p = sub.add_parser("check", help="verify every checkpoint of a run against its recorded "
                                     "digests (exit 1 when any is broken)")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="the main job: tokenizer + baseline vs MIM on Fashion-MNIST")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds per arm (default: 0 1)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="a grid of config values over seeds, one shared recipe")
    _add_config_args(p)
    add_sweep_args(p)  # grid, arms, studies, seeds; --launcher local|submitit and its settings
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("data", help="data commands")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("pack", help="write a dataset as WebDataset tar shards")
    d.add_argument("data", help="anything --data accepts (folder tree, archive, built-in name)")
    d.add_argument("--out", required=True, help="new folder for the shards")
    d.add_argument("--shard-size", type=int, default=10_000, help="samples per shard")
    d.add_argument("--data-root", help="folder holding a built-in dataset's files")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_data_pack)

    p = sub.add_parser("bench", help="training-step throughput: plain loop vs trainer vs "
                                     "trainer + MIM, side by side",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=BENCH_NOTES)
    p.add_argument("--model", default="vit_tiny_patch16_224", help="timm ViT name")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    p.add_argument("--target", choices=("vq", "pixel", "hog", "none"), default="vq",
                   help="MIM target (vq: an untrained tokenizer with the right grid)")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--decoder-depth", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default="auto",
                   help="torch.compile the loops (train.compile); default auto: on for CUDA, "
                        "off on the CPU")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--peak-tflops", type=float,
                   help="the device's peak (for the FLOPs utilisation) if not in the built-in table")
    p.add_argument("--data", help="also time the training data loader on this --data")
    p.add_argument("--workers", type=int, default=8, help="data-loader workers for --data")
    p.add_argument("--out", help="write the result JSON here")
    p.set_defaults(func=cmd_bench)

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
    describe_subcommands(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    enable_completion(parser)  # answers a shell's tab completion request, then exits
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # as typed, for the records
    try:
        return int(args.func(args))
    except Interrupted as err:
        print(f"supmim: {err}", file=sys.stderr)
        return 128 + err.signum
    except SupmimError as err:
        print(f"supmim: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("supmim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
