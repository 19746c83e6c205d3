"""Export a run's encoder (and classification head) as a plain timm model folder, or as ONNX.

The folder follows timm's Hugging Face Hub layout (``config.json`` + ``model.safetensors``,
plus a model card ``README.md`` and the run's resolved ``supmim_config.yaml``), so
``timm.create_model('local-dir:E', pretrained=True)`` rebuilds it without supmim, and its
``pretrained_cfg`` carries the evaluation preprocessing (input size, mean, std, crop,
interpolation) that ``timm.data.resolve_data_config`` + ``create_transform`` reproduce.
``--format onnx`` writes ``model.onnx`` + ``onnx.json`` instead (:mod:`supmim.export_onnx`);
``--push-to-hub`` uploads the timm folder (:mod:`supmim.hub`). The ``supmim export`` command
is defined in :mod:`supmim.export_cli`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file
from timm.models import save_for_hf
from timm.models.vision_transformer import VisionTransformer

from supmim.config import RunConfig, save_config
from supmim.errors import CheckpointError, ConfigError
from supmim.model_card import render_model_card
from supmim.models import vit_kwargs
from supmim.run import RunDir, timm_data_config

FORMATS = ("timm", "onnx")
data_config_of = timm_data_config  # the old name


def load_run_encoder(run_dir: str | Path, *, checkpoint: str = "last",
                     weights: str = "auto") -> tuple[VisionTransformer, RunConfig, list[str]]:
    """Rebuild a run's timm encoder with trained weights: ``(model, config, class names)``.

    checkpoint: "last" (the final model, the one reported on test) or "best" (best on val).
    weights: "raw", "ema", or "auto" (EMA weights when the run kept an EMA)."""
    run = RunDir.open(run_dir)
    return (run.build_encoder(checkpoint, weights), run.config(checkpoint),
            run.classes(checkpoint))


def export_run(run_dir: str | Path, out_dir: str | Path, *, checkpoint: str = "last",
               weights: str = "auto", head: bool = True, command: str | None = None,
               fmt: str = "timm", repo_id: str | None = None) -> Path:
    """Write ``out_dir/{config.json, model.safetensors, README.md, supmim_config.yaml}``
    (``fmt="onnx"``: ``out_dir/{model.onnx, onnx.json, supmim_config.yaml}``); returns
    ``out_dir``. ``command``: the command line to record in the model card; ``repo_id``: the
    Hub repo the card's loading example names."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format '{fmt}' is not one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        from supmim.export_onnx import require_onnx
        require_onnx()  # before any work
    run, out_dir = RunDir.open(run_dir), Path(out_dir)
    vit = run.build_encoder(checkpoint, weights)
    cfg, classes = run.config(checkpoint), run.classes(checkpoint)
    if not head:
        vit.reset_classifier(0)
    if fmt == "onnx":
        from supmim.export_onnx import write_onnx_export
        _staged(out_dir, lambda tmp: write_onnx_export(
            vit, tmp, cfg=cfg, classes=classes, data_config=run.data_config(checkpoint),
            head=head))
        return out_dir

    def write(tmp: Path) -> None:
        save_for_hf(vit, str(tmp), model_config={"label_names": classes} if head and classes
                    else {}, model_args=vit_kwargs(cfg.model, vit.num_classes),
                    safe_serialization=True, data_config=run.data_config(checkpoint))
        _check_export(tmp)
        save_config(cfg, tmp / "supmim_config.yaml")
        (tmp / "README.md").write_text(render_model_card(
            run.path, cfg, classes, checkpoint=checkpoint, weights=weights, head=head,
            command=command, repo_id=repo_id))

    _staged(out_dir, write)
    return out_dir


def _staged(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` in a folder beside ``out_dir``, then move its files into ``out_dir``:
    a full disk (or a failed export) leaves no half export."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    except (OSError, RuntimeError) as err:  # safetensors reports a full disk as either
        raise CheckpointError(f"could not write the export '{out_dir}': {err}. Nothing was "
                              "changed there; free disk space (or fix permissions) and export "
                              "again") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_export(out_dir: Path) -> None:
    """The weights file must hold exactly the timm model's keys (no decoder, no tokenizer)."""
    keys = set(load_file(str(out_dir / "model.safetensors")).keys())
    bad = [k for k in keys if k.startswith(("decoder.", "target.", "mask_token"))]
    if bad:
        raise CheckpointError(f"export contains MIM weights {bad[:3]}; this is a bug")
