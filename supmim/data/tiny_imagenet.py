"""Deprecated: moved to supmim.data.readers.tiny_imagenet; this alias goes in the next release."""

from supmim.data.readers.tiny_imagenet import ANNOTATIONS, is_tiny_imagenet, load_tiny_imagenet

__all__ = ["ANNOTATIONS", "is_tiny_imagenet", "load_tiny_imagenet"]
