"""Experiment loggers (train.logger): each backend gets what metrics.jsonl gets, read back
from its own files: TensorBoard's event files, W&B's offline run log, MLflow's SQLite store.

One tiny run logs to all three: 3 epochs of 3 steps, stopped after step 6, its second
checkpoint removed (so steps 4-6 were logged after the newest checkpoint, as after a crash)
and resumed to the end from step 3."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _fixtures import make_image_folder
from supmim.cli import main
from supmim.config import build_config
from supmim.errors import ConfigError
from supmim.loggers import LoggerSet, base, logger_names, scalars
from supmim.training import train

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")
# MLflow 3.18 still asks SQLAlchemy 2 for its deprecated "noload" loader: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")

ROOT = Path(__file__).resolve().parents[1]
# 24 training images, batch 8: 3 steps per epoch; a checkpoint per epoch, both kept
OVERRIDES = ["train.epochs=3", "data.batch_size=8", "train.checkpoint_every=0",
             "data.num_workers=0", "train.keep_checkpoints=3",
             "train.logger=tensorboard,wandb,mlflow"]
RESUMED_AT = 3
# where W&B keeps its own settings, cache and data: kept in the test's folder, not in $HOME
WANDB_DIRS = ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
LR = build_config(preset="tiny-test").train.lr


def _cfg(data: Path, *extra: str):
    return build_config(preset="tiny-test", extra={"data.data": str(data), "mim.target": "pixel",
                                                   "data.val_fraction": 0.0},
                        overrides=[*OVERRIDES, *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The resumed run's directory, with what its first attempt left in ``first``."""
    root = tmp_path_factory.mktemp("loggers")
    data = make_image_folder(root / "data", train_per_class=8, test_per_class=4)
    out = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI",
                     "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(name, raising=False)
        for name in WANDB_DIRS:
            mp.setenv(name, str(root / name.lower()))
        train(_cfg(data, "train.max_steps=6"), out, progress=False)
        first = json.loads((out / "loggers.json").read_text())
        shutil.rmtree(out / "checkpoints" / "epoch_0002")  # newest is now step 3
        train(_cfg(data), out, resume="auto", progress=False)
    return out, first


def _records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    final = json.loads((out / "summary.json").read_text())
    steps = final["steps"]
    return [json.loads(line) for line in lines] + [
        {"type": "final", "step": steps, **{f"test_{k}": v for k, v in final["test"].items()}}]


