"""``supmim export RUN --out E --format onnx``: the run's encoder as ``E/model.onnx``.

Exported with torch's ``torch.export``-based ONNX exporter (``dynamo=True``, the default and
the supported path since torch 2.9; the TorchScript exporter also handles timm's ViT on torch
2.14 but warns that it will be removed). The batch axis is dynamic; the opset is whatever the
exporter picked, read back from the file and recorded. The output is the logits, or with
``--no-head`` the pooled features (timm's ``forward_head(pre_logits=True)``: the head is
removed exactly as in the timm export). ``E/onnx.json`` records what a consumer needs: the
input name and size, the preprocessing (mean, std, crop), the class names and the output kind.
Before the folder is written, onnxruntime runs the file on the same batch as PyTorch and must
agree within 1e-4.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from supmim.config import RunConfig, save_config
from supmim.errors import CheckpointError, ConfigError

ONNX_FILE, ONNX_META = "model.onnx", "onnx.json"
INPUT_NAME = "input"
PARITY_ATOL = 1e-4


def require_onnx() -> None:
    """One-line error when the ONNX packages are missing."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"--format onnx needs {', '.join(missing)}: "
                          "pip install 'supmim[onnx]'")


def to_onnx(model: torch.nn.Module, path: Path, input_size: tuple[int, int, int],
            output_name: str) -> int:
    """Write ``model`` (eval mode) to ``path`` with a dynamic batch axis; returns the opset."""
    import onnx

    example = torch.zeros(2, *input_size)  # batch 2: a size the exporter cannot specialise
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, verbose=False,
                              input_names=[INPUT_NAME], output_names=[output_name],
                              dynamic_shapes=({0: batch},), external_data=False)
    except Exception as err:  # the exporter's own errors have no common base class
        raise CheckpointError(f"torch.onnx could not export this model ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); use "
                              "--format timm") from err
    return max(o.version for o in onnx.load(str(path), load_external_data=False).opset_import
               if o.domain in ("", "ai.onnx"))


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session for ``path`` using ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(model: torch.nn.Module, path: Path, input_size: tuple[int, int, int]) -> float:
    """Max abs difference of onnxruntime vs PyTorch on a seeded batch of 3; raises above
    :data:`PARITY_ATOL`."""
    x = torch.randn(3, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    got = onnx_session(path).run(None, {INPUT_NAME: x.numpy()})[0]
    diff = float(abs(got - ref).max())
    if not diff <= PARITY_ATOL:
        raise CheckpointError(f"the ONNX file differs from PyTorch by {diff:.2e} (> "
                              f"{PARITY_ATOL}); this is a bug, use --format timm meanwhile")
    return diff


def write_onnx_export(vit: VisionTransformer, folder: Path, *, cfg: RunConfig,
                      classes: list[str], data_config: dict[str, Any], head: bool) -> None:
    """Write ``model.onnx``, ``onnx.json`` and ``supmim_config.yaml`` into ``folder``."""
    require_onnx()
    size = tuple(int(v) for v in data_config["input_size"])
    kind = "logits" if head else "features"
    opset = to_onnx(vit, folder / ONNX_FILE, size, kind)  # type: ignore[arg-type]
    diff = check_parity(vit, folder / ONNX_FILE, size)  # type: ignore[arg-type]
    meta = {
        "file": ONNX_FILE, "opset": opset, "exporter": f"torch.onnx (dynamo) {torch.__version__}",
        "input": {"name": INPUT_NAME, "shape": ["batch", *size], "dtype": "float32",
                  "layout": "NCHW"},
        "output": {"name": kind, "kind": kind, "shape": ["batch", vit.num_classes if head
                                                         else vit.num_features]},
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v
                          for k, v in data_config.items()},
        "class_names": classes if head else [],
        "parity_max_abs_diff": diff,
    }
    (folder / ONNX_META).write_text(json.dumps(meta, indent=2) + "\n")
    save_config(cfg, folder / "supmim_config.yaml")
