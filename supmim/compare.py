"""Deprecated: moved to supmim.experiments.compare; this alias will be removed in a later release."""

from supmim.experiments.compare import *  # noqa: F401,F403
