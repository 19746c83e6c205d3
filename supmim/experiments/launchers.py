"""Where ``supmim sweep`` runs its arm-seeds: :class:`LocalLauncher` (this machine, one after
another or ``--parallel N`` processes) or :class:`SubmititLauncher` (one cluster job per
arm-seed through submitit; the ``cluster`` extra).

A submitit job runs the same training as the local launcher (``--resume auto``: a run with a
checkpoint continues from it). :class:`ArmJob` is checkpointable, so a job pre-empted or at its
time limit (submitit's SIGUSR2) is requeued and continues from the run's last checkpoint. The
cluster settings (:mod:`supmim.experiments.cluster`) come from ``--slurm-*`` flags over a
``--launcher-config`` YAML file and are checked before anything is submitted; job logs go to
``SWEEP/jobs/<job id>/``, and the job of each arm-seed is recorded in ``SWEEP/jobs.json`` for
``--report-only``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supmim.errors import ConfigError, SupmimError
from supmim.experiments.cluster import (ClusterSettings, cluster_settings, flag_name,
                                        load_launcher_config, make_executor)

if TYPE_CHECKING:
    from supmim.config import RunConfig

try:  # the cluster extra; the local launcher needs none of it
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - exercised where submitit is not installed
    _Checkpointable = object  # type: ignore[misc,assignment]

Row = dict[str, Any]
Results = dict[tuple[str, int], "Row | None"]
JOBS_FILE = "jobs.json"
REQUEUE_LOCK_WAIT = 120.0  # seconds a requeued job waits for its predecessor to let go


@dataclass(frozen=True)
class ArmSeed:
    """One unit of a sweep: an arm's config for one seed and its run directory."""

    arm: str
    seed: int
    cfg: RunConfig
    run_dir: Path

    @property
    def key(self) -> tuple[str, int]:
        return (self.arm, self.seed)


def run_arm_seed(run_cfg: RunConfig, run_dir: Path, knn: bool, progress: bool,
                 report_only: bool = False) -> Row | None:
    """Train (or reuse / resume) one arm-seed and measure it: the per-seed row of the table.
    None when another process is training it; ``report_only``: train nothing, None for a
    run that has not finished, and kNN only where it was already measured."""
    if report_only:
        if not (run_dir / "summary.json").is_file():
            return None
        knn = knn and (run_dir / "knn.json").is_file()
    from supmim.experiments.compare import run_arm
    from supmim.experiments.verdict import knn_top1
    from supmim.run.lock import RunLocked
    try:
        summary = run_arm(run_cfg, run_dir, progress)
    except RunLocked as err:  # another copy of the sweep is training this arm: skip it
        print(f"[sweep] skipped: {err}", flush=True)
        return None
    return {"seed": run_cfg.train.seed, "run": str(run_dir),
            "test_top1": summary.get("test", {}).get("top1"),
            "knn_top1": knn_top1(run_dir) if knn else None,
            "train_seconds": summary["train_seconds"]}


def collect(jobs: list[ArmSeed], knn: bool) -> Results:
    """The rows of the finished arm-seeds, None for the others; trains nothing."""
    return {j.key: run_arm_seed(j.cfg, j.run_dir, knn, False, report_only=True) for j in jobs}


def run_state(run_dir: Path) -> str:
    """What an unfinished arm-seed's directory says about it, in words."""
    if (run_dir / "summary.json").is_file():
        return "finished"
    if not (run_dir / "metrics.jsonl").is_file():
        return "not started"
    from supmim.run.checkpoint import latest_checkpoint
    from supmim.run.lock import RunLock, RunLocked
    try:
        with RunLock(run_dir):
            pass
    except RunLocked:
        return "running"
    last = latest_checkpoint(run_dir)
    if last is None:
        return "stopped before its first checkpoint"
    step = json.loads((last / "meta.json").read_text()).get("step", "?")
    return f"stopped at step {step} (checkpoint {last.name}); resumes from there"


class Launcher(ABC):
    """Runs a sweep's arm-seeds and says how each ended."""

    @abstractmethod
    def launch(self, jobs: list[ArmSeed], *, knn: bool, progress: bool) -> Results | None:
        """Run every job: its row by (arm, seed), None where it did not finish; None for
        the whole when the jobs were submitted without waiting for them."""


