"""Deprecated: moved to supmim.experiments.bench; this alias will be removed in a later release."""

from supmim.experiments.bench import *  # noqa: F401,F403
