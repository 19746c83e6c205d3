"""Run directories written before checkpoints described themselves (no ``format`` in
``meta.json``): the one place their missing metadata is reassembled from the side files
(``config.yaml``, ``classes.json``, ``data_stats.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from supmim.config import RunConfig
from supmim.errors import CheckpointError


def fill_meta(meta: dict[str, Any], *, cfg: RunConfig, classes_path: Path,
              stats_path: Path) -> dict[str, Any]:
    """``meta`` (epoch, step, end_of_epoch, eval) completed with config, classes, data
    statistics and target spec, as a version-2 checkpoint would hold them. ``cfg`` is the
    run's ``config.yaml``, its tokenizer already pointed at the run's own copy."""
    from supmim.targets import target_spec

    if not stats_path.is_file():
        raise CheckpointError(f"'{stats_path}' is missing, so the run's normalisation is "
                              "unknown: the run directory is incomplete")
    classes = json.loads(classes_path.read_text()) if classes_path.is_file() else None
    target = target_spec(cfg.mim) if cfg.mim.enabled else None
    return {**meta, "config": cfg.to_dict(), "classes": classes,
            "data": json.loads(stats_path.read_text()), "target": target}
