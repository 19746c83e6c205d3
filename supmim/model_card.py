"""The model card (``README.md`` in the Hugging Face Hub layout) that ``supmim export`` writes
beside ``config.json`` and ``model.safetensors``.

It states what a reader of the Hub page needs to trust and reuse the weights: the encoder's
architecture, the data and recipe it was trained with, the run's test and kNN metrics (only
those measured: nothing is filled in), the MIM settings used in training and that they are
gone at inference, how to load it with timm, and how to reproduce it. The ``license`` field is
left empty for the owner of the weights to set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from supmim.config import RunConfig


def _measured(run: Path) -> dict[str, Any]:
    """The run's test metrics (``summary.json``) and kNN top-1 (``knn.json``), if present."""
    out: dict[str, Any] = {}
    summary = run / "summary.json"
    if summary.is_file():
        test = json.loads(summary.read_text()).get("test") or {}
        out.update({k: test[k] for k in ("top1", "top5", "n") if k in test})
    knn = run / "knn.json"
    if knn.is_file():
        stored = json.loads(knn.read_text())
        out["knn_top1"], out["knn_k"] = stored.get("top1"), stored.get("k")
    return out


def _front_matter(cfg: RunConfig, metrics: dict[str, Any]) -> str:
    meta: dict[str, Any] = {
        "library_name": "timm",
        "license": None,  # the owner of the weights sets this before publishing
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "timm", "supmim", "vision-transformer"]
                + (["masked-image-modeling"] if cfg.mim.enabled else []),
        "datasets": [cfg.data.data],
    }
    if "top1" in metrics:
        meta["model-index"] = [{"name": "supmim", "results": [{
            "task": {"type": "image-classification"},
            "dataset": {"name": cfg.data.data, "type": cfg.data.data, "split": "test"},
            "metrics": [{"type": "accuracy", "name": "top-1", "value": round(metrics["top1"], 2)}],
        }]}]
    text = yaml.safe_dump(meta, sort_keys=False)
    return "---\n" + text.replace("license: null", "license:  # set one (e.g. apache-2.0) "
                                  "before publishing") + "---\n"


def _mim_lines(cfg: RunConfig) -> list[str]:
    k = cfg.mim
    if not k.enabled:
        return ["Trained with the supervised loss only (the baseline arm: no MIM branch)."]
    target = {"vq": "the token ids of a frozen VQ tokenizer", "pixel": "normalised pixels (MAE)",
              "hog": "HOG features (MaskFeat)"}.get(k.target, f"the `{k.target}` target")
    return [
        f"Trained with loss = CE(class) + {k.weight} x MIM loss: {k.mask_ratio:.0%} of the "
        f"patches ({k.masking} masking, {k.mode.replace('_', ' ')}) were predicted from the "
        f"rest by a {k.decoder_depth}-layer decoder ({k.decoder_dim} wide), the target being "
        f"{target}; {k.passes} encoder pass{'es' if k.passes != 1 else ''} per step.",
        "",
        "**At inference all of that is gone**: the decoder, the tokenizer and the masking were "
        "training-only. This folder holds the encoder (and its classification head) as a plain "
        "timm `VisionTransformer`, with the cost of any ViT of its size.",
    ]


def render_model_card(run: Path, cfg: RunConfig, classes: list[str], *, checkpoint: str,
                      weights: str, head: bool, command: str | None = None,
                      repo_id: str | None = None) -> str:
    """The card's Markdown for an export of ``run`` (its config ``cfg``); ``repo_id``: the Hub
    repo it is pushed to, named in the loading example."""
    m, t, d = cfg.model, cfg.train, cfg.data
    metrics = _measured(run)
    measured = []
    if "top1" in metrics:
        measured.append(f"| test top-1 (%) | {metrics['top1']:.2f} | {metrics.get('n', '?')} "
                        "images, the classification head |")
    if "top5" in metrics:
        measured.append(f"| test top-5 (%) | {metrics['top5']:.2f} | |")
    if metrics.get("knn_top1") is not None:
        measured.append(f"| kNN top-1 (%) | {metrics['knn_top1']:.2f} | weighted kNN, "
                        f"k = {metrics['knn_k']}, frozen features, train split as gallery |")
    lines = [
        _front_matter(cfg, metrics),
        f"# ViT encoder trained with supmim on `{d.data}`",
        "",
        f"A ViT ({m.embed_dim} wide, {m.depth} blocks, {m.num_heads} heads, patch "
        f"{m.patch_size} at {m.img_size} px, {m.in_chans} channel{'s' * (m.in_chans != 1)}, "
        f"{'CLS token' if m.global_pool == 'token' else 'average'} pooling) trained by "
        "[supmim](https://arxiv.org/abs/2312.00950): supervised classification plus an "
        "auxiliary masked-image-modeling loss in one stage.",
        "",
        "## Use",
        "",
        "```python",
        "import timm",
        f"model = timm.create_model('hf-hub:{repo_id or 'OWNER/NAME'}', pretrained=True)"
        "  # or 'local-dir:PATH'",
        "cfg = timm.data.resolve_data_config({}, model=model)  # input size, mean, std, crop",
        "transform = timm.data.create_transform(**cfg)",
        "```",
        "",
        f"Outputs: {len(classes)} classes ({', '.join(classes[:10])}"
        f"{', ...' if len(classes) > 10 else ''})." if head and classes else
        "Outputs: pooled features (the classification head was removed at export).",
        "",
        "## Training",
        "",
        *_mim_lines(cfg),
        "",
        f"- Data: `{d.data}`" + (f", a class-balanced subset of {d.train_samples} training "
                                 "images" if d.train_samples else "")
        + (f", {d.val_fraction:.0%} of train held out for validation" if d.val_fraction else "")
        + f"; crop `{d.crop}`, flip {d.hflip}, batch {d.batch_size}"
        + (f" x {t.accum_steps} accumulated" if t.accum_steps > 1 else "") + ".",
        f"- Optimisation: AdamW, lr {t.lr}, weight decay {t.weight_decay}, {t.warmup_epochs} "
        f"warm-up epochs then cosine to {t.min_lr}, {t.epochs} epochs, label smoothing "
        f"{t.label_smoothing}, drop-path {m.drop_path}"
        + (f", mixup {t.mixup}" if t.mixup else "") + (f", cutmix {t.cutmix}" if t.cutmix else "")
        + (f", EMA {t.ema_decay}" if t.ema else "") + f"; seed {t.seed}.",
        f"- Exported: checkpoint `{checkpoint}`, weights `{weights}`.",
        "",
        "## Results (measured on this run)",
        "",
    ]
    if measured:
        lines += ["| metric | value | how |", "| --- | --- | --- |", *measured]
    else:
        lines.append("No test metrics were recorded for this run.")
    if metrics.get("knn_top1") is None:
        lines += ["", "kNN top-1 was not measured: `supmim eval knn RUN` measures it."]
    lines += [
        "",
        "## Reproduce",
        "",
        "The run's full resolved configuration is `supmim_config.yaml` in this folder:",
        "",
        "```bash",
        "supmim train --config supmim_config.yaml --data DATA --out RUN",
        "```",
    ]
    if command:
        lines += ["", f"This folder was written by `{command}`."]
    lines += ["", "## License", "", "Not set: the owner of these weights chooses it (the "
              "`license` field above); the training data's terms apply as well.", ""]
    return "\n".join(lines)
