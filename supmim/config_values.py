"""How a value written in YAML or on the command line becomes a typed config value: the
keys with a fixed set of choices, type checks against the dataclass annotations, and
``key=value`` override parsing. Nothing here needs the config's dataclasses, so
:mod:`supmim.config`, which defines them, imports this module and not the other way round."""

from __future__ import annotations

import types
import typing
from typing import Any

import yaml

from supmim.errors import ConfigError

CHOICES: dict[str, tuple[Any, ...]] = {
    "model.global_pool": ("token", "avg"),
    "mim.masking": ("random", "block"),
    "mim.mode": ("drop", "mask_token"),
    "mim.passes": (1, 2),
    "mim.token_loss": ("hard", "soft"),
    "mim.tokenizer_precision": ("auto", "fp32", "bf16"),
    "data.crop": ("pad", "rrc", "none"),
    "data.loader": ("auto", "device", "workers"),
    "data.interpolation": ("bilinear", "bicubic", "nearest"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "train.compile": ("auto", True, False),
}


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a dataclass annotation (resolved from its string form)."""
    hint = _resolve_hint(annotation)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        if key in CHOICES:  # e.g. train.compile: "auto", true or false
            raise ConfigError(f"config key '{key}' is {value!r}; choose one of {choices_text(key)}")
        raise ConfigError(errors[0])
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [coerce(key, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if value is False and "off" in CHOICES.get(key, ()):
            return "off"  # YAML 1.1 reads a bare `off` as false: `--set train.amp=off`
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    raise ConfigError(f"config key '{key}' has an unsupported type {hint}")


_HINTS = {
    "int": int, "float": float, "str": str, "bool": bool,
    "int | None": int | None, "float | None": float | None, "str | None": str | None,
    "list[float] | None": list[float] | None, "str | list[str]": str | list[str],
    "bool | str": bool | str,
}


def choices_text(key: str) -> str:
    """``key``'s valid values as a user writes them (YAML's true/false for booleans)."""
    return ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in CHOICES[key])


def _resolve_hint(annotation: Any) -> Any:
    if isinstance(annotation, str):
        return _HINTS[annotation]
    return annotation


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 0.0003)``; values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': the value is not valid YAML "
                          f"({str(err).splitlines()[0]}); quote it, e.g. {key}='...'") from err
    # YAML reads "3e-4" as a string (no dot): accept it as a number where a number is meant.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else int(value)
        except ValueError:
            pass
    return key.strip(), value
