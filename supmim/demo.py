"""Deprecated: moved to supmim.experiments.demo; this alias will be removed in a later release."""

from supmim.experiments.demo import *  # noqa: F401,F403
