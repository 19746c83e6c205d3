"""The ``supmim sweep`` command: its flags and what it does with them (the sweep itself is
:mod:`supmim.experiments.sweep`, where it runs :mod:`supmim.experiments.launchers`).

Light to import (no torch): the CLI builds its parser from here.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any, Callable

from supmim.errors import SupmimError


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    """Every ``supmim sweep`` flag but the shared config ones (``--data``, ``--set``, ...)."""
    p.add_argument("--out", required=True)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a swept key and its values (repeatable: the cartesian product runs)")
    p.add_argument("--arm", action="append", default=[], metavar="KEY=V;KEY2=V2",
                   help="one explicit arm (repeatable), beside or instead of the grid; string "
                        "values may hold {seed}")
    p.add_argument("--study", help="a named study of the paper (see supmim.studies)")
    p.add_argument("--pretrain-data", help="--study stages: the stage-1 (pre-training) data")
    p.add_argument("--size", choices=("cpu", "gpu"), default="cpu",
                   help="the study's size (epochs, workers)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--no-baseline", action="store_true",
                   help="no supervised baseline arm (deltas are then not reported)")
    p.add_argument("--no-knn", action="store_true", help="skip the kNN evaluation of each arm")
    p.add_argument("--parallel", type=int, default=1,
                   help="arm-seeds to run at once, each in its own process (small models on "
                        "a big GPU or many cores)")
    p.add_argument("--report-only", action="store_true",
                   help="train and submit nothing: tabulate the runs that have finished and "
                        "list the others with their state")
    p.add_argument("--quiet", action="store_true")
    add_launcher_args(p)


SETTING_HELP: dict[str, str] = {
    "partition": "SLURM partition",
    "time": "time limit per job: minutes or [D-]HH:MM:SS (default 1:00:00); a longer run is "
            "requeued and continues from its last checkpoint",
    "gpus": "GPUs per job (default 1)",
    "cpus": "CPUs per job (at least data.num_workers + 1)",
    "mem": "memory per job, e.g. 32G",
    "account": "SLURM account to charge",
    "qos": "SLURM quality of service",
    "constraint": "SLURM node constraint (features), e.g. a100",
    "array-parallelism": "at most this many of the sweep's jobs run at once (default 32)",
    "max-requeues": "times a job may reach its time limit and be requeued (default 5; "
                    "pre-emptions are not counted)",
}


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    """``--launcher local|submitit``, its cluster settings and ``--no-wait``."""
    g = p.add_argument_group("launcher", "where the arm-seeds run (--launcher submitit: one "
                                         "cluster job each; pip install 'supmim[cluster]')")
    g.add_argument("--launcher", choices=("local", "submitit"), default="local",
                   help="local: this machine (with --parallel N); submitit: SLURM jobs")
    g.add_argument("--launcher-config", metavar="FILE",
                   help="YAML of cluster settings (partition, time, gpus, cpus, mem, account, "
                        "qos, constraint, array_parallelism, max_requeues, setup); flags win")
    metavars = {"time": "TIME", "mem": "MEM", "gpus": "N", "cpus": "N",
                "array-parallelism": "N", "max-requeues": "N"}
    for name, text in SETTING_HELP.items():
        g.add_argument(f"--slurm-{name}", dest=f"slurm_{name.replace('-', '_')}", help=text,
                       metavar=metavars.get(name, "NAME"))
    g.add_argument("--submitit-cluster", metavar="{slurm,local,debug}",
                   help="slurm (default); local: each job a process on this machine "
                        "(to try a sweep out); debug: in this process")
    g.add_argument("--no-wait", action="store_true",
                   help="submit and return; collect later with the same command and "
                        "--report-only")


def _study_items(args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, Any]]:
    """The grid and arm items of ``--study`` plus the flags'; the study's overrides go
    before the user's ``--set`` ones. One-line errors for flags that do not fit."""
    from supmim.experiments.studies import SIZES, study
    grid_items, arm_items, spec = list(args.grid), list(args.arm), {}
    if args.study:
        spec = study(args.study)
        grid_items = spec["grid"] + grid_items
        arm_items = spec.get("arms", []) + arm_items
        args.overrides = SIZES[args.size] + spec["set"] + args.overrides
    if spec.get("stages"):
        if not args.pretrain_data:
            raise SupmimError("sweep --study stages needs --pretrain-data D2 (the stage-1 "
                              "images, e.g. ../shared/data/tiny-imagenet-10class-subset.tar.gz)")
        if grid_items or arm_items:
            raise SupmimError("sweep --study stages takes no --grid / --arm")
    elif not grid_items and not arm_items:
        raise SupmimError("sweep: give at least one --grid key=v1,v2 or --arm k=v;k2=v2 "
                          "(or --study NAME)")
    elif args.pretrain_data:
        raise SupmimError("--pretrain-data is for --study stages only")
    return grid_items, arm_items, spec


def collect_command(args: argparse.Namespace) -> str:
    """The command line that tabulates this sweep later: as typed, with --report-only."""
    argv = [a for a in getattr(args, "argv", []) if a != "--no-wait"]
    return "supmim " + shlex.join([*argv, "--report-only"])


def cmd_sweep(args: argparse.Namespace, config_from: Callable[[argparse.Namespace], Any]) -> int:
    """Run (or submit, or tabulate) the sweep the flags describe; print its table."""
    from supmim.experiments.launchers import launcher_from_args, require_finished
    from supmim.experiments.studies import run_stage_study
    from supmim.experiments.sweep import parse_arm, parse_grid, sweep
    grid_items, arm_items, spec = _study_items(args)
    cfg = config_from(args)
    launcher = None if args.report_only else launcher_from_args(args, Path(args.out))
    common = dict(knn=not args.no_knn, progress=not args.quiet, parallel=args.parallel,
                  report_only=args.report_only, launcher=launcher)
    if spec.get("stages"):
        result = run_stage_study(cfg, args.pretrain_data, args.out, args.seeds, **common)
    else:
        result = sweep(cfg, args.out, parse_grid(grid_items), args.seeds,
                       arms=[parse_arm(a) for a in arm_items], baseline=not args.no_baseline,
                       **common)
    if result.get("submitted"):
        then = (" (--study stages: once stage 1 has finished, run the same command without "
                "--no-wait, or with it, to start stage 2)" if spec.get("stages") else "")
        print(f"Jobs submitted; logs under {Path(result['out']) / 'jobs'}. Collect the "
              f"results with:\n  {collect_command(args)}{then}")
        return 0
    print(Path(result["out"], "sweep.md").read_text())
    require_finished(result)
    return 0
