"""The training loop: epochs of :class:`~supmim.engine.step.TrainStep`, evaluation after each,
checkpoints, logs, signals, and the final summary. The run directory's layout and checkpoint
format belong to :class:`~supmim.run.RunDir`; tokenizers are provisioned before the loop
starts (:func:`supmim.training.train`), and pictures are drawn by callbacks.

Randomness is derived, not carried (:mod:`supmim.seeds`): the data order comes from
``(seed, epoch)``, each sample's augmentation from ``(seed, epoch, position)``, each
micro-step's dropout / drop-path / mixup and MIM branch from ``(seed, step, rank, micro)``
and masks from ``(seed, epoch, sample index)``; resuming from any checkpoint (epoch or
mid-epoch step) therefore replays exactly what an uninterrupted run would do.

Nothing is lost to a crash: checkpoints are atomic, SIGTERM / Ctrl-C save one before exiting,
unreadable images are skipped and counted, and non-finite steps are skipped (up to
``train.max_bad_steps`` in a row).
"""

from __future__ import annotations

import copy
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from supmim.config import RunConfig
from supmim.data import EpochSampler, read_bad_log
from supmim.data.splits import RunData, build_run_data
from supmim.device import amp_dtype, resolve_device
from supmim.engine import dist
from supmim.engine.build import (Loaders, TrainParts, build_loaders, build_parts,
                                 guarded_batches)
from supmim.engine.evaluate import evaluate, evaluate_encoder
from supmim.engine.limits import RunLimits
from supmim.engine.masked_loader import with_masks, with_views
from supmim.engine.signals import StopRequest
from supmim.engine.state import TrainState, full_states, new_accumulator, restore
from supmim.engine.step import Batch, PendingSteps, StepRecord, TrainStep
from supmim.errors import CheckpointError, Interrupted, TrainingError
from supmim.loggers import LoggerSet, open_loggers
from supmim.run import RunDir, use_pretrained_stats
from supmim.run.tokenizer import check_tokenizer


