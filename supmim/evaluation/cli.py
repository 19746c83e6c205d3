"""CLI commands of the evaluation suite (``supmim embed``, ``supmim eval ...``, ``supmim report``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the evaluation commands to the ``supmim`` parser (none yet)."""
