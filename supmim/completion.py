"""Shell tab completion of ``supmim`` through argcomplete (``pip install
'supmim[completion]'``, then ``eval "$(register-python-argcomplete supmim)"`` in bash or zsh).

Completing only parses the command line: nothing heavy is imported, so it answers at once."""

from __future__ import annotations

import argparse
import os


def enable(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request and exit, when there is one and argcomplete is
    installed; otherwise do nothing (a missing argcomplete must not break the command)."""
    if "_ARGCOMPLETE" not in os.environ:  # the shell hook sets it; a normal run skips the import
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)
