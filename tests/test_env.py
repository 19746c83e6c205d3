"""The environment CI installs (``pip install -e '.[dev]'``) against pyproject.toml: every
installed requirement meets its floor, everything ``dev`` lists is installed and every optional
extra's packages import. A floor below what the code needs, or an extra that cannot import,
fails here rather than on a user's machine. The heavy optional imports stay lazy."""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(req: Requirement) -> str | None:
    try:
        return md.version(req.name)
    except md.PackageNotFoundError:
        return None


def _all_requirements() -> dict[str, list[Requirement]]:
    """``{"core": [...], extra: [...]}`` from pyproject.toml."""
    project = _project()
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {name: [Requirement(r) for r in reqs] for name, reqs in groups.items()}


def test_installed_versions_meet_the_floors():
    checked, low = 0, []
    for group, reqs in _all_requirements().items():
        for req in reqs:
            version = _installed(req)
            if version is None:  # an extra this install does not include (dev's are checked below)
                continue
            checked += 1
            if not req.specifier.contains(version, prereleases=True):
                low.append(f"{req.name} {version} does not meet '{req}' ({group})")
    assert not low, "; ".join(low)
    assert checked >= len(_all_requirements()["core"])


def test_the_floors_are_the_ones_the_code_needs():
    """torch 2.6 (FSDP2's public fully_shard) and timm 1.0.16 (local-dir: model names)."""
    floors = {_norm(r.name): str(r.specifier) for r in _all_requirements()["core"]}
    assert floors["torch"] == ">=2.6" and floors["timm"] == ">=1.0.16"


def test_dev_installs_every_extra_and_each_imports():
    groups = _all_requirements()
    dev = {_norm(r.name) for r in groups["dev"]}
    extras = {name: reqs for name, reqs in groups.items() if name not in ("core", "dev")}
    # faiss is the one extra CI leaves out (a large wheel for an optional search backend)
    missing = [f"{r.name} ({name})" for name, reqs in extras.items() if name != "faiss"
               for r in reqs if _norm(r.name) not in dev]
    assert not missing, f"the dev extra does not install {missing}"
    not_installed = [r.name for r in groups["dev"] if _installed(r) is None]
    assert not not_installed, f"not installed: {not_installed}: pip install -e '.[dev]'"
    modules: dict[str, set[str]] = {}
    for module, dists in md.packages_distributions().items():
        for dist in dists:
            modules.setdefault(_norm(dist), set()).add(module)
    wanted = sorted({m for reqs in extras.values() for r in reqs if _installed(r) is not None
                     for m in modules.get(_norm(r.name), ())
                     if m.isidentifier() and not m.startswith("_")})
    assert {"sklearn", "webdataset", "datasets", "imagecorruptions", "argcomplete"} <= set(wanted)
    # one fresh interpreter, as a user's first import would be
    done = subprocess.run([sys.executable, "-c", "import " + ", ".join(wanted)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_heavy_optional_packages_are_imported_only_when_used():
    """The evaluation tasks (robustness included) and the CLI import without opencv, numba,
    scikit-image or imagecorruptions: `pip install supmim` without the extra works."""
    code = ("import sys, supmim.cli, supmim.evaluation.tasks, supmim.evaluation.robustness, "
            "supmim.evaluation.tasks.robustness; print(sorted(m for m in ('imagecorruptions', "
            "'cv2', 'numba', 'skimage', 'argcomplete') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]


def test_the_package_ships_its_type_hints(tmp_path):
    """PEP 561: the wheel built from this tree carries supmim/py.typed (built offline, from a
    copy, so the checkout gets no build/ folder)."""
    import shutil
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT / "supmim", src / "supmim", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                           "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"),
                           str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("supmim-*.whl")
    assert "supmim/py.typed" in zipfile.ZipFile(wheel).namelist()
