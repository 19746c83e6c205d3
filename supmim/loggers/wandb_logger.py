"""Weights & Biases: an offline run in ``RUN/wandb/`` unless ``WANDB_MODE`` says otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import wandb

from supmim.loggers.base import ExperimentLogger, Status, read_image, scalars


class WandbLogger(ExperimentLogger):
    """``wandb.init(mode="offline", dir=RUN)``: nothing leaves the machine until
    ``wandb sync RUN/wandb/offline-run-*``, W&B's own usage analytics included. For that
    the process's W&B settings are set offline: a later ``wandb.init`` in the same Python
    process is offline too unless it passes ``mode="online"``. Setting ``WANDB_MODE``
    (online, disabled, ...) hands the choice back to W&B; ``WANDB_PROJECT`` names the
    project (default "supmim"), the run is named after its directory.

    The config is W&B's nested config (``model``, ``mim``, ``data``, ``train``); metrics
    are ``<type>/<key>`` at their optimizer step. A resumed run continues the same run id
    (kept in ``RUN/loggers.json``). W&B keeps steps increasing: the steps a resumed run
    redoes keep the interrupted attempt's values there (``metrics.jsonl`` has the redone
    ones). Console capture is off: it rewires stdout / stderr, which the progress bar and
    ``metrics.jsonl`` already cover."""

    name = "wandb"

    def __init__(self, run_dir: Path, *, run_name: str, step: int,
                 stored: dict[str, Any] | None) -> None:
        run_id = (stored or {}).get("id")
        offline = not os.environ.get("WANDB_MODE")
        if offline:
            # W&B's analytics exporter reads the process-wide settings, not the run's mode:
            # without this an offline run still posts usage metrics to W&B's server
            wandb.setup(wandb.Settings(mode="offline"))
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "supmim"), name=run_name,
            dir=str(run_dir), id=run_id, resume="allow" if run_id else None,
            mode="offline" if offline else None,
            settings=wandb.Settings(console="off"))

    def log_config(self, config: dict[str, Any]) -> None:
        # a resumed run may change a few keys (train.epochs, --set): the latest values win
        self.run.config.update(config, allow_val_change=True)

    def log_metrics(self, record: dict[str, Any], step: int) -> None:
        self.run.log(scalars(record), step=step)

    def log_image(self, tag: str, image: str | Path | np.ndarray, step: int) -> None:
        self.run.log({tag: wandb.Image(read_image(image))}, step=step)

    def close(self, status: Status = "finished") -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)

    def state(self) -> dict[str, Any]:
        return {"id": self.run.id}
