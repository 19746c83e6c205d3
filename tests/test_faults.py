"""The fault matrix: every way a checkpoint or run directory can be damaged, and what supmim
does about it (README, "Checkpoints you can trust"). Each broken run resumes from the newest
intact checkpoint and ends with exactly the weights of an undisturbed run."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _fixtures import make_image_folder, run_until_sigkill
from supmim.cli import main
from supmim.config import build_config
from supmim.errors import CheckpointError, TrainingError
from supmim.export import export_run
from supmim.run import RunDir
from supmim.run import rundir as rundir_mod
from supmim.run.checkpoint import check_run, list_checkpoints
from supmim.run.lock import RunLock, RunLocked
from supmim.training import train

ROOT = Path(__file__).resolve().parents[1]
# 3 epochs x 9 steps (72 images), EMA on (so ema.safetensors exists), one checkpoint per epoch, 2 kept
# train.threads=1: the reference, the killed copy (a subprocess) and the resumed run all use one
# thread, whatever the test process has; CPU reductions split by thread count differ in the last bit
OVERRIDES = ["train.epochs=3", "data.batch_size=8", "train.ema=true", "train.checkpoint_every=0",
             "data.num_workers=0", "train.threads=1"]


def _cfg(data: Path, *extra: str):
    return build_config(preset="tiny-test", extra={"data.data": str(data), "mim.target": "pixel",
                                                   "data.val_fraction": 0.0},
                        overrides=[*OVERRIDES, *extra])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(RunDir(run).checkpoint("last") / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An undisturbed 3-epoch run, and the data it used."""
    root = tmp_path_factory.mktemp("faults")
    data = make_image_folder(root / "data")
    train(_cfg(data), root / "ref", progress=False)
    return data, root / "ref", _weights(root / "ref")


def _two_epochs(tmp_path: Path, data: Path) -> Path:
    """The reference recipe stopped after epoch 2 (epoch_0001 and epoch_0002 on disk; the
    schedule is still the 3-epoch one)."""
    train(_cfg(data, "train.max_steps=18"), tmp_path / "run", progress=False)
    return tmp_path / "run"