class Callback:
    """Hooks into a run; override what you need. Called on every process."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """After epoch ``epoch`` (1-based) was evaluated and checkpointed."""

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> dict[str, Any] | None:
        """After the final evaluation, before ``summary.json`` is written; returned keys
        are added to the summary."""
        return None


class Trainer:
    """Trains one run. ``Trainer(cfg, out).fit()`` -> the summary dict.

    The config is copied: the caller's object is never changed."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path, *, resume: bool | str = False,
                 progress: bool = True, data: RunData | None = None,
                 callbacks: list[Callback] | None = None) -> None:
        """resume: False (a new run), True (continue; a checkpoint must exist) or "auto"
        (continue from the latest checkpoint if there is one, else start afresh).
        data: datasets to use instead of resolving ``cfg.data`` (benchmarks, tests)."""
        self.cfg = copy.deepcopy(cfg)
        self.run = RunDir(out_dir)
        self.out = self.run.path
        self.callbacks = list(callbacks or [])
        self._given_data = data
        self.progress = progress and dist.is_main()
        self.device = dist.setup(resolve_device(self.cfg.train.device))
        self.dtype = amp_dtype(self.cfg.train.amp, self.device)
        self.resume = self.run.resolve_resume(resume, writer=dist.is_main())
        self.ready = False

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Build data, model, optimizer and loaders (``fit`` calls it)."""
        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        check_tokenizer(cfg)
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
        if self._given_data is None:  # a timm start's mean/std unless data.mean/std are set
            use_pretrained_stats(cfg)
        self.data = self._given_data or build_run_data(cfg, bad_log=self.run.bad_files_path)
        self.loaders: Loaders = build_loaders(cfg, self.data, self.device)
        self.init_report: dict[str, list[str]] | None = None
        # a resumed run has its own weights
        init = self._init_from if cfg.train.init_from and not self.resume else None
        self.parts: TrainParts = build_parts(cfg, self.data, self.device,
                                             self.loaders.steps_per_epoch, init=init)
        if self.parts.token_views is not None:  # replay mim.token_cache's stored views
            self.loaders = with_views(self.loaders, self.parts.token_views)
        if self.parts.masker is not None and isinstance(self.loaders.sampler, EpochSampler):
            self.loaders = with_masks(self.loaders, self.parts.masker, cfg.train.seed)
        self.train_step_fn = TrainStep(self.parts, seed=cfg.train.seed,
                                       clip_grad=cfg.train.clip_grad, device=self.device,
                                       dtype=self.dtype)
        self.state = TrainState()
        self.described = self.run.describe(cfg, self.data)
        self.last_eval: dict[str, float] | None = None  # the final model's eval-split metrics
        self.stop = StopRequest()
        self.stopping = False  # any process got a signal (agreed when steps are read)
        self.pending = PendingSteps()  # steps whose results are still on the device
        self.limits = RunLimits(cfg, self.run, self.data)  # bad files, bad steps in a row
        self.loggers = LoggerSet()  # fit opens train.logger's, once the start step is known
        self.ready = True

    def _init_from(self, vit: Any) -> None:
        from supmim.run.sources import init_encoder
        self.init_report = init_encoder(vit, str(self.cfg.train.init_from),
                                        classes=self.data.classes)

    # the pieces most callers want by name
    @property
    def model(self) -> Any:
        return self.parts.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.parts.optimizer

    @property
    def scheduler(self) -> Any:
        return self.parts.scheduler

    @property
    def ema(self) -> Any:
        return self.parts.ema

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def steps_per_epoch(self) -> int:
        return self.loaders.steps_per_epoch

    @steps_per_epoch.setter
    def steps_per_epoch(self, value: int) -> None:  # benchmarks time a fixed number of steps
        self.loaders.steps_per_epoch = value

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, epoch: int, eval_metrics: dict[str, float], *,
                        mid_epoch: int | None = None) -> Path | None:
        """Checkpoint after epoch ``epoch`` (0-based), or inside it after ``mid_epoch`` of
        its steps; returns the folder written (main process) or None."""
        done = mid_epoch is None
        if self.parts.fsdp:  # gathering sharded state is collective: every process takes part
            weights, optim = full_states(self.parts)
        if not dist.is_main():
            dist.barrier()  # wait until the main process has written it
            return None
        if not self.parts.fsdp:
            weights, optim = full_states(self.parts)
        s = self.state
        saved = TrainState(epoch=epoch + 1 if done else epoch, step=s.step,
                           step_in_epoch=0 if done else mid_epoch, epochs_done=s.epochs_done,
                           best=s.best, timing=s.timing, skipped=s.skipped,
                           epoch_acc=new_accumulator() if done else s.epoch_acc)
        ema = self.parts.ema.module.state_dict() if self.parts.ema is not None else None
        folder = self.run.save_checkpoint(
            self.described, weights, {**saved.to_dict(), **optim}, ema, epoch=epoch + 1,
            step=s.step, end_of_epoch=done, eval_metrics=eval_metrics,
            best=done and s.best["epoch"] == epoch + 1, keep=self.cfg.train.keep_checkpoints)
        dist.barrier()
        return folder

    def _resume(self) -> None:
        """Continue from the newest checkpoint that verifies; broken newer ones are reported
        and set aside (never trained on, never deleted)."""
        folder, broken = self.run.newest_intact()
        if folder is None:
            listed = "; ".join(f"{p.name}: {why}" for p, why in broken)
            raise CheckpointError(f"no intact checkpoint in '{self.run.checkpoints_dir}' "
                                  f"({listed}). Nothing was changed; start a new run with "
                                  "another --out, or restore the files from a copy")
        weights, state, ema = self.run.load(folder.name, verify=False)  # just verified
        self.state = restore(self.parts, folder, weights, state, ema)
        if broken and dist.is_main():
            for line in self.run.set_aside_broken(broken, resumed=folder, step=self.state.step):
                print(f"supmim: warning: {line}", file=sys.stderr)
        if dist.is_main():
            self.run.trim_metrics(self.state.step)  # lines after the checkpoint are redone

    def _log(self, record: dict[str, Any]) -> None:
        if dist.is_main():
            self.run.append_metrics(record)
            self.loggers.log_metrics(record)

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        if not self.ready:
            self.setup()
        if self.resume:
            self._resume()
        elif dist.is_main():
            self.run.write_start(self.cfg, self.data)
        try:
            with open_loggers(self.cfg, self.out, step=self.step, resume=self.resume,
                              main=dist.is_main()) as self.loggers:  # closed on errors too
                return self._fit()
        finally:
            self.loaders.close()

    def _fit(self) -> dict[str, Any]:
        with self.stop:
            try:
                self._loop()
            except RuntimeError as err:
                if not dist.is_peer_failure(err):
                    raise
                # another torchrun process died (killed, out of memory): one line, not the
                # collective's traceback; torchrun reports which process it was
                said = re.sub(r"^\[[^\]]*\]\s*", "", str(err)).split(". ")[0][:160]
                raise TrainingError(
                    f"another process of this run stopped ({said}); "
                    f"the last checkpoint '{self.run.latest()}' is intact. Continue with the "
                    f"same torchrun command and `--out {self.run.path} --resume auto`") from err
        return self._finish()

    def _loop(self) -> None:
        for epoch in range(self.state.epoch, self.cfg.train.epochs):
            start, self.state.step_in_epoch = self.state.step_in_epoch, 0
            train_stats = self.train_one_epoch(epoch, start=start)
            if train_stats is None:  # stopped by a signal, checkpoint written
                return
            eval_metrics = self._evaluate_epoch()
            self.last_eval = {k: v for k, v in eval_metrics.items() if not k.startswith("ema_")}
            if eval_metrics.get("top1", -1.0) > self.state.best["top1"]:
                self.state.best = {"top1": eval_metrics["top1"], "epoch": epoch + 1}
            record = {"type": "epoch", "epoch": epoch + 1, "step": self.step,
                      "split": self.data.eval_split, **train_stats,
                      **{f"eval_{k}": v for k, v in eval_metrics.items()}}
            self._log(record)
            self.state.epochs_done = epoch + 1
            folder = self.save_checkpoint(epoch, eval_metrics)
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch + 1, record)
            self._check_stop(folder, agree=True)
            if self.cfg.train.max_steps and self.step >= self.cfg.train.max_steps:
                break

    def _check_stop(self, folder: Path | None, *, agree: bool = False) -> None:
        """After a signal: report the checkpoint just written and stop. ``agree``: ask every
        process first (a signal may have reached only some of them)."""
        if agree:
            flag = torch.tensor([float(self.stop.signum is not None)], device=self.device)
            self.stopping = bool(dist.all_reduce_sum(flag).item() > 0)
        if not self.stopping:
            return
        signum = self.stop.signum or signal.SIGTERM
        raise Interrupted(f"stopped by {signal.Signals(signum).name} at step {self.step}; "
                          f"checkpoint '{folder}' written. Continue with `supmim train "
                          f"--out {self.out} --resume auto`", signum=signum)

    def _evaluate_epoch(self) -> dict[str, float]:
        if self.loaders.eval is None:
            return {}
        metrics = self._eval_encoder(self.loaders.eval)
        if self.parts.ema is not None:
            ema = evaluate(self.parts.ema.module, self.loaders.eval, self.device, self.dtype)
            metrics.update({f"ema_{k}": v for k, v in ema.items() if k != "n"})
        return metrics

    def train_step(self, batches: list[Batch], epoch: int, *,
                   read: bool = True) -> dict[str, float] | None:
        """One optimizer step (counted) on its micro-batches (``train.accum_steps`` of
        (images, labels, index[, mask])); its statistics, or None when it was skipped.
        ``read=False`` leaves its results on the device (the loop reads them with
        :meth:`read_steps` every ``train.log_every`` steps) and returns None."""
        result = self.train_step_fn(batches, epoch=epoch, step=self.state.step,
                                    stop_asked=self.stop.signum is not None)
        self.state.step += 1
        self.pending.add(self.state.step, result)
        if not dist.is_distributed():  # one process: its own flag, nothing to agree on
            self.stopping = self.stop.signum is not None
        if not read:
            return None
        return self.read_steps()[-1].stats

    def read_steps(self) -> list[StepRecord]:
        """Bring the pending steps' results to the host (one transfer) and account for them
        in step order: epoch sums, skipped steps (logged, and ``train.max_bad_steps`` in a
        row stop the run), and - with several processes - the agreed stop flag."""
        records = self.pending.read()
        acc = self.state.epoch_acc
        for rec in records:
            if rec.stats is None:
                acc["skipped"] += 1
                self._log({"type": "skip", "step": rec.step, "loss": rec.loss,
                           **({"overflow": True} if rec.overflow else {})})
                self.limits.count_skip(self.state.skipped, step=rec.step, overflow=rec.overflow)
                continue
            acc["count"] += 1
            self.state.skipped["in_row"] = 0
            for k, v in rec.stats.items():
                acc["sums"][k] = acc["sums"].get(k, 0.0) + v
        if records and dist.is_distributed():
            self.stopping = records[-1].stopping
        return records

    def train_one_epoch(self, epoch: int, start: int = 0) -> dict[str, float] | None:
        """One pass over the training data from its ``start``-th step; returns epoch means
        and timings, or None when a signal stopped it (after writing a checkpoint)."""
        if not self.ready:
            self.setup()
        cfg = self.cfg
        if start == 0:
            self.state.epoch_acc = new_accumulator()
        acc, accum = self.state.epoch_acc, cfg.train.accum_steps  # accum: micro-batches/step
        steps_per_epoch = self.loaders.steps_per_epoch
        self.loaders.sampler.set_epoch(epoch, start=start * self.loaders.local_batch * accum)
        self.model.train()
        epoch_start = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=start,
                   desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=not self.progress, dynamic_ncols=True, leave=False)
        every = cfg.train.checkpoint_every
        batches = guarded_batches(self.loaders.train, self.run, group=accum)
        log_every = cfg.train.log_every
        for i, micro_batches in enumerate(batches, start=start):
            if i >= steps_per_epoch:
                break
            t0 = time.perf_counter()
            self.train_step(micro_batches, epoch, read=False)
            last = i + 1 >= steps_per_epoch or bool(cfg.train.max_steps
                                                    and self.step >= cfg.train.max_steps)
            due = bool(every and self.step % every == 0)
            # the host reads the device only here: every log_every steps, before a
            # checkpoint and at the end of the epoch (the time it waits counts as step time)
            if last or due or self.stopping or self.step % log_every == 0:
                self._report(self.read_steps(), bar, epoch, epoch_start, i + 1 - start)
            acc["step_seconds"] += time.perf_counter() - t0
            bar.update(1)
            stopping = self.stopping
            if not last and (stopping or due):
                acc["seconds"] += time.perf_counter() - epoch_start
                epoch_start = time.perf_counter()
                folder = self.save_checkpoint(epoch, {}, mid_epoch=i + 1)
                if stopping:
                    bar.close()
                    self._check_stop(folder)
        bar.close()
        acc["seconds"] += time.perf_counter() - epoch_start
        timing = self.state.timing
        timing["train_seconds"] += acc["seconds"]
        timing["step_seconds"] += acc["step_seconds"]
        timing["steps_timed"] += acc["count"] + acc["skipped"]
        count, steps = max(acc["count"], 1), max(acc["count"] + acc["skipped"], 1)
        means = {f"train_{k}": v / count for k, v in acc["sums"].items()}
        return {**means, "epoch_seconds": acc["seconds"],
                "step_seconds": acc["step_seconds"] / steps, "skipped_steps": acc["skipped"],
                "img_per_s": steps * cfg.data.batch_size * accum / max(acc["seconds"], 1e-9)}

    def _report(self, records: list[StepRecord], bar: Any, epoch: int, epoch_start: float,
                steps_here: int) -> None:
        """After reading steps back: the progress bar, the ``train`` line of the last step
        (when it is a logging step and was applied) and the bad-file check."""
        cfg, accum = self.cfg, self.cfg.train.accum_steps
        elapsed = time.perf_counter() - epoch_start
        rate = steps_here * cfg.data.batch_size * accum / max(elapsed, 1e-9)
        remaining = (cfg.train.epochs * self.steps_per_epoch - self.step) * elapsed / steps_here
        stats = records[-1].stats if records else None
        bar.set_postfix(loss=f"{stats['loss']:.3f}" if stats else "skip", img_s=f"{rate:.0f}",
                        eta=tqdm.format_interval(remaining), refresh=False)
        if stats is not None and self.step % cfg.train.log_every == 0:
            self._log({"type": "train", "epoch": epoch + 1, "step": self.step,
                       "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": rate,
                       **stats})
        self.limits.check_bad_files()

    def _final_eval(self, loader: Any) -> dict[str, float]:
        """The final model on ``loader``; the last epoch's numbers when it was the eval split."""
        if loader is self.loaders.eval and self.last_eval:
            return dict(self.last_eval)
        return self._eval_encoder(loader)

    def _eval_encoder(self, loader: Any) -> dict[str, float]:
        return evaluate_encoder(self.model, loader, self.device, self.dtype,
                                fsdp=self.parts.fsdp)

    def _finish(self) -> dict[str, Any]:
        """Final evaluation on val and test, callbacks, summary.json."""
        s, model, loaders = self.state, self.model, self.loaders
        summary: dict[str, Any] = {
            "steps": s.step, "seed": self.cfg.train.seed,
            "mim": model.has_mim, "mim_weight": model.mim_weight,
            "target": self.cfg.mim.target if model.has_mim else None,
            "eval_split": self.data.eval_split, "best": s.best,
            "init_from": self.cfg.train.init_from,
            "train_seconds": s.timing["train_seconds"],
            "mean_step_seconds": s.timing["step_seconds"] / max(s.timing["steps_timed"], 1),
            "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
            "device": str(self.device), "amp": str(self.dtype) if self.dtype else "off",
            "epochs_done": s.epochs_done, "skipped_steps": s.skipped["total"],
        }
        bad = read_bad_log(self.run.bad_files_path)
        summary["bad_files"] = {"count": len(bad), "files": sorted(bad)[:100],
                                "log": RunDir.BAD_FILES if bad else None}
        if loaders.eval is not None and self.data.eval_split == "val":
            summary["val"] = self._final_eval(loaders.eval)
        if loaders.test is not None:
            summary["test"] = self._final_eval(loaders.test)
            if self.parts.ema is not None:
                summary["test_ema"] = evaluate(self.parts.ema.module, loaders.test,
                                               self.device, self.dtype)
        summary["test_split"] = self.data.test_split
        for cb in self.callbacks:
            summary.update(cb.on_fit_end(self, summary) or {})
        if dist.is_main():
            self.run.write_summary(summary)
        return summary

