"""Models: the timm ViT encoder with a masked forward, the MIM decoder, the joint model,
mask generators, and :func:`build_model` (a config -> a model)."""

from supmim.models.decoder import MimDecoder
from supmim.models.encoder import create_vit, forward_masked, grid_of, vit_kwargs
from supmim.models.factory import build_model, model_arguments
from supmim.models.joint import StepOutput, SupMimModel

__all__ = ["MimDecoder", "StepOutput", "SupMimModel", "build_model", "create_vit",
           "forward_masked", "grid_of", "model_arguments", "vit_kwargs"]
