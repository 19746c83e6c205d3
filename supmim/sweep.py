"""Deprecated: moved to supmim.experiments.sweep; this alias will be removed in a later release."""

from supmim.experiments.sweep import *  # noqa: F401,F403
from supmim.experiments.sweep import _paired_delta  # noqa: F401
