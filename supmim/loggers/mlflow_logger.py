"""MLflow: a local SQLite store in the run directory unless ``MLFLOW_TRACKING_URI`` is set."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# MLflow fetches a telemetry config and sends usage events from a thread of its own, decided
# when mlflow is imported; a run logged to a local store should open no connection.
# MLFLOW_DISABLE_TELEMETRY=false in the environment keeps MLflow's default.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Metric, Param  # noqa: E402 (after the telemetry switch)
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from supmim.loggers.base import ExperimentLogger, Status, flat_config, read_image, scalars

_BATCH = 100  # MLflow takes at most 100 params in one log_batch call
_STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


class MlflowLogger(ExperimentLogger):
    """One MLflow run per supmim run, in experiment ``MLFLOW_EXPERIMENT_NAME`` (default
    "supmim"), named after the run directory.

    Where: ``sqlite:///RUN/mlflow.db`` with artifacts in ``RUN/mlruns/``, unless
    ``MLFLOW_TRACKING_URI`` is set. SQLite and not the old ``./mlruns`` file store, because
    MLflow 3 refuses the file store (it is in maintenance mode) unless an environment
    variable opts in; SQLite is what MLflow recommends, and stays one local file.

    Parameters are the flat config (``train.lr``); MLflow cannot change a parameter, so a
    resumed run adds new keys only, and ``config.yaml`` (an artifact, rewritten each time)
    holds the latest values. Metrics are ``<type>/<key>`` at their step; MLflow keeps every
    value, so steps a resumed run redoes appear twice in a metric's history."""

    name = "mlflow"

    def __init__(self, run_dir: Path, *, run_name: str, step: int,
                 stored: dict[str, Any] | None) -> None:
        run_dir = Path(run_dir).resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.client = MlflowClient(tracking_uri=uri or f"sqlite:///{run_dir / 'mlflow.db'}")
        self.uri = uri  # None: the run directory's own store (which moves with it)
        stored = stored or {}
        if stored.get("tracking_uri") == uri and self._exists(stored.get("run_id")):
            self.run_id = stored["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "supmim")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            artifacts = None if uri else (run_dir / "mlruns").as_uri()
            experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def _exists(self, run_id: str | None) -> bool:
        """Whether the stored run is still there (a deleted store or run: start a new one)."""
        try:
            return run_id is not None and self.client.get_run(run_id) is not None
        except MlflowException:
            return False

    def log_config(self, config: dict[str, Any]) -> None:
        known = self.client.get_run(self.run_id).data.params
        params = [Param(k, str(v)) for k, v in flat_config(config).items() if k not in known]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + _BATCH])
        self.client.log_text(self.run_id, yaml.safe_dump(config, sort_keys=False),
                             "config.yaml")

    def log_metrics(self, record: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, tag: str, image: str | Path | np.ndarray, step: int) -> None:
        self.client.log_image(self.run_id, read_image(image), key=tag, step=step)

    def close(self, status: Status = "finished") -> None:
        self.client.set_terminated(self.run_id, status=_STATUS.get(status, "FAILED"))

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri}
