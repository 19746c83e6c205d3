"""supmim: supervised ViT training with an auxiliary masked-image-modeling loss."""

__version__ = "0.1.0"
