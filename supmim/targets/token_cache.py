"""Deprecated alias of :mod:`supmim.targets.tokenizers.cache` (moved there); this path goes
in the next release."""

from supmim.targets.tokenizers.cache import (  # noqa: F401
    cache_key, precompute_tokens, TokenCache)
