"""What every experiment logger shares: the interface, and the conversions of supmim's
records (``metrics.jsonl`` lines, the resolved config, PNG files) into what the backends take.

Nothing here imports a backend, torch or numpy at module level: :mod:`supmim.config` calls
:func:`logger_names` during validation, which must stay cheap and torch-free.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supmim.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

# the pip extra each backend comes with, and the modules it needs (checked before training)
LOGGERS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard",),
    "wandb": ("wandb",),
    # the local store is SQLite: MLflow 3 refuses its old file store unless told otherwise
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),
}

Status = str  # how a run ended: "finished", "failed" or "killed" (a signal; it can resume)


def logger_names(value: str | list[str] | None) -> list[str]:
    """``train.logger`` -> the backends to use, in order, without repeats.

    Accepts "none", one name, a comma-separated string or a list; ConfigError for anything
    else, naming the valid names."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if name in ("", "none"):
            continue
        if name not in LOGGERS:
            raise ConfigError(f"config key 'train.logger' names an unknown logger {item!r}; "
                              f"choose none or any of {', '.join(LOGGERS)} (one name, a "
                              "comma-separated list or a YAML list)")
        if name not in names:
            names.append(name)
    return names


def check_installed(names: list[str]) -> None:
    """ConfigError naming the pip extra when a chosen logger's package does not import.

    Importing (not just finding) the module also catches broken installs, e.g. a protobuf
    version the package cannot use. Costs about a second for wandb / mlflow, and only runs
    for the loggers chosen."""
    for name in names:
        for module in LOGGERS[name]:
            try:
                importlib.import_module(module)
            except Exception as err:  # noqa: BLE001 - ImportError, or a broken install
                raise ConfigError(
                    f"train.logger={name} needs the '{module}' package, which does not import "
                    f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                    f"install it with `pip install 'supmim[{name}]'`, or drop {name} from "
                    "train.logger") from err


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """One ``metrics.jsonl`` record -> ``{"<type>/<key>": value}`` for its numbers.

    The record's type ("train", "epoch", "skip", "final") becomes the tag's group, so a
    step's loss and an epoch's mean loss stay apart; ``step`` is the x-axis, not a value;
    strings (the eval split's name) and booleans are not metrics."""
    kind = record.get("type", "train")
    return {f"{kind}/{key}": float(value) for key, value in record.items()
            if key not in ("type", "step") and isinstance(value, (int, float))
            and not isinstance(value, bool)}


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (the ``--set`` spelling).

    Values the hyper-parameter tables cannot hold become text: None as "null", lists as
    JSON, and non-finite numbers as their repr."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, prefix=f"{name}."))
        elif value is None:
            flat[name] = "null"
        elif isinstance(value, float) and not math.isfinite(value):
            flat[name] = repr(value)
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def read_image(image: str | Path | np.ndarray) -> np.ndarray:
    """A PNG path or an array -> an ``(H, W, 3)`` uint8 RGB array (the alpha of a
    matplotlib PNG is dropped: every backend shows RGB)."""
    import numpy as np
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as img:
            return np.asarray(img.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"an image must be (H, W, 3) uint8, got {array.shape} {array.dtype}")
    return array[..., :3]


class ExperimentLogger:
    """One backend. Built with ``(run_dir, run_name=, step=, stored=)``: ``step`` is the
    step training starts from (0, or a resumed checkpoint's); ``stored`` is what
    :meth:`state` returned when the run was last opened (None for a new run)."""

    name = ""

    def log_config(self, config: dict[str, Any]) -> None:
        """The resolved config (``RunConfig.to_dict()``) as hyper-parameters."""
        raise NotImplementedError

    def log_metrics(self, record: dict[str, Any], step: int) -> None:
        """One ``metrics.jsonl`` record (see :func:`scalars`) at optimizer step ``step``."""
        raise NotImplementedError

    def log_image(self, tag: str, image: str | Path | np.ndarray, step: int) -> None:
        """A PNG file or an ``(H, W, 3)`` uint8 array under ``tag``."""
        raise NotImplementedError

    def close(self, status: Status = "finished") -> None:
        """Flush and end the run; ``status`` says how it ended."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue this logger's run (ids); JSON-able."""
        return {}
