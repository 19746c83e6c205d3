"""``supmim train --dry-run``: everything a run would check before its first step, and what it
would cost, with nothing trained and nothing written to ``--out``.

It resolves the config, reads the data (split sizes, classes), checks the tokenizer (a given
one loads; ``auto`` says whether a cached one fits or one will be trained first), and builds
the trainer in a temporary folder to count the parameters and one optimizer step's FLOPs
(``torch.utils.flop_counter``: matmuls, convolutions and attention, forward and backward;
the VQ tokenizer's encoder included). A tokenizer that does not exist yet is stood in for by
an untrained one of the same architecture, which costs the same.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from supmim.config import RunConfig
from supmim.data.splits import build_run_data
from supmim.engine import dist
from supmim.errors import ConfigError
from supmim.metrics import step_flops


def plan(cfg: RunConfig) -> dict[str, Any]:
    """What a run of ``cfg`` would do: data sizes, tokenizer, steps, parameters, FLOPs."""
    import copy
    cfg = copy.deepcopy(cfg)
    data = build_run_data(cfg)
    batch = cfg.data.batch_size * dist.world_size() * cfg.train.accum_steps
    per_epoch = len(data.train) // batch
    total = per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    if per_epoch == 0:
        raise ConfigError(f"the training split has {len(data.train)} images, fewer than one "
                          f"batch of {batch}: lower data.batch_size")
    sizes = {"train": len(data.train)}
    if data.eval is not None and data.eval_split != data.test_split:
        sizes[data.eval_split] = len(data.eval)
    if data.test is not None:
        sizes[data.test_split] = len(data.test)
    result: dict[str, Any] = {
        "data": {**sizes, "classes": len(data.classes)},
        "global_batch": batch, "steps_per_epoch": per_epoch, "epochs": cfg.train.epochs,
        "optimizer_steps": total}
    with tempfile.TemporaryDirectory(prefix="supmim-dry-run-") as tmp:
        result["tokenizer"] = _tokenizer(cfg, Path(tmp) / "tok")
        result.update(_costs(cfg, data, Path(tmp) / "run"))
    return result


def _tokenizer(cfg: RunConfig, standin: Path) -> str | None:
    """What the run's tokenizer will be; points ``cfg`` at a loadable one for the counting."""
    mim = cfg.mim
    if not (mim.enabled and mim.target == "vq"):
        return None
    from supmim.targets.tokenizers.kinds import load_tokenizer
    if mim.tokenizer not in (None, "auto"):
        from supmim.run.tokenizer import check_tokenizer
        check_tokenizer(cfg)  # the message `supmim train` gives
        tok = load_tokenizer(mim.tokenizer)  # a broken or missing one fails here, clearly
        return (f"{mim.tokenizer} ({tok.kind}, f{tok.factor}, {tok.codebook_size} codes)")
    from supmim.run.tokenizer import tokenizer_recipe
    from supmim.run.tokenizer_cache import cache_dir, recipe_key
    entry = cache_dir(cfg) / recipe_key(cfg)
    if (entry / "tokenizer.json").is_file():
        mim.tokenizer = str(entry)
        return f"auto: the cached one for this data and recipe will be reused ({entry})"
    from supmim.targets.tokenizers.small_vq import VQTokenizer
    model_cfg, _ = tokenizer_recipe(cfg, steps=mim.tokenizer_steps)
    VQTokenizer(model_cfg).save(standin)
    mim.tokenizer = str(standin)
    return (f"auto: one will be trained first ({mim.tokenizer_steps} steps on the training "
            "split) and cached")


def _costs(cfg: RunConfig, data: Any, out: Path) -> dict[str, Any]:
    from supmim.engine.loop import Trainer
    cfg.train.checkpoint_every = 0
    trainer = Trainer(cfg, out, progress=False, data=data)
    trainer.setup()
    model = trainer.model
    encoder = sum(p.numel() for p in model.encoder.parameters())
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batch = next(iter(trainer.loaders.train))  # (images, labels, index) of one process
    micro = [batch] * cfg.train.accum_steps
    flops = step_flops(lambda: trainer.train_step(micro, 0))
    trainer.loaders.close()
    return {"parameters": {"encoder": encoder, "training_only": total - encoder},
            # this process's share of the step, times the processes
            "flops_per_step": flops * dist.world_size(), "device": str(trainer.device)}


def describe(cfg: RunConfig, result: dict[str, Any]) -> str:
    """The dry run's report, a few lines."""
    d = result["data"]
    sizes = ", ".join(f"{v:,} {k}" for k, v in d.items() if k != "classes")
    p = result["parameters"]
    lines = [
        "dry run: the config is valid and nothing was trained or written",
        f"  data: {cfg.data.data}: {sizes} images, {d['classes']} classes",
        f"  tokenizer: {result['tokenizer'] or 'none (target ' + cfg.mim.target + ')'}",
        f"  steps: {result['epochs']} epoch{'s' * (result['epochs'] != 1)} x {result['steps_per_epoch']:,} steps of "
        f"{result['global_batch']} images = {result['optimizer_steps']:,} optimizer steps",
        f"  parameters: {p['encoder'] / 1e6:.2f} M in the encoder (the exported model), "
        f"{p['training_only'] / 1e6:.2f} M more while training (decoder, MIM head)",
        f"  FLOPs per step: {_si(result['flops_per_step'])} (forward + backward); "
        f"{_si(result['flops_per_step'] * result['optimizer_steps'])} for the run",
    ]
    return "\n".join(lines)


def _si(flops: float) -> str:
    if flops <= 0:
        return "0 FLOP"
    exp = min(int(math.log10(flops) // 3), 5)
    return f"{flops / 10 ** (3 * exp):.3g} {['', 'k', 'M', 'G', 'T', 'P'][exp]}FLOP"