@dataclass
class LocalLauncher(Launcher):
    """This machine: one arm-seed after another, or ``parallel`` at a time in spawned
    processes (each its own CUDA context); a failed arm-seed re-raises its error."""

    parallel: int = 1

    def launch(self, jobs: list[ArmSeed], *, knn: bool, progress: bool) -> Results:
        if self.parallel <= 1:
            out: Results = {}
            for j in jobs:
                if progress:
                    print(f"[sweep] {j.arm}, seed {j.seed} -> {j.run_dir}", flush=True)
                out[j.key] = run_arm_seed(j.cfg, j.run_dir, knn, progress)
            return out
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.parallel, mp_context=ctx) as pool:
            futures = {j.key: pool.submit(run_arm_seed, j.cfg, j.run_dir, knn, False)
                       for j in jobs}
            out = {}
            for key, fut in futures.items():
                out[key] = row = fut.result()
                if progress and row is not None:
                    print(f"[sweep] done {key[0]}, seed {key[1]}: test top-1 "
                          f"{row['test_top1']}", flush=True)
            return out


@dataclass
class ArmJob(_Checkpointable):
    """One submitit job: train (or resume) one arm-seed and measure it. ``checkpoint()``
    (called by submitit on pre-emption or at the time limit) resubmits the same arm-seed;
    the requeued job continues from the run directory's last checkpoint."""

    cfg: RunConfig
    run_dir: str
    knn: bool = True
    attempt: int = 0  # 0: first submission; n: the n-th requeue

    def __call__(self) -> Row | None:
        run_dir = Path(self.run_dir)
        if self.attempt:
            print(f"[sweep] requeued (attempt {self.attempt + 1}): {run_dir} continues from "
                  "its last checkpoint", flush=True)
            self._await_predecessor(run_dir)
        return run_arm_seed(self.cfg, run_dir, self.knn, progress=False)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """The resubmission: this arm-seed again, one attempt later (a DelayedSubmission)."""
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(dataclasses.replace(self, attempt=self.attempt + 1))

    def _await_predecessor(self, run_dir: Path) -> None:
        """A requeued job may start while the pre-empted one still exits: wait for its lock."""
        from supmim.run.lock import RunLock, RunLocked
        if not run_dir.is_dir():
            return
        try:
            with RunLock(run_dir, wait=max(self.cfg.train.lock_wait, REQUEUE_LOCK_WAIT)):
                pass
        except RunLocked:
            pass  # run_arm_seed reports it and skips


# ---------------------------------------------------------------- the submitit launcher

@dataclass
class SubmititLauncher(Launcher):
    """One submitit job per unfinished arm-seed (a SLURM job array), logs under
    ``sweep_dir/jobs``; waits for them (printing progress) unless ``wait`` is False."""

    settings: ClusterSettings
    sweep_dir: Path
    wait: bool = True
    poll_s: float = 10.0
    failures: list[str] = field(default_factory=list, init=False)  # of the last launch

    def check(self) -> Any:
        """Build the executor (validating every setting) without submitting anything."""
        return make_executor(self.settings, self.sweep_dir / "jobs",
                             f"supmim-sweep-{self.sweep_dir.resolve().name}")

    def launch(self, jobs: list[ArmSeed], *, knn: bool, progress: bool) -> Results | None:
        executor = self.check()
        states = {j.key: run_state(j.run_dir) for j in jobs}
        todo = [j for j in jobs if states[j.key] not in ("finished", "running")]
        for j in (j for j in jobs if states[j.key] == "running"):
            print(f"[sweep] {j.arm}, seed {j.seed}: already running elsewhere; not "
                  "submitted", flush=True)
        submitted: list[tuple[ArmSeed, Any]] = []
        self.failures = []
        if todo:
            with executor.batch():
                handles = [executor.submit(ArmJob(j.cfg, str(j.run_dir.resolve()), knn))
                           for j in todo]
            submitted = list(zip(todo, handles))
            record_jobs(self.sweep_dir, submitted)
            print(f"[sweep] submitted {len(submitted)} job(s) to {self.settings.cluster} "
                  f"(job {submitted[0][1].job_id}...); logs under "
                  f"{self.sweep_dir / 'jobs'}", flush=True)
        if not submitted:  # nothing to run or wait for
            return collect(jobs, knn)
        if not self.wait:
            return None
        self.failures = self._wait(submitted, progress)
        return collect(jobs, knn)

    def _wait(self, submitted: list[tuple[ArmSeed, Any]], progress: bool) -> list[str]:
        """Poll until every job ended; a line whenever the counts change. Returns a line
        per failed job."""
        pending = dict(enumerate(submitted))
        failed: list[str] = []
        last = ""
        try:
            while pending:
                for i, (j, job) in list(pending.items()):
                    if _finished(job):
                        del pending[i]
                        error = _failure(job)
                        if error:
                            failed.append(f"{j.arm}, seed {j.seed} (job {job.job_id}): "
                                          f"{error}; log {job.paths.stderr}")
                            print(f"[sweep] failed: {failed[-1]}", flush=True)
                        elif progress:
                            print(f"[sweep] done {j.arm}, seed {j.seed} (job {job.job_id})",
                                  flush=True)
                running = sum(_state(job) == "RUNNING" for _, job in pending.values())
                line = (f"[sweep] jobs: {len(submitted) - len(pending)}/{len(submitted)} "
                        f"ended ({len(failed)} failed), {running} running, "
                        f"{len(pending) - running} queued")
                if progress and line != last:
                    print(line, flush=True)
                    last = line
                if pending:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            print("[sweep] stopped waiting; the jobs go on. Collect the results later with "
                  "the same command and --report-only", flush=True)
            raise
        return failed


