"""``benchmarks/gpu_converged.sh`` (the one-GPU converged check) in its CPU dry run: every step
of the script (bench, tokenizer, six side-by-side runs, compare, the summary) at toy sizes, so
the GPU script cannot rot while no GPU is at hand. About 35 s on 2 cores."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._fixtures import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_converged.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("awk") is None,
                                reason="benchmarks/gpu_converged.sh needs bash and awk")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_gpu_converged_dry_run(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=3, train_per_class=24,
                             test_per_class=8, size=32)
    out = tmp_path / "out"
    env = {**os.environ, "DRY_RUN": "1", "DATA": str(data), "PY": sys.executable,
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    result = json.loads((out / "gpu_converged.json").read_text())
    assert result["dry_run"] is True
    runs = result["runs"]
    assert sorted(runs) == sorted(f"{arm}_seed{s}" for arm in ("baseline", "mim")
                                  for s in (0, 1, 2))
    for name, run in runs.items():
        assert run["finished"] and run["rc"] == 0, name
        assert _finite(run["test_top1"]), name
    bench = result["bench"]
    assert _finite(bench["ratio_trainer_over_plain_throughput"])
    assert _finite(bench["ratio_mim_over_sup_step_time"])
    assert _finite(result["seconds"]["six_runs"])
    assert len(result["delta_mim_minus_baseline_test_top1"]["per_seed"]) == 3
    targets = result["targets"]
    assert len(targets) == 7
    assert all(t["status"] in ("PASS", "MISS") for t in targets)
    md = (out / "gpu_converged.md").read_text()
    assert md.count("**PASS**") + md.count("**MISS**") == len(targets)
    assert (out / "compare" / "compare.json").is_file()  # compare reused the six runs
    # the GPU recipe's keys still validate (the dry run checks them with `supmim config`)
    recipe = json.loads((out / "gpu_recipe_config.json").read_text())
    assert recipe["model"]["depth"] == 12 and recipe["data"]["batch_size"] == 512
