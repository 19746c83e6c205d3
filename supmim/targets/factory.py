"""Deprecated alias: ``build_target`` moved to :mod:`supmim.targets.registry`, where targets
register themselves; this path goes in the next release."""

from supmim.targets.registry import build_target, target_names

TARGET_KINDS = ("vq", "pixel", "hog")  # the built-ins; target_names() lists every registered one

__all__ = ["TARGET_KINDS", "build_target", "target_names"]
