"""``embed``: write a split's pooled features, labels and class names to a ``.npz``, and the
metadata (a result without metrics) to the ``.json`` beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supmim.evaluation.common import EvaluationError, Timer, make_result, write_json
from supmim.evaluation.features import l2_normalize
from supmim.evaluation.loading import LoadedModel
from supmim.evaluation.tasks._common import FeatureOptions, features, get_split, pool_note, prepare


@dataclass(kw_only=True)
class EmbedOptions(FeatureOptions):
    """Options of :func:`run_embed`; ``out`` is the features file and must end in ``.npz``."""

    out: str
    split: str = "test"
    normalize: bool = False  # L2-normalise each feature vector

    def check(self) -> None:
        if Path(self.out).suffix != ".npz":
            raise EvaluationError(f"--out '{self.out}' must end in .npz (the metadata goes to the .json "
                                  "beside it)")


def run_embed(model: LoadedModel, data: str, options: EmbedOptions, *,
              device: torch.device | str) -> dict[str, Any]:
    """Embed split ``options.split`` of ``data``; writes ``options.out`` and its ``.json``
    and returns the metadata result."""
    options.check()
    timer = Timer()
    device = prepare(model, device)
    out = Path(options.out)
    split = get_split(data, options.split, options)
    feats, labels = features(model, split, device, options)
    if options.normalize:
        feats = l2_normalize(torch.from_numpy(feats)).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, features=feats.astype(np.float32), labels=labels, classes=np.asarray(split.classes))
    result = make_result(
        "embed", f"embed | {split.tag}/{split.split}{pool_note(options.pool)}", model=model.describe(),
        data={"spec": data, "tag": split.tag, **split.describe()},
        protocol={"pool": options.pool, "normalized": bool(options.normalize)},
        metrics={}, details={"features": str(out), "shape": list(feats.shape)}, seconds=timer.seconds())
    write_json(out.with_suffix(".json"), result)
    return result
