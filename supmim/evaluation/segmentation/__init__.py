"""Semantic segmentation on an encoder's patch features: data layouts, heads, training, mIoU."""
