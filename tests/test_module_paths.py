"""Moved modules keep their old import paths working, and the light modules import no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = ("compare", "sweep", "studies", "demo", "bench")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_old_experiment_paths_alias_the_moved_objects(name: str) -> None:
    new = importlib.import_module(f"supmim.experiments.{name}")
    old = importlib.import_module(f"supmim.{name}")
    public = [k for k in vars(new) if not k.startswith("_")]
    assert public and all(getattr(old, k) is getattr(new, k) for k in public)
    assert f"supmim.experiments.{name}" in (old.__doc__ or "")


def test_private_names_the_tests_used_stay_on_the_old_path() -> None:
    from supmim.experiments.sweep import _paired_delta
    from supmim.sweep import _paired_delta as old
    assert old is _paired_delta


def test_presets_and_the_experiments_package_import_no_torch() -> None:
    code = ("import sys, supmim.config, supmim.presets, supmim.experiments; "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert supmim.config.PRESETS is supmim.presets.PRESETS")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_preset_documents_its_command_and_expected_result() -> None:
    from supmim.presets import PRESETS
    import supmim.presets
    text = Path(supmim.presets.__file__).read_text()
    for name in PRESETS:
        block = text[:text.index(f'    "{name}": {{')].rsplit("},\n", 1)[-1]
        assert f"supmim train --preset {name} " in block, name
        assert "Expect" in block and "BENCHMARKS.md" in block, name
