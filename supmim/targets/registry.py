"""The MIM target registry: targets register their name, configs and the CLI read the names.

    @register_target("pixel")
    class PixelTarget(MimTarget): ...

Built-in targets are :data:`supmim.targets.BUILTIN_MODULES`; other packages add
theirs through the ``supmim.targets`` entry-point group (``name = "pkg.module:Class"``), and
code that imports its own target class registers it by the decorator alone. The registry
module itself imports no torch, so ``supmim --help`` stays fast: the built-ins are loaded
the first time a name is looked up.

A *target spec* is what a checkpoint records to rebuild the target without the config:
``{"name": "vq", "options": {...constructor keywords...}}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from supmim.errors import ConfigError

_TARGETS: dict[str, type] = {}
_loaded = False


def register_target(name: str):  # noqa: ANN201 - returns a class decorator
    """Class decorator: register a :class:`~supmim.targets.base.MimTarget` subclass under
    ``name`` (lower case; the value of ``mim.target`` and ``--target``)."""
    key = name.lower()

    def decorate(cls: type) -> type:
        cls.name = key
        _TARGETS[key] = cls
        return cls
    return decorate


def _load_builtins() -> None:
    """Import the built-in targets and any entry-point plug-ins, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    from importlib.metadata import entry_points

    from supmim.targets import BUILTIN_MODULES
    for module in BUILTIN_MODULES:  # importing a target's module registers it
        importlib.import_module(f"supmim.targets.{module}")
    # built-ins first, in their fixed order, whichever module happened to be imported first
    rank = {f"supmim.targets.{m}": i for i, m in enumerate(BUILTIN_MODULES)}
    ordered = sorted(_TARGETS.items(), key=lambda kv: rank.get(kv[1].__module__, len(rank)))
    _TARGETS.clear()
    _TARGETS.update(ordered)
    for ep in entry_points(group="supmim.targets"):
        register_target(ep.name)(ep.load())


def target_names() -> tuple[str, ...]:
    """Every registered target name, built-ins first."""
    _load_builtins()
    return tuple(_TARGETS)


class TargetNames:
    """The registered names as a lazy container (argparse ``choices``): nothing is imported
    until a value is checked or the help lists them."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in target_names()

    def __iter__(self) -> Iterator[str]:
        return iter(target_names())


def target_class(name: str) -> type:
    """The class registered as ``name``; ConfigError listing the choices otherwise."""
    _load_builtins()
    key = str(name).lower()
    if key not in _TARGETS:
        raise ConfigError(f"unknown MIM target {name!r}: choose one of {', '.join(_TARGETS)}")
    return _TARGETS[key]


def build_target(name: str, *, img_size: int, patch_size: int, in_chans: int,
                 **options: Any) -> Any:
    """The frozen target ``name`` in eval mode, on the CPU (move it with ``.to``).

    ``options`` are its constructor keywords; keywords it does not take are allowed only
    when None (so one call can carry every target's options)."""
    cls = target_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k, v in options.items() if k not in accepted and v is not None]
    if unknown:
        raise ConfigError(f"MIM target {cls.name!r} takes no option {', '.join(unknown)}")
    kwargs = {k: v for k, v in options.items() if k in accepted}
    return cls(img_size=img_size, patch_size=patch_size, in_chans=in_chans, **kwargs).eval()


def target_spec(mim: Any) -> dict[str, Any]:
    """The spec of the target a ``mim`` config section names: name and constructor options."""
    cls = target_class(mim.target)
    return {"name": cls.name, "options": cls.options_from(mim)}


def build_from_spec(spec: dict[str, Any], *, img_size: int, patch_size: int,
                    in_chans: int) -> Any:
    """Rebuild a target from :func:`target_spec` output."""
    return build_target(spec["name"], img_size=img_size, patch_size=patch_size,
                        in_chans=in_chans, **dict(spec.get("options") or {}))