def _resume(run: Path, capsys) -> str:
    assert main(["train", "--out", str(run), "--resume", "auto", "--set", "train.max_steps=0",
                 "--quiet"]) == 0
    return capsys.readouterr().err


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_file_is_recorded_with_its_size_and_digest(reference):
    _, ref, _ = reference
    folder = RunDir(ref).checkpoint("last")
    files = json.loads((folder / "meta.json").read_text())["files"]
    assert set(files) == {"model.safetensors", "ema.safetensors", "state.pt"}
    assert all(files[f]["size"] == (folder / f).stat().st_size for f in files)
    assert all(len(files[f]["xxh3_128"]) == 32 for f in files)
    assert {r["status"] for r in check_run(ref)} == {"ok"}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) * 2 // 3] ^= 0x01  # deep inside the tensor data: the header still parses
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "state.pt"])
@pytest.mark.parametrize("fault", [_truncate, _flip], ids=["truncated", "flipped-byte"])
def test_a_damaged_file_is_found_refused_and_resume_falls_back(tmp_path, reference, capsys,
                                                                name, fault):
    data, _, want = reference
    run = _two_epochs(tmp_path, data)
    fault(run / "checkpoints" / "epoch_0002" / name)
    # check: the table names the broken file; exit 1
    assert main(["check", str(run)]) == 1
    out = capsys.readouterr().out
    assert "epoch_0002" in out and "broken" in out and name in out
    # export and evaluation refuse it and name the intact one
    with pytest.raises(CheckpointError, match=f"epoch_0002.*{name}.*Intact checkpoints: "
                                              "epoch_0001"):
        export_run(run, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    # resume warns, falls back to epoch 1, sets the broken one aside, and ends exact
    err = _resume(run, capsys)
    assert "epoch_0002" in err and "is broken" in err and "9 steps will be redone" in err
    assert (run / "checkpoints" / "broken_epoch_0002" / name).is_file()  # kept for a look
    assert _same(_weights(run), want)


@pytest.mark.parametrize("damage", ["missing", "malformed"])
def test_missing_or_malformed_meta_falls_back(tmp_path, reference, capsys, damage):
    data, _, want = reference
    run = _two_epochs(tmp_path, data)
    meta = run / "checkpoints" / "epoch_0002" / "meta.json"
    if damage == "missing":
        meta.unlink()
    else:
        meta.write_text('{"epoch": 2, "step": 18, "files": {')  # cut short
    err = _resume(run, capsys)
    assert "epoch_0002" in err and "meta.json" in err
    assert _same(_weights(run), want)


def test_no_intact_checkpoint_stops_and_changes_nothing(tmp_path, reference, capsys):
    data, _, _ = reference
    run = _two_epochs(tmp_path, data)
    for folder in list_checkpoints(run):
        _flip(folder / "model.safetensors")
    log = (run / "metrics.jsonl").read_text()
    assert main(["train", "--out", str(run), "--resume", "auto", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "Traceback" not in err
    assert (run / "metrics.jsonl").read_text() == log  # never started over silently


def test_checkpoints_from_before_digests_load_with_a_note(tmp_path, reference, capsys):
    data, _, _ = reference
    run = _two_epochs(tmp_path, data)
    for meta_path in run.glob("checkpoints/*/meta.json"):
        meta = json.loads(meta_path.read_text())
        del meta["files"]
        meta_path.write_text(json.dumps(meta))
    export_run(run, tmp_path / "export")
    assert "loaded unverified" in capsys.readouterr().err
    assert {r["status"] for r in check_run(run)} == {"unverified"}


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from supmim.run import checkpoint as ck
    from test_faults import _cfg
    from supmim.training import train
    calls, real = [0], ck._fsync
    def fsync(path):  # count the fsyncs of the epoch_0002 write only (not best/)
        real(path)
        p = str(path)
        if ".epoch_0002.tmp" in p:  # its three files (model, ema, state), then meta.json
            calls[0] += 1
        elif calls[0] == 4 and os.path.isdir(os.path.join(p, "epoch_0002")):
            calls[0] += 1  # the checkpoints folder, right after the rename
        if calls[0] == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)
    ck._fsync = fsync
    train(_cfg({data!r}), {run!r}, progress=False)
""")


# the fsyncs of epoch 2's checkpoint: model, ema, state, meta.json, then the checkpoints
# folder after the rename
@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5],
                         ids=["after-model", "after-ema", "after-state", "after-meta",
                              "after-rename"])
def test_sigkill_during_a_checkpoint_write_then_resume_is_exact(tmp_path, reference, capsys,
                                                                kill_at):
    data, _, want = reference
    run = tmp_path / "run"
    script = KILLER.format(tests=str(ROOT / "tests"), kill_at=kill_at, data=str(data),
                           run=str(run))
    run_until_sigkill(script, ROOT)
    steps = [int(json.loads((p / "meta.json").read_text())["step"])
             for p in list_checkpoints(run)]
    assert steps == ([9, 18] if kill_at == 5 else [9])  # the rename is the commit point
    _resume(run, capsys)
    assert _same(_weights(run), want)
    assert not list((run / "checkpoints").glob(".*"))  # the half-written folder is gone


def test_disk_full_on_metrics_stops_cleanly_and_resumes(tmp_path, reference, capsys,
                                                         monkeypatch):
    data, _, want = reference
    real_open, first = open, tmp_path / "run" / "checkpoints" / "epoch_0001"

    def full_disk(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.jsonl") and "a" in mode and first.exists():
            raise OSError(errno.ENOSPC, "No space left on device")  # after the 1st checkpoint
        return real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr(rundir_mod, "open", full_disk, raising=False)
    with pytest.raises(TrainingError, match="could not append.*No space left.*is intact"):
        train(_cfg(data), tmp_path / "run", progress=False)
    monkeypatch.undo()
    _resume(tmp_path / "run", capsys)
    assert _same(_weights(tmp_path / "run"), want)


def test_disk_full_on_the_summary_stops_cleanly_and_resume_writes_it(tmp_path, reference,
                                                                     capsys, monkeypatch):
    data, ref, want = reference
    real = rundir_mod.write_json

    def full_disk(path, obj, **kwargs):
        if Path(path).name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, obj, **kwargs)
    monkeypatch.setattr(rundir_mod, "write_json", full_disk)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="could not write .*summary.json.*No space left.*"
                                            "epoch_0003' is intact"):
        train(_cfg(data), run, progress=False)
    monkeypatch.undo()
    assert not (run / "summary.json").exists()
    _resume(run, capsys)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"] == json.loads((ref / "summary.json").read_text())["test"]
    assert _same(_weights(run), want)


def test_disk_full_during_an_export_leaves_nothing_half_written(tmp_path, reference,
                                                                monkeypatch):
    _, ref, _ = reference
    import supmim.export as export_mod
    real = export_mod.save_for_hf

    def full_disk(model, folder, **kwargs):
        real(model, folder, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(export_mod, "save_for_hf", full_disk)
    with pytest.raises(CheckpointError, match="could not write the export.*Nothing was changed"):
        export_run(ref, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    assert not list(tmp_path.glob(".export*"))


def test_disk_full_on_an_evaluation_json_keeps_the_old_file(tmp_path, monkeypatch):
    from supmim.evaluation.common import EvaluationError, write_json
    target = tmp_path / "eval.json"
    write_json(target, {"old": 1})

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(EvaluationError, match="No space left"):
        write_json(target, {"new": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


WORKER_KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import torch.utils.data
    from supmim.data import datasets
    from test_faults import _cfg
    from supmim.cli import main
    real = datasets.ImageDataset.__getitem__
    def getitem(self, i):
        marker = Path({marker!r})
        if torch.utils.data.get_worker_info() is not None and not marker.exists() \\
                and os.environ.get("ARMED"):
            marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, i)
    datasets.ImageDataset.__getitem__ = getitem
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_killed_data_loader_worker_stops_cleanly_and_resumes(tmp_path, reference):
    data, _, _ = reference
    run = tmp_path / "run"
    script = WORKER_KILLER.format(tests=str(ROOT / "tests"), marker=str(tmp_path / "killed"))
    args = ["train", "--preset", "tiny-test", "--data", str(data), "--out", str(run),
            "--target", "pixel", "--quiet", "--epochs", "3", "--set", "data.batch_size=8",
            "--set", "data.val_fraction=0", "--set", "train.checkpoint_every=0",
            "--set", "data.num_workers=1", "--set", "data.loader=workers"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True,
                           text=True, env={**env, "ARMED": "1"})
    assert first.returncode == 2, first.stderr[-2000:]
    assert "a data-loader worker died" in first.stderr and "Traceback" not in first.stderr
    again = subprocess.run([sys.executable, "-c", script, *args, "--resume", "auto"], cwd=ROOT,
                           capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert RunDir(run).info().epoch == 3


def test_a_second_writer_is_refused_with_the_holders_name(tmp_path, reference, capsys):
    data, _, _ = reference
    with RunLock(tmp_path / "run"):
        code = main(["train", "--preset", "tiny-test", "--data", str(data), "--out",
                     str(tmp_path / "run"), "--target", "pixel", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"in use by process {os.getpid()}" in err and "train.lock_wait" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_requeued_job_waits_for_the_lock(tmp_path, reference, capsys):
    data, _, want = reference
    run = _two_epochs(tmp_path, data)
    lock = RunLock(run)
    lock.acquire()
    threading.Timer(1.0, lock.release).start()  # the old copy exits a second later
    start = time.monotonic()
    assert main(["train", "--out", str(run), "--resume", "auto", "--set", "train.max_steps=0",
                 "--quiet", "--set", "train.lock_wait=30"]) == 0
    assert time.monotonic() - start >= 1.0
    assert _same(_weights(run), want)


def test_a_refusal_waits_for_a_holder_that_has_not_recorded_itself_yet(tmp_path):
    # The holder has the flock but has not written its record (the race of two copies started
    # together); the refused copy names it once the record appears.
    path = tmp_path / "run" / RunLock.NAME
    path.parent.mkdir()
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    record = json.dumps({"pid": 4242, "host": "h", "started": "now"})
    threading.Timer(0.3, path.write_text, args=(record,)).start()
    try:
        with pytest.raises(RunLocked, match="in use by process 4242 on h"):
            RunLock(tmp_path / "run").acquire()
    finally:
        os.close(fd)


@pytest.mark.slow
def test_two_writers_started_together_one_runs_one_is_refused(tmp_path, reference):
    data, _, _ = reference
    cmd = [sys.executable, "-m", "supmim.cli", "train", "--preset", "tiny-test", "--data",
           str(data), "--out", str(tmp_path / "run"), "--target", "pixel", "--quiet",
           "--epochs", "2", "--set", "data.batch_size=8", "--set", "data.val_fraction=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refusal = next(err for code, err in results if code == 2)
    # The holder is named once it has recorded itself (the refused copy waits a second for that)
    assert "is in use by" in refusal and "use another --out" in refusal, refusal
    epochs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["type"] == "epoch"] == [1, 2]


def test_a_second_copy_of_a_sweep_skips_an_arm_in_progress(tmp_path, reference, capsys):
    from supmim.experiments.sweep import _run_job
    data, _, _ = reference
    arm = tmp_path / "sweep" / "baseline_seed0"
    with RunLock(arm):  # the first copy is training this arm
        assert _run_job(_cfg(data, "mim.enabled=false"), arm, knn=False, progress=False) is None
    assert "skipped" in capsys.readouterr().out and not (arm / "metrics.jsonl").exists()
