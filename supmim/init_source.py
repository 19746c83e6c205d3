"""What ``train.init_from`` names, read without torch (config validation uses it).

Besides a path (a supmim run directory, a ``supmim export`` folder, a ``.safetensors`` file;
see :mod:`supmim.run.sources`), ``train.init_from`` may name a start through
``timm.create_model(..., pretrained=True)``:

- ``timm:NAME`` or a bare ``NAME`` (a timm model name, optionally with a pretrained tag): the
  weights timm's registry points to (downloaded from the Hugging Face Hub);
- ``timm:NAME@FILE`` or ``NAME@FILE``: the same architecture, its weights read from the local
  ``.safetensors`` FILE instead (nothing is downloaded);
- ``hf-hub:ORG/NAME`` (``@REVISION`` allowed, as timm reads it): a timm model on the Hub;
- ``local-dir:FOLDER``: a folder in the Hub layout (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

from dataclasses import dataclass

from supmim.errors import ConfigError

TIMM_PREFIX = "timm:"
HUB_PREFIX, LOCAL_PREFIX = "hf-hub:", "local-dir:"  # passed to timm as they are


@dataclass(frozen=True)
class TimmStart:
    """A start through timm: ``name`` is what ``timm.create_model`` gets (a registry name,
    ``hf-hub:...`` or ``local-dir:...``); ``file`` a local ``.safetensors`` file of weights
    for that registry name (None: timm finds the weights itself)."""

    name: str
    file: str | None = None

    @property
    def needs_hub(self) -> bool:
        """Whether timm has to reach the Hugging Face Hub for it."""
        return self.file is None and not self.name.startswith(LOCAL_PREFIX)


def _bad(value: str, problem: str) -> ConfigError:
    return ConfigError(f"train.init_from '{value}' {problem}; the timm forms are timm:NAME, "
                       "timm:NAME@/path/weights.safetensors, hf-hub:ORG/NAME and "
                       "local-dir:/path/folder")


def parse_timm_start(value: str, *, bare: bool = False) -> TimmStart | None:
    """``value`` as a :class:`TimmStart`, or None for a path. Values with a prefix are
    always timm starts; one without counts as ``NAME[@FILE]`` only when ``bare`` (the caller
    has checked it is no existing path and that timm knows the name). ConfigError for a
    malformed timm form."""
    if value.startswith((HUB_PREFIX, LOCAL_PREFIX)):
        if not value.partition(":")[2].strip():
            raise _bad(value, "names no model after the prefix")
        return TimmStart(value)
    if value.startswith(TIMM_PREFIX):
        value, text = value[len(TIMM_PREFIX):], value
    elif bare:
        text = value
    else:
        return None
    # timm registry names never hold '@', so the first one starts the file
    name, at, file = value.partition("@")
    if not name.strip():
        raise _bad(text, "names no timm model")
    if at and not file.strip():
        raise _bad(text, "ends in '@' without a weights file")
    if file and not file.endswith(".safetensors"):
        raise _bad(text, f"names '{file}' as weights: only .safetensors files are read (nothing "
                   "is unpickled); convert it once with safetensors.torch.save_file")
    return TimmStart(name.strip(), file or None)


def check_init_from(value: str | None) -> None:
    """The config-time check of ``train.init_from``: its form only, never the file system
    (a recorded run's config must still load where its source is gone)."""
    if value is not None:
        parse_timm_start(value)
