"""Load the model to evaluate: an exported timm folder or a supmim run directory.

Both give the same three things: the timm model (in eval mode), its timm *data config*
(``input_size`` (C, H, W), ``mean``, ``std``, ``crop_pct``, ``crop_mode``, ``interpolation``:
the preprocessing it was evaluated with), and its class names (or None without a head).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from supmim.errors import CheckpointError

MODEL_FORMS = (
    "MODEL may be:\n"
    "  - an exported timm folder (config.json + model.safetensors, as written by `supmim export`\n"
    "    or timm's save_for_hf), loaded with timm.create_model('local-dir:MODEL', pretrained=True);\n"
    "  - a supmim run directory (config.yaml + checkpoints/), whose encoder is rebuilt directly."
)


@dataclass
class LoadedModel:
    """A model ready for evaluation, with what is needed to feed and read it."""

    model: nn.Module
    data_config: dict[str, Any]
    label_names: list[str] | None
    spec: str
    source: str  # "timm-folder" or "run"
    info: dict[str, Any] = field(default_factory=dict)
    _fingerprint: str | None = None

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0) or 0)

    @property
    def in_chans(self) -> int:
        return int(self.data_config["input_size"][0])

    def fingerprint(self) -> str:
        """A hash of the weights: feature caches are keyed by it, so retrained weights never
        reuse stale features."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:20]
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """The ``model`` section of a result file."""
        return {"spec": self.spec, "source": self.source,
                "architecture": type(self.model).__name__,
                "params": sum(p.numel() for p in self.model.parameters()),
                "num_classes": self.num_classes, "fingerprint": self.fingerprint(),
                "input_size": list(self.data_config["input_size"]), **self.info}


def load_model(spec: str | Path, *, checkpoint: str = "last", weights: str = "auto") -> LoadedModel:
    """Load ``spec`` (see :data:`MODEL_FORMS`); ``checkpoint`` / ``weights`` apply to run directories."""
    path = Path(spec).expanduser()
    from supmim.run import RunDir

    if RunDir.is_run(path):
        return _load_run(path, str(spec), checkpoint, weights)
    if (path / "config.json").is_file():
        return _load_timm_folder(path, str(spec))
    if not path.exists():
        raise CheckpointError(f"model '{spec}' does not exist.\n{MODEL_FORMS}")
    raise CheckpointError(f"'{spec}' is neither an exported timm folder (no config.json) nor a "
                          f"supmim run directory (no config.yaml + checkpoints/).\n{MODEL_FORMS}")


def _load_timm_folder(path: Path, spec: str) -> LoadedModel:
    import timm
    from timm.data import resolve_data_config

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read '{path / 'config.json'}': {err}; re-export the model") from err
    if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        raise CheckpointError(f"'{path}' has config.json but no model.safetensors; re-export the model "
                              "with `supmim export RUN --out DIR`")
    try:
        model = timm.create_model(f"local-dir:{path.resolve()}", pretrained=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"timm cannot build '{path}' ({config.get('architecture')}): {err}") from err
    model.eval()
    data_config = dict(resolve_data_config({}, model=model))
    labels = model.pretrained_cfg.get("label_names") or config.get("label_names")
    return LoadedModel(model, data_config, list(labels) if labels else None, spec, "timm-folder",
                       info={"timm_name": config.get("architecture")})


def _load_run(path: Path, spec: str, checkpoint: str, weights: str) -> LoadedModel:
    from supmim.run import RunDir

    run = RunDir(path)
    vit = run.build_encoder(checkpoint, weights)
    labels = run.classes(checkpoint) if vit.num_classes else None
    return LoadedModel(vit, run.data_config(checkpoint), labels, spec, "run",
                       info={"timm_name": run.config(checkpoint).model.name,
                             "checkpoint": checkpoint, "weights": weights})
