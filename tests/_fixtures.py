"""Small image-folder datasets made by the tests themselves (no shared data needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, classes: int = 3, train_per_class: int = 24,
                      test_per_class: int = 8, size: int = 16, seed: int = 0,
                      split: str = "test") -> Path:
    """``root/{train,<split>}/c<k>/<i>.png``: noisy images whose colour and stripe orientation
    depend on the class, so a tiny ViT can learn them in a few steps."""
    rng = np.random.default_rng(seed)
    for name, n in (("train", train_per_class), (split, test_per_class)):
        for k in range(classes):
            folder = root / name / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8)
                img[..., k % 3] += 120
                if k % 2:
                    img[::4, :, :] = 255
                else:
                    img[:, ::4, :] = 255
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def run_until_sigkill(script: str, cwd: Path) -> None:
    """Run ``python -c script`` (one torch thread) and check that it killed itself by SIGKILL,
    as the fault tests' scripts do at a chosen point."""
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
