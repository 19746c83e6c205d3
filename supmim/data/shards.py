"""Deprecated: moved to supmim.data.readers.shards; this alias goes in the next release."""

from supmim.data.readers.shards import INDEX, ShardDataset, is_shard_folder, load_shards, pack

__all__ = ["INDEX", "ShardDataset", "is_shard_folder", "load_shards", "pack"]
