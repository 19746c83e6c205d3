"""A run directory and everything read from or written to it: :class:`RunDir` (layout,
self-describing checkpoints, rebuilding a run's model), the checkpoint files themselves
(:mod:`supmim.run.checkpoint`), older run directories (:mod:`supmim.run.legacy`) and
encoder weights from elsewhere for ``train.init_from`` (:mod:`supmim.run.sources`)."""

from supmim.run.rundir import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, WEIGHTS, CheckpointInfo,
                               RunDir, data_stats, timm_data_config)
from supmim.run.timm_start import use_pretrained_stats

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "WEIGHTS", "CheckpointInfo", "RunDir",
           "data_stats", "timm_data_config", "use_pretrained_stats"]