def _finished(job: Any) -> bool:
    try:
        return bool(job.done())
    except Exception:  # the debug executor runs the job in done() and re-raises its error
        return True


def _state(job: Any) -> str:
    try:
        return str(job.state).upper()
    except Exception:
        return "UNKNOWN"


def _failure(job: Any) -> str | None:
    """The last line of a finished job's error, or None when it succeeded."""
    try:
        err = job.exception()
    except Exception as exc:  # e.g. the job never wrote its result
        err = exc
    if err is None:
        return None
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def record_jobs(sweep_dir: Path, submitted: list[tuple[ArmSeed, Any]]) -> None:
    """Add the submitted jobs to ``sweep_dir/jobs.json`` (arm-seed -> job id and logs)."""
    from supmim.files import write_json
    path = sweep_dir / JOBS_FILE
    known = json.loads(path.read_text()) if path.is_file() else {}
    for j, job in submitted:
        known[f"{j.arm}/seed{j.seed}"] = {"job_id": str(job.job_id),
                                          "run": str(j.run_dir.resolve()),
                                          "stdout": str(job.paths.stdout),
                                          "stderr": str(job.paths.stderr)}
    write_json(path, known)


def recorded_jobs(sweep_dir: Path) -> dict[str, dict[str, str]]:
    """What :func:`record_jobs` wrote ({} for a sweep launched locally)."""
    path = sweep_dir / JOBS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


# ---------------------------------------------------------------- command line

def launcher_from_args(args: argparse.Namespace, sweep_dir: Path) -> Launcher:
    """The launcher the flags ask for, its settings validated (nothing submitted)."""
    flags = {f.name: getattr(args, f"slurm_{f.name}", None)
             for f in dataclasses.fields(ClusterSettings)}
    flags["cluster"] = args.submitit_cluster
    if args.launcher == "local":
        given = [flag_name(k) for k, v in flags.items() if v is not None]
        given += ["--launcher-config"] * bool(args.launcher_config) + ["--no-wait"] * args.no_wait
        if given:
            raise ConfigError(f"{given[0]} is for --launcher submitit; add --launcher "
                              f"submitit, or drop {given[0]}")
        return LocalLauncher(args.parallel)
    if args.parallel != 1:
        raise ConfigError("--parallel is for --launcher local; with submitit the jobs run "
                          "side by side (at most --slurm-array-parallelism N at once)")
    file_values = load_launcher_config(args.launcher_config) if args.launcher_config else {}
    settings = cluster_settings(file_values, flags)
    launcher = SubmititLauncher(settings, sweep_dir, wait=not args.no_wait,
                                poll_s=10.0 if settings.cluster == "slurm" else 0.5)
    launcher.check()
    return launcher


def require_finished(result: dict[str, Any] | None) -> None:
    """After a waited-for submitit sweep: exit 2 when jobs failed (the report is written)."""
    failures = (result or {}).get("failed_jobs") or []
    if failures:
        raise SupmimError(f"{len(failures)} job(s) failed (first: {failures[0]}); fix it and "
                          "re-run the same command: finished arm-seeds are reused")
