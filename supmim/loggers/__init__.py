"""Experiment loggers (``train.logger`` = none | tensorboard | wandb | mlflow, or a list):
mirrors of ``metrics.jsonl`` in TensorBoard, Weights & Biases and MLflow.

Each logger gets the same records as ``metrics.jsonl`` (losses, MIM accuracy, lr,
throughput, evaluation), the resolved config as hyper-parameters, the MIM picture grid as an
image, and the final evaluation of ``summary.json``. Everything stays in the run directory
and works offline unless the user points a backend elsewhere:

- tensorboard: ``RUN/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``);
- wandb: ``RUN/wandb/``, offline mode unless ``WANDB_MODE`` is set (``wandb sync`` uploads);
- mlflow: a SQLite store ``RUN/mlflow.db`` with artifacts in ``RUN/mlruns/`` unless
  ``MLFLOW_TRACKING_URI`` is set (``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db``).

The ids a resumed run needs to continue the same W&B / MLflow run are kept in
``RUN/loggers.json``. ``metrics.jsonl`` stays the record of a run: a logger that fails
mid-run is reported once and switched off, and training goes on.

Backends are imported only when chosen, so ``supmim --help`` and plain training import none.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from supmim.errors import ConfigError, Interrupted
from supmim.files import write_json
from supmim.loggers.base import (LOGGERS, ExperimentLogger, Status, check_installed,
                                 flat_config, logger_names, read_image, scalars)

__all__ = ["LOGGERS", "ExperimentLogger", "LoggerSet", "check_installed", "flat_config",
           "logger_names", "open_loggers", "read_image", "scalars"]

STATE_FILE = "loggers.json"  # in the run directory: {logger name: its state()}
_BACKENDS = {"tensorboard": "supmim.loggers.tensorboard_logger:TensorBoardLogger",
             "wandb": "supmim.loggers.wandb_logger:WandbLogger",
             "mlflow": "supmim.loggers.mlflow_logger:MlflowLogger"}


class LoggerSet:
    """The chosen loggers as one: each call goes to every logger. Empty (every call a no-op)
    when none are chosen and on all but the main process. A context manager: leaving the
    block closes the loggers, marking the run failed (or killed, by a signal) on an error."""

    def __init__(self, loggers: list[ExperimentLogger] | None = None) -> None:
        self.loggers = list(loggers or [])

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _each(self, method: str, *args: Any) -> None:
        for logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as err:  # noqa: BLE001 - a mirror must not stop training
                self.loggers.remove(logger)
                _warn(logger, err)

    def log_config(self, config: dict[str, Any]) -> None:
        self._each("log_config", config)

    def log_metrics(self, record: dict[str, Any], step: int | None = None) -> None:
        """``step`` defaults to the record's own ``step``."""
        self._each("log_metrics", record, int(record.get("step", 0) if step is None else step))

    def log_image(self, tag: str, image: Any, step: int) -> None:
        self._each("log_image", tag, image, step)

    def close(self, status: Status = "finished") -> None:
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            try:
                logger.close(status)
            except Exception as err:  # noqa: BLE001 - the run itself is done
                _warn(logger, err)

    def __enter__(self) -> LoggerSet:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        killed = isinstance(err, (Interrupted, KeyboardInterrupt))
        self.close("finished" if err is None else "killed" if killed else "failed")


def _warn(logger: ExperimentLogger, err: Exception) -> None:
    said = str(err).splitlines()[0][:200] if str(err) else ""
    print(f"supmim: warning: the {logger.name} logger failed ({type(err).__name__}: {said}); "
          "it is off for the rest of this run (metrics.jsonl has every record)",
          file=sys.stderr)


def _backend(name: str) -> type[ExperimentLogger]:
    module, cls = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def open_loggers(cfg: Any, run_dir: str | Path, *, step: int = 0, resume: bool = False,
                 main: bool = True) -> LoggerSet:
    """Start the loggers of ``cfg.train.logger`` for the run in ``run_dir`` and log the
    resolved config. ``step``: where training starts; ``resume``: continue the loggers'
    runs recorded in ``RUN/loggers.json`` (a new run starts new ones); ``main``: False on
    the other processes of a distributed run, which log nothing (an empty set).

    ConfigError when a package is missing (naming the extra) or a backend cannot start."""
    names = logger_names(cfg.train.logger)
    if not names or not main:
        return LoggerSet()
    check_installed(names)
    run_dir = Path(run_dir)
    state_path = run_dir / STATE_FILE
    stored: dict[str, Any] = {}
    if resume and state_path.is_file():
        stored = json.loads(state_path.read_text())
    opened = LoggerSet()
    for name in names:
        try:
            opened.loggers.append(_backend(name)(run_dir, run_name=run_dir.name, step=step,
                                                 stored=stored.get(name)))
        except Exception as err:  # noqa: BLE001 - reported as one line
            opened.close("failed")
            said = str(err).splitlines()[0][:300] if str(err) else ""
            raise ConfigError(f"train.logger={name} could not start ({type(err).__name__}: "
                              f"{said}); fix that or drop {name} from train.logger") from err
    write_json(state_path, {**stored, **{lg.name: lg.state() for lg in opened.loggers}})
    opened.log_config(cfg.to_dict())
    return opened
