"""``supmim train`` in Python: provision the tokenizer, train, draw the MIM picture grid.

:func:`train` is the entry point the CLI, ``compare`` and ``sweep`` use. The loop itself
(:class:`~supmim.engine.loop.Trainer`) knows nothing of tokenizer training or pictures:
both happen here, before the loop starts and through a callback after it ends.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from supmim.config import RunConfig
from supmim.engine import dist
from supmim.device import resolve_device
from supmim.engine.loop import Callback, Trainer
from supmim.run.tokenizer import check_tokenizer
from supmim.errors import ConfigError
from supmim.loggers import check_installed, logger_names
from supmim.run import RunDir
from supmim.run.checkpoint import remove_stale_temps
from supmim.run.lock import RunLock, RunLocked


def provision_tokenizer(cfg: RunConfig, run: RunDir, *, progress: bool = True) -> RunConfig:
    """A copy of ``cfg`` whose VQ tokenizer is the run's own copy in ``RUN/tokenizer``.

    With no tokenizer given (``auto``, the default) one is copied from the tokenizer cache or
    trained there first (:mod:`supmim.run.tokenizer_cache`); a given tokenizer is copied in, so
    the run directory is self-contained. A run that already has its copy (a resume) keeps it.
    Other targets: ``cfg`` unchanged (copied)."""
    cfg = copy.deepcopy(cfg)
    mim = cfg.mim
    if not (mim.enabled and mim.target == "vq"):
        return cfg
    local = run.tokenizer_dir
    if not (local / "tokenizer.json").is_file():
        if mim.tokenizer in (None, "auto"):
            if dist.is_main():
                from supmim.run.tokenizer_cache import provide
                print(f"supmim: note: {provide(cfg, local, progress=progress)}", flush=True)
        elif dist.is_main():
            _copy_tokenizer(Path(mim.tokenizer or ""), local)
        dist.barrier()
    mim.tokenizer = str(local)
    return cfg


def _copy_tokenizer(src: Path, dest: Path) -> None:
    files = [src / "tokenizer.safetensors", src / "tokenizer.json"] if src.is_dir() \
        else [src, src.with_name("tokenizer.json")]
    for f in files:
        if not f.is_file():
            raise ConfigError(f"mim.tokenizer: '{f}' does not exist; pass the folder written "
                              "by `supmim tokenizer train`")
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dest / f.name)


class MimGridCallback(Callback):
    """``RUN/mim_grid.png`` at the end of a run: validation images, masked inputs, MIM
    predictions and the tokenizer's reconstructions. A picture that cannot be drawn never
    fails a finished run: the reason is printed and the summary says null."""

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> dict[str, Any] | None:
        model = trainer.model
        if not dist.is_main():
            return None
        if not model.has_mim or trainer.parts.fsdp or trainer.data.eval is None:
            return {"mim_grid": None}
        from supmim.visualize import save_run_grid
        cfg = trainer.cfg
        try:
            path = save_run_grid(model, trainer.data.eval, trainer.out / "mim_grid.png",
                                 masking=cfg.mim.masking, mask_ratio=cfg.mim.mask_ratio,
                                 seed=cfg.train.seed, title=f"target {cfg.mim.target}, "
                                 f"{cfg.mim.mask_ratio:.0%} of patches hidden")
        except Exception as err:  # noqa: BLE001 - see docstring
            print(f"supmim: note: could not draw the MIM grid ({type(err).__name__}: {err})")
            return {"mim_grid": None}
        trainer.loggers.log_image("mim_grid", path, trainer.step)
        return {"mim_grid": Path(path).name}


class FinalMetricsCallback(Callback):
    """The final evaluation of ``summary.json`` ("val", "test", "test_ema") to the
    experiment loggers, as a record of type "final" at the last step (``final/test_top1``):
    the numbers a run is compared by, which ``metrics.jsonl`` does not hold."""

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> dict[str, Any] | None:
        record = {f"{split}_{key}": value for split in ("val", "test", "test_ema")
                  for key, value in (summary.get(split) or {}).items()}
        if record:  # the loggers are an empty set on all but the main process
            trainer.loggers.log_metrics({"type": "final", "step": trainer.step, **record})
        return None


def train(cfg: RunConfig, out_dir: str | Path, *, resume: bool | str = False,
          progress: bool = True, callbacks: list[Callback] | None = None,
          lock: bool = True) -> dict[str, Any]:
    """Train one run into ``out_dir`` and return its summary.

    resume: False (a new run), True (continue; a checkpoint must exist) or "auto" (continue
    when there is a checkpoint, else start afresh). ``cfg`` is not changed. The run
    directory is locked for the whole run (one writer; ``lock=False`` when the caller
    already holds :class:`~supmim.run.lock.RunLock`)."""
    check_installed(logger_names(cfg.train.logger))  # before any work: names a missing extra
    dist.setup(resolve_device(cfg.train.device))  # rank 0 alone trains a tokenizer
    run = RunDir(out_dir)
    check_tokenizer(cfg, run)  # before the lock creates the run directory
    with writer_lock(run, wait=cfg.train.lock_wait, enabled=lock):
        resume = run.resolve_resume(resume, writer=dist.is_main())  # before any tokenizer
        if resume and dist.is_main():
            remove_stale_temps(run.path)  # a checkpoint write killed half-way
        cfg = provision_tokenizer(cfg, run, progress=progress)
        trainer = Trainer(cfg, run.path, resume=resume, progress=progress,
                          callbacks=[MimGridCallback(), FinalMetricsCallback(),
                                     *(callbacks or [])])
        return trainer.fit()


@contextmanager
def writer_lock(run: RunDir, *, wait: float = 0.0, enabled: bool = True) -> Iterator[None]:
    """Hold ``run``'s lock for the block. Under torchrun only the main process locks, and
    every process learns the outcome before any work starts."""
    held = RunLock(run.path, wait=wait) if enabled and dist.is_main() else None
    refused: str | None = None
    if held is not None:
        try:
            held.acquire()
        except RunLocked as err:
            refused = str(err)
    if enabled:
        refused = dist.broadcast_object(refused)  # type: ignore[assignment]
    if refused is not None:
        raise RunLocked(refused)
    try:
        yield
    finally:
        if held is not None:
            held.release()
