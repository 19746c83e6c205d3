"""``supmim visualize``: pictures of MIM predictions and tokenizer reconstructions."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``supmim visualize`` to the ``supmim`` parser (not yet)."""
