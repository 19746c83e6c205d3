"""Deprecated: moved to supmim.data.readers.hf; this alias goes in the next release."""

from supmim.data.readers.hf import HFImageDataset, is_hf_folder, load_hf

__all__ = ["HFImageDataset", "is_hf_folder", "load_hf"]
