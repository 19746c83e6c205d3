"""Device and precision choice: the one place ``"auto"`` becomes a torch device or dtype."""

from __future__ import annotations

import torch

from supmim.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else the CPU; any other name is checked: an
    unavailable CUDA device is an error naming the fix, never a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device '{name}' is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asks for CUDA, which is not available; use cpu or auto")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: None (float32), or bf16 ("bf16"; "auto" on a
    CUDA device that supports it)."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def uses_bf16(precision: str, device: torch.device) -> bool:
    """A frozen module's precision setting ("auto" = bf16 on CUDA, "fp32", "bf16")."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")
