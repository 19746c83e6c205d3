"""Deprecated: moved to :mod:`supmim.run.checkpoint`; this alias will be removed in a later
release."""

from supmim.run.checkpoint import *  # noqa: F401,F403
from supmim.run.checkpoint import (EPOCH_PREFIX, STEP_PREFIX, atomic_write_text,  # noqa: F401
                                   epoch_folder, latest_checkpoint, list_checkpoints,
                                   load_checkpoint, prune_checkpoints, save_checkpoint,
                                   step_folder)
