"""Models: the timm ViT encoder with a masked forward, the MIM decoder, the joint model."""

from supmim.models.decoder import MimDecoder
from supmim.models.encoder import create_vit, forward_masked, grid_of, vit_kwargs
from supmim.models.joint import StepOutput, SupMimModel

__all__ = ["MimDecoder", "StepOutput", "SupMimModel", "create_vit", "forward_masked",
           "grid_of", "vit_kwargs"]