def _expected(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as the loggers should hold them."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for tag, value in scalars(record).items():
            out.setdefault(tag, []).append((record["step"], value))
    return out


def _grid(out: Path) -> np.ndarray:
    return np.asarray(Image.open(out / "mim_grid.png").convert("RGB"))


# ---------------------------------------------------------------- config and packages
def test_logger_names_parse_and_unknown_names_fail_in_validation(tmp_path):
    assert logger_names("none") == []
    assert logger_names("TensorBoard, wandb,tensorboard") == ["tensorboard", "wandb"]
    assert logger_names(["mlflow", "none"]) == ["mlflow"]
    with pytest.raises(ConfigError, match=r"unknown logger 'tensorbord'.*tensorboard, wandb, mlflow"):
        build_config(preset="tiny-test", overrides=["train.logger=tensorbord"])
    yaml_list = tmp_path / "c.yaml"
    yaml_list.write_text("train:\n  logger: [wandb, nope]\n")
    with pytest.raises(ConfigError, match="unknown logger 'nope'"):
        build_config(file=yaml_list)
    yaml_list.write_text("train:\n  logger: [wandb, mlflow]\n")
    assert logger_names(build_config(file=yaml_list).train.logger) == ["wandb", "mlflow"]


def test_a_missing_package_names_its_extra_before_any_work(tmp_path, monkeypatch, capsys):
    real = base.importlib.import_module

    def no_wandb(name: str, *args):
        if name == "wandb":
            raise ModuleNotFoundError("No module named 'wandb'")
        return real(name, *args)

    monkeypatch.setattr(base.importlib, "import_module", no_wandb)
    data = make_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    code = main(["train", "--preset", "tiny-test", "--data", str(data), "--target", "pixel",
                 "--out", str(tmp_path / "run"), "--set", "train.logger=tensorboard,wandb",
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "train.logger=wandb needs the 'wandb' package" in err
    assert "pip install 'supmim[wandb]'" in err
    assert not (tmp_path / "run").exists()  # checked before the run directory was made


def test_backends_are_imported_only_when_chosen():
    # (wandb itself may be there: timm imports it when it is installed)
    code = ("import sys; from supmim.cli import build_parser; from supmim.training import train\n"
            "from supmim.config import build_config; build_config(preset='tiny-test')\n"
            "print(sorted(m for m in sys.modules if m.startswith(('supmim.loggers.', 'mlflow',\n"
            "      'tensorboard', 'torch.utils.tensorboard')) and m != 'supmim.loggers.base'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class _Recorder(base.ExperimentLogger):
    def __init__(self, name: str, fail_on: str = "") -> None:
        self.name, self.fail_on, self.calls = name, fail_on, []

    def log_metrics(self, record, step):
        if self.fail_on == "log_metrics":
            raise OSError("disk full")
        self.calls.append(("metrics", step))

    def close(self, status="finished"):
        self.calls.append(("close", status))


def test_a_failing_logger_is_reported_once_and_switched_off(capsys):
    good, bad = _Recorder("good"), _Recorder("bad", fail_on="log_metrics")
    with pytest.raises(RuntimeError):
        with LoggerSet([bad, good]) as loggers:
            loggers.log_metrics({"type": "train", "step": 1, "loss": 1.0})
            loggers.log_metrics({"type": "train", "step": 2, "loss": 1.0})
            raise RuntimeError("training failed")
    err = capsys.readouterr().err
    assert err.count("the bad logger failed (OSError: disk full)") == 1
    assert good.calls == [("metrics", 1), ("metrics", 2), ("close", "failed")]
    assert bad.calls == []  # switched off before it was closed


# ---------------------------------------------------------------- tensorboard
@pytest.mark.slow  # shares one ~15 s run (two attempts, three loggers)
def test_tensorboard_holds_the_metrics_config_and_grid(run):
    from tensorboard.backend.event_processing.event_accumulator import (IMAGES, SCALARS,
                                                                        TENSORS,
                                                                        EventAccumulator)
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    out, _ = run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={SCALARS: 0, IMAGES: 0,
                                                                    TENSORS: 0})
    acc.Reload()
    expected = _expected(_records(out))
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        # each step once (the first attempt's steps 4-6 are purged), values as float32
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == \
            [(s, float(np.float32(v))) for s, v in points], tag
    start = HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.lr"].number_value == pytest.approx(LR)
    assert start.hparams["model.name"].string_value == "vit_tiny_patch16_224"
    assert start.hparams["mim.target"].string_value == "pixel"
    (image,) = acc.Images("mim_grid")
    assert image.step == json.loads((out / "summary.json").read_text())["steps"] == 9
    png = np.asarray(Image.open(__import__("io").BytesIO(image.encoded_image_string)))
    assert np.array_equal(png, _grid(out))


@pytest.mark.slow  # shares one ~15 s run (two attempts, three loggers)
def test_tensorboard_resume_purges_the_redone_steps(run):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out, _ = run
    files = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2
    starts = [(e.step, e.session_log.status) for e in EventFileLoader(str(files[-1])).Load()
              if e.HasField("session_log")]
    # SessionLog.START: the steps from here on in older files are hidden
    assert starts == [(RESUMED_AT + 1, 1)]


# ---------------------------------------------------------------- wandb
def _wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (``run-ID.wandb``): a 7-byte header, then
    LevelDB-style 32 KiB blocks of chunks (crc32 4, length 2, type 1: full/first/middle/last)
    holding one ``wandb_internal_pb2.Record`` each."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos, chunk, records = path.read_bytes(), 32768, 7, b"", []
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = block - pos % block
        _, size, kind = struct.unpack("<IHB", raw[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # padding at the end of a block
            pos += left
            continue
        chunk += raw[pos + 7:pos + 7 + size]
        pos += 7 + size
        if kind in (1, 4):
            records.append(pb.Record.FromString(chunk))
            chunk = b""
    return records


@pytest.mark.slow  # shares one ~15 s run (two attempts, three loggers)
def test_wandb_offline_run_holds_the_metrics_config_and_grid(run):
    out, first = run
    folders = sorted((out / "wandb").glob("offline-run-*"))
    ids = json.loads((out / "loggers.json").read_text())["wandb"]["id"]
    assert len(folders) == 2 and ids == first["wandb"]["id"]  # the resume continued the run
    assert all(f.name.endswith(f"-{ids}") and (f / f"run-{ids}.wandb").is_file()
               for f in folders)
    records = _wandb_records(folders[-1] / f"run-{ids}.wandb")
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
    assert config["train"]["lr"] == LR and config["mim"]["target"] == "pixel"
    rows = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                   for i in r.history.item}
            rows[row["_step"]] = row
    # the resumed attempt logs steps 4-9: metrics.jsonl from there, and the final record
    expected = _expected([r for r in _records(out) if r["step"] > RESUMED_AT])
    got = {tag: [(s, row[tag]) for s, row in sorted(rows.items()) if tag in row]
           for tag in expected}
    assert got == expected
    image = rows[9]["mim_grid/path"]
    assert np.array_equal(np.asarray(Image.open(folders[-1] / "files" / image)), _grid(out))


# ---------------------------------------------------------------- mlflow
@pytest.mark.slow  # shares one ~15 s run (two attempts, three loggers)
def test_mlflow_store_holds_the_metrics_params_and_grid(run):
    from mlflow.tracking import MlflowClient

    out, first = run
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run_id = json.loads((out / "loggers.json").read_text())["mlflow"]["run_id"]
    assert run_id == first["mlflow"]["run_id"]  # one MLflow run across the resume
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.info.run_name == out.name
    assert info.data.params["train.lr"] == str(LR)
    assert info.data.params["train.logger"] == "tensorboard,wandb,mlflow"
    for tag, points in _expected(_records(out)).items():
        history = sorted(client.get_metric_history(run_id, tag), key=lambda m: m.timestamp)
        latest = {m.step: m.value for m in history}  # the attempt that went on logged last
        steps = sorted(m.step for m in history)
        if tag.startswith("final/"):  # the first attempt ended too, at step 6
            assert steps == [6, 9] and latest[9] == points[-1][1], tag
            continue
        assert sorted(latest.items()) == points, tag
        # MLflow keeps every value: the steps the resumed run redid (4-6) are there twice
        assert steps == sorted([s for s, _ in points]
                               + [s for s, _ in points if RESUMED_AT < s <= 6]), tag
    artifacts = Path(info.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(out / "mlruns")
    assert "target: pixel" in (artifacts / "config.yaml").read_text()
    (png,) = (artifacts / "images").glob("mim_grid+step+9+*[0-9a-f].png")
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), _grid(out))


# ---------------------------------------------------------------- no connection
_GUARD = """
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
def refuse(what, address):
    log.write(f"{what} {address!r} in thread {threading.current_thread().name}\\n")
    raise OSError("network access attempted")
real_connect = socket.socket.connect
def connect(self, address):
    if self.family == socket.AF_UNIX:  # W&B talks to its own service through a local socket
        return real_connect(self, address)
    refuse("connect", address)
socket.socket.connect = connect
socket.getaddrinfo = lambda host, port, *a, **k: refuse("getaddrinfo", (host, port))
from supmim.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow  # one ~10 s run in its own process, exit hooks included
def test_offline_loggers_open_no_connection_until_the_process_has_exited(tmp_path):
    """W&B (offline) and MLflow (local store) start telemetry threads of their own unless
    told not to: W&B's analytics exporter and MLflow's config fetch. A connection from any
    thread, at any time up to the process's exit, is recorded by the guard."""
    data = make_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    attempts = tmp_path / "attempts.txt"
    # as a user's shell has it: MLflow also stays quiet under pytest or CI, so those go
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))
           and k not in ("DO_NOT_TRACK", "PYTEST_CURRENT_TEST", "CI")}
    env.update({name: str(tmp_path / name.lower()) for name in WANDB_DIRS})
    args = ["train", "--preset", "tiny-test", "--data", str(data), "--target", "pixel",
            "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet",
            "--set", "train.logger=wandb,mlflow", "--set", "data.val_fraction=0",
            "--set", "data.batch_size=4"]
    done = subprocess.run([sys.executable, "-c", _GUARD, str(attempts), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "mlflow.db").is_file() and (tmp_path / "run" / "wandb").is_dir()
    assert not attempts.exists() or attempts.read_text() == ""
    # the guard is real: the same wrapper records an attempt and the command fails
    probe = "import socket; socket.create_connection(('example.com', 80))"
    failed = subprocess.run([sys.executable, "-c", _GUARD.replace(
        "from supmim.cli import main", probe + "\nfrom supmim.cli import main"),
        str(attempts), "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120)
    assert failed.returncode != 0
    assert "getaddrinfo ('example.com', 80) in thread MainThread" in attempts.read_text()
