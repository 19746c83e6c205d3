"""Deprecated alias of :mod:`supmim.targets.tokenizers.importers` (moved there); this path goes
in the next release."""

from supmim.targets.tokenizers.importers import (  # noqa: F401
    build_from_state, convert_maskgit_flax, FORMATS, import_checkpoint, import_tokenizer,
    infer_config, map_state_dict)
