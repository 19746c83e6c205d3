"""Export a run's encoder (and classification head) as a plain timm model folder.

The folder follows timm's Hugging Face Hub layout (``config.json`` + ``model.safetensors``),
so ``timm.create_model('local-dir:E', pretrained=True)`` rebuilds it without supmim, and its
``pretrained_cfg`` carries the evaluation preprocessing (input size, mean, std, crop,
interpolation) that ``timm.data.resolve_data_config`` + ``create_transform`` reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from timm.models import save_for_hf
from timm.models.vision_transformer import VisionTransformer

from supmim.config import RunConfig, load_config
from supmim.engine.checkpoint import latest_checkpoint, load_checkpoint
from supmim.errors import CheckpointError
from supmim.models import create_vit, vit_kwargs
from supmim.models.pretrained import source_classes


def _checkpoint_folder(run_dir: Path, which: str) -> Path:
    folder = run_dir / "checkpoints" / "best" if which == "best" else latest_checkpoint(run_dir)
    if folder is None or not folder.is_dir():
        raise CheckpointError(f"no '{which}' checkpoint in '{run_dir}/checkpoints'; "
                              "is this a supmim run directory that finished an epoch?")
    return folder


def load_run_encoder(run_dir: str | Path, *, checkpoint: str = "last",
                     weights: str = "auto") -> tuple[VisionTransformer, RunConfig, list[str]]:
    """Rebuild a run's timm encoder with trained weights.

    checkpoint: "last" (the final model, the one reported on test) or "best" (best on val).
    weights: "raw", "ema", or "auto" (EMA weights when the run kept an EMA).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"'{run_dir}' is not a supmim run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    model_state, _, ema_state = load_checkpoint(_checkpoint_folder(run_dir, checkpoint))
    if weights == "ema" and ema_state is None:
        raise CheckpointError(f"run '{run_dir}' kept no EMA weights (train.ema was off)")
    if weights in ("ema", "auto") and ema_state is not None:
        state = ema_state
    else:
        state = {k[len("encoder."):]: v for k, v in model_state.items()
                 if k.startswith("encoder.")}
    classes = source_classes(run_dir)
    num_classes = int(state["head.weight"].shape[0]) if "head.weight" in state else 0
    vit = create_vit(cfg.model, num_classes=num_classes)
    vit.load_state_dict(state, strict=True)
    vit.eval()
    return vit, cfg, classes or [str(i) for i in range(num_classes)]


def data_config_of(cfg: RunConfig, mean: list[float], std: list[float]) -> dict:
    """The evaluation preprocessing of a run, in timm's data-config terms."""
    m, d = cfg.model, cfg.data
    return {"input_size": (m.in_chans, m.img_size, m.img_size), "mean": tuple(mean),
            "std": tuple(std), "crop_pct": d.crop_pct, "crop_mode": "center",
            "interpolation": d.interpolation}


def export_run(run_dir: str | Path, out_dir: str | Path, *, checkpoint: str = "last",
               weights: str = "auto", head: bool = True) -> Path:
    """Write ``out_dir/{config.json, model.safetensors}``; returns ``out_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    vit, cfg, classes = load_run_encoder(run_dir, checkpoint=checkpoint, weights=weights)
    stats_path = run_dir / "data_stats.json"
    if not stats_path.is_file():
        raise CheckpointError(f"'{stats_path}' is missing: the run directory is incomplete")
    stats = json.loads(stats_path.read_text())
    if not head:
        vit.reset_classifier(0)
    num_classes = vit.num_classes
    model_args = vit_kwargs(cfg.model, num_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_config = {"label_names": classes} if head and classes else {}
    save_for_hf(vit, str(out_dir), model_config=model_config, model_args=model_args,
                safe_serialization=True,
                data_config=data_config_of(cfg, stats["mean"], stats["std"]))
    _check_export(out_dir)
    return out_dir


def _check_export(out_dir: Path) -> None:
    """The weights file must hold exactly the timm model's keys (no decoder, no tokenizer)."""
    keys = set(load_file(str(out_dir / "model.safetensors")).keys())
    bad = [k for k in keys if k.startswith(("decoder.", "target.", "mask_token"))]
    if bad:
        raise CheckpointError(f"export contains MIM weights {bad[:3]}; this is a bug")
