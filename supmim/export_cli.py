"""The ``supmim export`` command: its arguments (:func:`register`, called by
:mod:`supmim.cli`) and what it runs. Imports nothing heavy, so ``supmim --help`` stays fast."""

from __future__ import annotations

import argparse
import shlex

from supmim.errors import ConfigError

FORMATS = ("timm", "onnx")  # = supmim.export.FORMATS, spelled out so `--help` imports no torch


def cmd_export(args: argparse.Namespace) -> int:
    """``supmim export RUN --out E [--format timm|onnx] [--push-to-hub REPO]``."""
    if args.push_to_hub:
        if args.format != "timm":
            raise ConfigError("--push-to-hub uploads the timm folder; drop --format onnx (or "
                              "export ONNX into another folder)")
        from supmim.hub import hub_token
        hub_token()  # no token: fail before exporting
    from supmim.export import export_run
    out = export_run(args.run, args.out, checkpoint=args.checkpoint, weights=args.weights,
                     head=not args.no_head, fmt=args.format, repo_id=args.push_to_hub,
                     command="supmim " + shlex.join(getattr(args, "argv", [])))
    if args.format == "onnx":
        print(f"exported to {out}/model.onnx (preprocessing and classes: {out}/onnx.json)")
        return 0
    print(f"exported to {out}; load with timm.create_model('local-dir:{out}', pretrained=True)")
    if args.push_to_hub:
        from supmim.hub import push_export
        url = push_export(out, args.push_to_hub, private=args.private, revision=args.revision,
                          commit_message=args.commit_message)
        print(f"pushed to {url}; load with timm.create_model('hf-hub:{args.push_to_hub}', "
              "pretrained=True)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` command to the ``supmim`` subcommands ``sub``."""
    p = sub.add_parser("export", help="export a run's encoder as a timm model folder (or ONNX), "
                                      "optionally pushed to the Hugging Face Hub")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", default="last",
                   help="last (default), best, or a folder name under RUN/checkpoints")
    p.add_argument("--weights", choices=("auto", "raw", "ema"), default="auto")
    p.add_argument("--no-head", action="store_true",
                   help="export the encoder without its head (outputs pooled features)")
    p.add_argument("--format", choices=FORMATS, default="timm",
                   help="timm (default): config.json + model.safetensors + model card; onnx: "
                        "model.onnx (dynamic batch) + onnx.json (needs supmim[onnx])")
    p.add_argument("--push-to-hub", metavar="REPO",
                   help="also upload the timm folder to this Hub model repo (OWNER/NAME); "
                        "token from HF_TOKEN or `hf auth login`")
    p.add_argument("--private", action="store_true",
                   help="create the repo private (an existing repo keeps its visibility)")
    p.add_argument("--revision", help="push to this branch (created if missing)")
    p.add_argument("--commit-message", default="Add supmim export")
    p.set_defaults(func=cmd_export)
