"""Deprecated: the trainer was split up; this alias will be removed in a later release.

    Trainer, Callback            -> supmim.engine.loop
    one optimizer step           -> supmim.engine.step (TrainStep)
    model, optimizer, loaders    -> supmim.engine.build
    evaluate                     -> supmim.engine.evaluate
    train (the Python API)       -> supmim.training
    RunData, build_run_data, ... -> supmim.data.splits
    resolve_device, amp_dtype    -> supmim.device
"""

from supmim.data.splits import RunData, build_run_data, split_indices  # noqa: F401
from supmim.device import amp_dtype, resolve_device  # noqa: F401
from supmim.engine.evaluate import evaluate  # noqa: F401
from supmim.engine.loop import Callback, Trainer  # noqa: F401
from supmim.engine.signals import StopRequest  # noqa: F401
from supmim.run.rundir import RunDir  # noqa: F401
from supmim.training import train  # noqa: F401

BAD_FILES = RunDir.BAD_FILES
