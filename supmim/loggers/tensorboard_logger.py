"""TensorBoard: event files in ``RUN/tensorboard/`` through torch's ``SummaryWriter``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from supmim.loggers.base import ExperimentLogger, Status, flat_config, read_image, scalars

# the metrics the HParams dashboard shows beside each run's hyper-parameters
HPARAM_METRICS = ("epoch/eval_top1", "epoch/train_loss", "final/test_top1")


class TensorBoardLogger(ExperimentLogger):
    """Scalars ``<type>/<key>`` at their optimizer step, the config in the HParams dashboard
    and as YAML text, images at the step they were drawn.

    Each start opens a new event file with ``purge_step`` = the first step it will log (the
    checkpoint's step + 1 on a resume): TensorBoard then hides what an interrupted attempt
    logged from that step on, so each step shows once, with the values of the attempt that
    went on, as ``metrics.jsonl`` keeps them (steps up to the checkpoint were logged before
    it was written, and stay)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, *, run_name: str, step: int,
                 stored: dict[str, Any] | None) -> None:
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=step + 1)

    def log_config(self, config: dict[str, Any]) -> None:
        # written into this run's own event file (add_hparams would start a sub-run), so the
        # HParams dashboard links the hyper-parameters to the scalars above
        experiment, start, _ = hparams(flat_config(config), dict.fromkeys(HPARAM_METRICS, 0.0))
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)
        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()))

    def log_metrics(self, record: dict[str, Any], step: int) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)

    def log_image(self, tag: str, image: str | Path | np.ndarray, step: int) -> None:
        self.writer.add_image(tag, read_image(image), step, dataformats="HWC")

    def close(self, status: Status = "finished") -> None:
        self.writer.close()
