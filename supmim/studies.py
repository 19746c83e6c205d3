"""Deprecated: moved to supmim.experiments.studies; this alias will be removed in a later release."""

from supmim.experiments.studies import *  # noqa: F401,F403
