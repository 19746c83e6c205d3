"""Deprecated alias of :mod:`supmim.targets.tokenizers.third_party` (moved there); this path goes
in the next release."""

from supmim.targets.tokenizers.third_party import (  # noqa: F401
    check_sha256, find_state_dict, flatten_tree, load_flax_msgpack, load_torch_file,
    sha256_of)
