"""Test-session settings: the tests never touch the user's cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``SUPMIM_CACHE`` (extracted archives, cached tokenizers) in a folder of this session, so
    a tokenizer cached by one test session is never reused by the next and nothing is written
    under ``~/.cache``; subprocesses inherit it."""
    os.environ["SUPMIM_CACHE"] = str(tmp_path_factory.mktemp("supmim-cache"))
