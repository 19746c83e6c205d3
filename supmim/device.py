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


def native_bf16() -> bool:
    """Whether the current CUDA device computes bf16 in hardware (Ampere and later), not
    by emulation, which is slower than fp16."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch without the flag
        return torch.cuda.is_bf16_supported()


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: None (float32), bf16 or fp16. ``"auto"``: bf16
    on a CUDA device that has it natively, fp16 on other CUDA devices, float32 on the
    CPU."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if native_bf16() else torch.float16


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler for ``dtype``: enabled for fp16 (whose small gradients would underflow
    without it), a pass-through otherwise. ConfigError where this torch has no scaler for
    ``device``."""
    enabled = dtype == torch.float16
    try:
        return torch.amp.GradScaler(device.type, enabled=enabled)
    except (AttributeError, RuntimeError, TypeError) as err:
        if not enabled:
            raise
        raise ConfigError(f"train.amp=fp16 needs a gradient scaler on {device.type}, which "
                          f"torch {torch.__version__} does not have ({err}); use "
                          "train.amp=bf16 or off, or a newer torch") from err


def uses_bf16(precision: str, device: torch.device) -> bool:
    """A frozen module's precision setting ("auto" = bf16 on CUDA, "fp32", "bf16")."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")
