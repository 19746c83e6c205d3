"""Deprecated alias of :mod:`supmim.targets.tokenizers.files` (moved there); this path goes
in the next release."""

from supmim.targets.tokenizers.files import (  # noqa: F401
    CONFIG_NAME, DEFAULT_KIND, FORMAT, FORMAT_VERSION, HOW_TO_MAKE, load_into,
    parse_config, read_meta, read_weights, tokenizer_paths, WEIGHTS_NAME, write_tokenizer)
