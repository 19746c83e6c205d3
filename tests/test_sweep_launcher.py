"""`supmim sweep --launcher submitit`: each arm-seed one submitit job (run for real with
submitit's local and debug executors), the SLURM settings checked before anything is
submitted and found in the sbatch script, requeue resuming from the run's checkpoint, and
`--report-only` listing what has not finished."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

submitit = pytest.importorskip("submitit")

from _fixtures import make_image_folder  # noqa: E402
from supmim.cli import build_parser, main  # noqa: E402
from supmim.config import build_config  # noqa: E402
from supmim.errors import ConfigError, Interrupted  # noqa: E402
from supmim.experiments import launchers  # noqa: E402
from supmim.experiments import cluster  # noqa: E402
from supmim.experiments.cluster import parse_time  # noqa: E402
from supmim.experiments.launchers import ArmJob, run_state  # noqa: E402
from supmim.run import RunDir  # noqa: E402

TINY = ["--preset", "tiny-test", "--target", "pixel", "--set", "data.batch_size=8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("launcher") / "data")


def _sweep(data: Path, out: Path, *extra: str, quiet: bool = True) -> list[str]:
    return ["sweep", "--data", str(data), *TINY, "--out", str(out),
            "--grid", "mim.mask_ratio=0.5", *(["--quiet"] * quiet), *extra]


def test_local_executor_runs_one_job_per_arm_seed_and_reports(data, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(_sweep(data, out, "--launcher", "submitit", "--submitit-cluster", "local",
                       "--slurm-gpus", "0", "--slurm-time", "10", quiet=False)) == 0
    said = capsys.readouterr().out
    assert "submitted 2 job(s) to local" in said and "2/2 ended (0 failed)" in said
    result = json.loads((out / "sweep.json").read_text())
    assert [r["arm"] for r in result["arms"]] == ["baseline", "mim.mask_ratio=0.5"]
    assert all(0 <= r["test_top1"]["mean"] <= 100 and 0 <= r["knn_top1"]["mean"] <= 100
               for r in result["arms"]) and result["missing"] == []
    jobs = json.loads((out / "jobs.json").read_text())
    assert set(jobs) == {"baseline/seed0", "mim.mask_ratio=0.5/seed0"}
    for job in jobs.values():  # each its own job, logging under the sweep folder
        assert Path(job["stdout"]).is_file() and Path(job["stdout"]).parent.parent == out / "jobs"
        assert (Path(job["run"]) / "summary.json").is_file()
    # --report-only submits nothing and lists the arm-seeds that have not run
    assert main([*_sweep(data, out, "--seeds", "0", "1"), "--report-only"]) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert [(m["arm"], m["seed"], m["state"]) for m in report["missing"]] == [
        ("baseline", 1, "not started"), ("mim.mask_ratio=0.5", 1, "not started")]
    assert "Not finished: 2 of 4 arm-seeds" in (out / "sweep.md").read_text()
    assert set(json.loads((out / "jobs.json").read_text())) == set(jobs)


def test_no_wait_prints_how_to_collect_and_report_only_names_the_jobs(data, tmp_path, capsys):
    out = tmp_path / "sw"
    # the debug executor runs a job only when asked for its result: submitted, never run
    args = _sweep(data, out, "--launcher", "submitit", "--submitit-cluster", "debug",
                  "--no-wait")
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "--report-only" in said and "--no-wait" not in said.split("with:")[1]
    assert not (out / "sweep.json").exists()
    assert main([*args[:-1], "--report-only"]) == 0
    missing = json.loads((out / "sweep.json").read_text())["missing"]
    jobs = json.loads((out / "jobs.json").read_text())
    assert [m["job"] for m in missing] == [jobs["baseline/seed0"]["job_id"],
                                            jobs["mim.mask_ratio=0.5/seed0"]["job_id"]]
    assert all(m["state"] == "not started" and m["log"].endswith("_log.err") for m in missing)
    assert "| baseline | 0 | not started |" in (out / "sweep.md").read_text()


def test_a_failed_job_is_reported_and_the_command_exits_2(data, tmp_path, monkeypatch,
                                                          capsys):
    def broken(run_cfg, run_dir, knn, progress, report_only=False):
        if not report_only and not run_cfg.mim.enabled:
            raise RuntimeError("CUDA out of memory")
        return real(run_cfg, run_dir, knn, progress, report_only)
    real = launchers.run_arm_seed
    monkeypatch.setattr(launchers, "run_arm_seed", broken)
    out = tmp_path / "sw"
    assert main(_sweep(data, out, "--no-knn", "--launcher", "submitit",
                       "--submitit-cluster", "debug")) == 2
    captured = capsys.readouterr()
    assert "CUDA out of memory" in captured.err and "1 job(s) failed" in captured.err
    result = json.loads((out / "sweep.json").read_text())  # the report is written anyway
    assert [m["arm"] for m in result["missing"]] == ["baseline"]
    assert "test_top1" in result["arms"][1]


def _args(*extra: str):
    return build_parser().parse_args(["sweep", "--data", "d", "--out", "o", *extra])


def test_yaml_and_flags_end_up_in_the_sbatch_script(tmp_path, monkeypatch):
    config = tmp_path / "cluster.yaml"
    config.write_text("partition: gpu\ntime: '1-02:00:00'\ngpus: 2\ncpus: 10\nmem: 64G\n"
                      "account: proj42\narray-parallelism: 3\nsetup: ['module load cuda']\n")
    with pytest.raises(ConfigError, match="no srun on PATH"):  # no SLURM on this machine
        launchers.launcher_from_args(_args("--launcher", "submitit", "--launcher-config",
                                           str(config)), tmp_path / "sw")
    monkeypatch.setattr(cluster.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    launcher = launchers.launcher_from_args(
        _args("--launcher", "submitit", "--launcher-config", str(config),
              "--slurm-partition", "a100", "--slurm-qos", "high"), tmp_path / "sw")
    executor = launcher.check()
    params = executor._executor.parameters
    assert params["partition"] == "a100" and params["qos"] == "high"  # flags over the file
    assert params["time"] == 26 * 60 and params["gpus_per_node"] == 2
    assert params["cpus_per_task"] == 10 and params["mem"] == "64G"
    assert params["account"] == "proj42" and params["array_parallelism"] == 3
    assert executor._executor.max_num_timeout == 5
    script = executor._executor._make_submission_file_text("true", "1")
    for line in ("--partition=a100", "--time=1560", "--gpus-per-node=2", "--cpus-per-task=10",
                 "--mem=64G", "--account=proj42", "--qos=high", "--requeue", "--signal=USR2@"):
        assert f"#SBATCH {line}" in script
    assert "module load cuda" in script and str(tmp_path / "sw" / "jobs") in script


@pytest.mark.parametrize("flags, message", [
    (["--slurm-time", "soon"], "--slurm-time 90"),
    (["--slurm-gpus", "-1"], "--slurm-gpus '-1' must be a whole number >= 0"),
    (["--slurm-mem", "lots"], "like 32G"),
    (["--slurm-partition", "two words"], "one word"),
    (["--submitit-cluster", "k8s"], "choose one of slurm, local, debug"),
])
def test_bad_settings_stop_before_anything_is_submitted(data, tmp_path, capsys, flags,
                                                        message):
    out = tmp_path / "sw"
    assert main(_sweep(data, out, "--launcher", "submitit", *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_launcher_flags_need_the_submitit_launcher(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: gpu\nnodes: 4\n")
    with pytest.raises(ConfigError, match="unknown launcher setting 'nodes'"):
        launchers.launcher_from_args(_args("--launcher", "submitit", "--submitit-cluster",
                                           "local", "--launcher-config", str(bad)), tmp_path)
    with pytest.raises(ConfigError, match="--slurm-partition is for --launcher submitit"):
        launchers.launcher_from_args(_args("--slurm-partition", "gpu"), tmp_path)
    with pytest.raises(ConfigError, match="--parallel is for --launcher local"):
        launchers.launcher_from_args(_args("--launcher", "submitit", "--parallel", "2"),
                                     tmp_path)


def test_parse_time_reads_slurm_formats():
    assert [parse_time(t) for t in ("90", "5:30", "4:00:00", "1-0", "1-2:30", "0:00:01")] == \
        [90, 6, 240, 1440, 1590, 1]
    with pytest.raises(ConfigError):
        parse_time("0")


def _cfg(data: Path):
    # 3 epochs x 9 steps (72 images), one checkpoint per epoch
    return build_config(preset="tiny-test",
                        extra={"data.data": str(data), "mim.target": "pixel",
                               "data.val_fraction": 0.0},
                        overrides=["train.epochs=3", "data.batch_size=8",
                                   "train.checkpoint_every=0", "data.num_workers=0"])


def test_checkpoint_resubmits_the_same_arm_seed(tmp_path):
    job = ArmJob(_cfg(tmp_path), str(tmp_path / "run"), knn=False)
    again = job.checkpoint()
    assert isinstance(job, submitit.helpers.Checkpointable)
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert isinstance(again.function, ArmJob) and again.function.attempt == 1
    assert again.function.cfg == job.cfg and again.function.run_dir == job.run_dir
    again.dump(tmp_path / "job.pkl")  # what submitit writes for the requeued job
    loaded = submitit.helpers.DelayedSubmission.load(tmp_path / "job.pkl")
    assert loaded.function.run_dir == job.run_dir and loaded.function.attempt == 1


def test_a_job_stopped_mid_run_and_requeued_ends_like_an_uninterrupted_one(data, tmp_path):
    cfg = _cfg(data)
    ArmJob(cfg, str(tmp_path / "ref"), knn=False)()
    run = tmp_path / "run"
    job = ArmJob(cfg, str(run), knn=False)

    def preempt() -> None:  # SIGTERM (pre-emption) once the first epoch is checkpointed
        while not RunDir(run).checkpoints():
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)
    watcher = threading.Thread(target=preempt, daemon=True)
    watcher.start()
    with pytest.raises(Interrupted):
        job()
    watcher.join()
    assert not (run / "summary.json").exists() and "resumes from there" in run_state(run)
    stopped_at = json.loads((RunDir(run).latest() / "meta.json").read_text())["step"]
    assert 9 <= stopped_at < 27
    requeued = job.checkpoint().function
    row = requeued()  # what the requeued job runs
    assert row is not None and row["seed"] == cfg.train.seed
    assert json.loads((run / "summary.json").read_text())["steps"] == 27
    want = load_file(str(RunDir(tmp_path / "ref").checkpoint("last") / "model.safetensors"))
    got = load_file(str(RunDir(run).checkpoint("last") / "model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
