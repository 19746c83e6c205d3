"""The training loop: one stage of supervised + MIM training, evaluated every epoch.

The run directory it leaves behind:
    config.yaml      the fully resolved configuration
    metrics.jsonl    one JSON object per logged step ("train") and per epoch ("epoch")
    summary.json     final metrics (val and test top-1 / top-5, timings)
    checkpoints/     epoch_NNNN/ and step_NNNNNNNN/ (the latest ones) and best/, each resumable
    tokenizer/       a copy of the VQ tokenizer used (target "vq"), so the run is self-contained
    bad_files.txt    unreadable images that were skipped (only when there were any)

Randomness is derived, not carried: the data order comes from ``(seed, epoch)``, each sample's
augmentation from ``(seed, epoch, position)``, each step's dropout / drop-path / mixup from
``(seed, step)`` and masks from ``(seed, epoch, sample index)``; resuming from any checkpoint
(epoch or mid-epoch step) therefore replays exactly what an uninterrupted run would do.

Nothing is lost to a crash: checkpoints are atomic, SIGTERM / Ctrl-C save one before exiting,
unreadable images are skipped and counted, and non-finite steps are skipped (up to
``train.max_bad_steps`` in a row).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from supmim.config import RunConfig, save_config
from supmim.data import EpochSampler, mix_seed, read_bad_log, seed_all
from supmim.data.splits import RunData, build_run_data, split_indices  # noqa: F401 (re-export)
from supmim.device import amp_dtype, resolve_device  # noqa: F401 (re-export)
from supmim.engine import dist
from supmim.engine.checkpoint import (atomic_write_text, epoch_folder, latest_checkpoint,
                                      load_checkpoint, prune_checkpoints, save_checkpoint,
                                      step_folder)
from supmim.errors import CheckpointError, ConfigError, Interrupted, TrainingError
from supmim.masking import build_masker, sample_masks
from supmim.models import SupMimModel, create_vit, grid_of
from supmim.models.pretrained import init_encoder
from supmim.targets import build_target

BAD_FILES = "bad_files.txt"


def accuracy_counts(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose label is in the top-k predictions, for each k."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.unsqueeze(1)
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             dtype: torch.dtype | None = None) -> dict[str, float]:
    """Top-1 / top-5 (%) and mean CE of a classifier; leaves the model's mode as it was.

    Samples labelled -1 (unreadable files, see ``ImageDataset``) are left out.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # n, top1 hits, top5 hits, loss sum
    for images, labels, *_ in loader:
        keep = labels >= 0
        if not bool(keep.all()):
            images, labels = images[keep], labels[keep]
        if len(labels) == 0:
            continue
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images)
        loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        top1, top5 = accuracy_counts(logits, labels)
        totals += torch.tensor([len(labels), top1, top5, float(loss)], dtype=torch.float64)
    model.train(was_training)
    n, top1, top5, loss = dist.all_reduce_sum(totals.to(device)).tolist()
    n = max(n, 1.0)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "n": int(n)}


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` (main process only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if dist.is_main():
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")


def _quiet_worker(_: int) -> None:
    """Data-loader workers leave SIGINT/SIGTERM to the main process, which checkpoints and
    then shuts them down; otherwise a Ctrl-C kills them mid-batch and the save fails."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step (a second signal
    stops at once). Only installs handlers in the main thread."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """Trains one run. ``Trainer(cfg, out).fit()`` -> the summary dict."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path, *, resume: bool | str = False,
                 progress: bool = True, data: RunData | None = None) -> None:
        """resume: False (a new run), True (continue; a checkpoint must exist) or "auto"
        (continue from the latest checkpoint if there is one, else start afresh).
        data: datasets to use instead of resolving ``cfg.data`` (benchmarks, tests)."""
        self.cfg, self.out = cfg, Path(out_dir)
        self._given_data = data
        self.progress = progress and dist.is_main()
        self.device = dist.setup(resolve_device(cfg.train.device))
        self.dtype = amp_dtype(cfg.train.amp, self.device)
        self.resume = resume
        self._check_run_dir()

    # ---------------------------------------------------------------- setup
    def _check_run_dir(self) -> None:
        has_ckpt = latest_checkpoint(self.out) is not None
        if self.resume == "auto":
            self.resume = has_ckpt
            if not has_ckpt and dist.is_main():
                # a run killed before its first checkpoint: nothing to keep but its log lines
                for name in ("metrics.jsonl", BAD_FILES):
                    (self.out / name).unlink(missing_ok=True)
        if self.resume and not has_ckpt:
            raise CheckpointError(f"--resume: no checkpoint found in '{self.out}/checkpoints'")
        if not self.resume and (self.out / "metrics.jsonl").exists():
            raise ConfigError(f"run directory '{self.out}' already holds a run; pass --resume "
                              "to continue it, or choose a new --out")
        mim = self.cfg.mim
        if mim.enabled and mim.target == "vq" and mim.tokenizer not in (None, "auto") \
                and not self.resume and not Path(mim.tokenizer).exists():
            raise ConfigError(f"mim.tokenizer '{mim.tokenizer}' does not exist; train one with "
                              "`supmim tokenizer train --data D --out TOK`, or pass --tokenizer "
                              "auto")

    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
        self.data = self._given_data or build_run_data(cfg, bad_log=self.out / BAD_FILES)
        self._prepare_tokenizer()
        target = self._build_target()
        # Seed right before the encoder is built: its initialisation is identical with and
        # without MIM (the target, built above, may consume random numbers).
        seed_all(cfg.train.seed)
        vit = create_vit(cfg.model, num_classes=len(self.data.classes))
        self.init_report = None
        if cfg.train.init_from and not self.resume:  # a resumed run has its own weights
            self.init_report = init_encoder(vit, cfg.train.init_from,
                                            classes=self.data.classes)
        mixing = cfg.train.mixup > 0 or cfg.train.cutmix > 0
        self.model = SupMimModel(vit, mean=self.data.mean, std=self.data.std, mim=cfg.mim,
                                 target=target, seed=cfg.train.seed,
                                 label_smoothing=0.0 if mixing else cfg.train.label_smoothing)
        self.model.to(self.device)
        if cfg.train.grad_checkpointing:
            self.model.encoder.set_grad_checkpointing(True)
        # DDP sees one forward (both losses) per backward; state dicts come from self.model
        self.step_model: nn.Module = self.model
        self.fsdp = cfg.train.fsdp
        if self.fsdp:
            if not dist.is_distributed():
                raise ConfigError("train.fsdp needs torchrun (several processes); without it "
                                  "use the default single-process training")
            dist.shard_model(self.model)
        elif dist.is_distributed():
            self.step_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        if cfg.train.compile:
            self.step_model = torch.compile(self.step_model)
        self.mixup = Mixup(mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix,
                           label_smoothing=cfg.train.label_smoothing,
                           num_classes=len(self.data.classes)) if mixing else None
        self.masker = build_masker(cfg.mim.masking, grid_of(vit), cfg.mim.mask_ratio) \
            if self.model.mim is not None else None
        self._build_loaders()
        # fused AdamW on GPUs (one kernel for all parameters); timm's layer-decay groups
        # use SupMimModel.group_matcher (the encoder's blocks, under "encoder.")
        extra = {"fused": True} if self.device.type == "cuda" else {}
        self.optimizer = create_optimizer_v2(self.model, opt="adamw", lr=cfg.train.lr,
                                             weight_decay=cfg.train.weight_decay,
                                             layer_decay=cfg.train.layer_decay, **extra)
        total = cfg.train.epochs * self.steps_per_epoch
        warmup = min(int(round(cfg.train.warmup_epochs * self.steps_per_epoch)), total - 1)
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=max(total - warmup, 1),
                                           lr_min=cfg.train.min_lr, warmup_t=warmup,
                                           warmup_lr_init=min(1e-6, cfg.train.lr),
                                           warmup_prefix=True, t_in_epochs=False)
        self.ema = ModelEmaV3(self.model.encoder, decay=cfg.train.ema_decay) \
            if cfg.train.ema else None
        self.metrics = MetricsLog(self.out / "metrics.jsonl")
        self.start_epoch, self.step, self.best = 0, 0, {"top1": -1.0, "epoch": -1}
        self.start_step_in_epoch, self.epochs_done = 0, 0
        self.last_eval: dict[str, float] | None = None  # the final model's eval-split metrics
        self.timing = {"train_seconds": 0.0, "step_seconds": 0.0, "steps_timed": 0}
        self.skipped = {"total": 0, "in_row": 0}  # non-finite steps
        self.acc = self._new_accumulator()
        self.stop = StopRequest()
        self.stopping = False  # any process got a signal (agreed on every step)
        self._bad_seen = (-1, 0)  # (bad-file log size, distinct files) at the last check

    def _prepare_tokenizer(self) -> None:
        """Target "vq": train a tokenizer for "auto", and keep a copy in the run directory."""
        mim = self.cfg.mim
        if not (mim.enabled and mim.target == "vq"):
            return
        local = self.out / "tokenizer"
        if (local / "tokenizer.json").is_file():  # resuming, or already trained
            mim.tokenizer = str(local)
            return
        if mim.tokenizer == "auto":
            from supmim.tokenizer import train_tokenizer_for_run
            if dist.is_main():
                train_tokenizer_for_run(self.cfg, local, steps=mim.tokenizer_steps,
                                        progress=self.progress)
            dist.barrier()
        elif dist.is_main():
            src = Path(mim.tokenizer or "")
            files = [src / "tokenizer.safetensors", src / "tokenizer.json"] if src.is_dir() \
                else [src, src.with_name("tokenizer.json")]
            local.mkdir(parents=True, exist_ok=True)
            for f in files:
                if not f.is_file():
                    raise ConfigError(f"mim.tokenizer: '{f}' does not exist; pass the folder "
                                      "written by `supmim tokenizer train`")
                shutil.copy2(f, local / f.name)
        dist.barrier()
        mim.tokenizer = str(local)

    def _build_target(self) -> nn.Module | None:
        mim, m = self.cfg.mim, self.cfg.model
        if not mim.enabled:
            return None
        return build_target(mim.target, img_size=m.img_size, patch_size=m.patch_size,
                            in_chans=m.in_chans, tokenizer=mim.tokenizer, norm_pix=mim.norm_pix,
                            precision=mim.tokenizer_precision,
                            soft_temperature=mim.soft_temperature
                            if mim.token_loss == "soft" else None)

    def _build_loaders(self) -> None:
        d, world = self.cfg.data, dist.world_size()
        if d.batch_size % world:
            raise ConfigError(f"data.batch_size ({d.batch_size}) is the global batch and must "
                              f"divide evenly over the {world} processes")
        self.local_batch = d.batch_size // world
        if len(self.data.train) < d.batch_size:
            raise ConfigError(f"data.batch_size ({d.batch_size}) is larger than the "
                              f"{len(self.data.train)} training images")
        self.sampler = self.make_sampler(self.data.train)
        common: dict[str, Any] = dict(num_workers=d.num_workers,
                                      pin_memory=self.device.type == "cuda",
                                      persistent_workers=d.num_workers > 0,
                                      worker_init_fn=_quiet_worker if d.num_workers else None)
        # drop_last: every step sees a full batch (mixup needs an even size; step times compare)
        self.train_loader = DataLoader(self.data.train, batch_size=self.local_batch,
                                       sampler=self.sampler, drop_last=True, **common)
        self.steps_per_epoch = len(self.train_loader)
        if self.cfg.train.max_steps:
            self.steps_per_epoch = min(self.steps_per_epoch, self.cfg.train.max_steps)

        def eval_loader(ds: Dataset | None) -> DataLoader | None:
            if ds is None:
                return None
            return DataLoader(ds, batch_size=d.eval_batch_size,
                              sampler=dist.ShardSampler(len(ds), dist.rank(), world), **common)
        self.eval_loader = eval_loader(self.data.eval)
        self.test_loader = eval_loader(self.data.test) \
            if self.data.test is not self.data.eval else self.eval_loader

    def make_sampler(self, dataset: Dataset) -> EpochSampler:
        """The training sampler: this process's share of a (seed, epoch) permutation."""
        return EpochSampler(len(dataset), seed=self.cfg.train.seed, rank=dist.rank(),
                            world=dist.world_size())

    @staticmethod
    def _new_accumulator() -> dict[str, Any]:
        """Running sums of the epoch in progress (saved in mid-epoch checkpoints)."""
        return {"sums": {}, "count": 0, "skipped": 0, "seconds": 0.0, "step_seconds": 0.0}

    # ---------------------------------------------------------------- checkpoints
    def _save(self, epoch: int, eval_metrics: dict[str, float], *,
              mid_epoch: int | None = None) -> Path | None:
        """Checkpoint after epoch ``epoch`` (0-based), or inside it after ``mid_epoch`` of
        its steps; returns the folder written (main process) or None."""
        done = mid_epoch is None
        if self.fsdp:  # gathering sharded state is collective: every process takes part
            weights, optim = self._full_states()
        if not dist.is_main():
            dist.barrier()  # wait until the main process has written it
            return None
        if not self.fsdp:
            weights, optim = self._full_states()
        state = {"epoch": epoch + 1 if done else epoch, "step": self.step,
                 "step_in_epoch": 0 if done else mid_epoch,
                 "epoch_acc": self._new_accumulator() if done else self.acc,
                 **optim, "best": self.best,
                 "timing": self.timing, "skipped": self.skipped,
                 "epochs_done": self.epochs_done}
        meta = {"epoch": epoch + 1, "step": self.step, "end_of_epoch": done,
                "eval": eval_metrics}
        ema_state = self.ema.module.state_dict() if self.ema is not None else None
        folder = epoch_folder(self.out, epoch + 1) if done else step_folder(self.out, self.step)
        save_checkpoint(folder, weights, state, meta, ema_state)
        if done and self.best["epoch"] == epoch + 1:
            save_checkpoint(self.out / "checkpoints" / "best", weights, state, meta, ema_state)
        prune_checkpoints(self.out, self.cfg.train.keep_checkpoints)
        dist.barrier()
        return folder

    def _full_states(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Unsharded weights (without the frozen target) and optimizer state. Under FSDP every
        process takes part in gathering them; the files do not depend on the process count."""
        if not self.fsdp:
            return self.model.trainable_state_dict(), {"optimizer": self.optimizer.state_dict()}
        weights, optim = dist.full_state(self.model, self.optimizer)
        weights = {k: v for k, v in weights.items() if not k.startswith("target.")}
        return weights, {"optimizer_by_name": optim}

    def _load(self) -> None:
        folder = latest_checkpoint(self.out)
        assert folder is not None
        weights, state, ema_state = load_checkpoint(folder)
        own = self.model.state_dict()
        missing = [k for k in own if k not in weights and not k.startswith("target.")]
        unexpected = [k for k in weights if k not in own]
        wrong = [k for k in weights if k in own and weights[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(f"checkpoint '{folder}' does not match this model: missing "
                                  f"{missing[:5]}, unexpected {unexpected[:5]}, other shapes "
                                  f"{wrong[:5]} (a tokenizer with another codebook size, or "
                                  "other model.* keys?)")
        if self.fsdp and "optimizer_by_name" not in state:
            raise CheckpointError(f"checkpoint '{folder}' was written without train.fsdp; "
                                  "resume it with train.fsdp=false")
        if "optimizer_by_name" in state:
            dist.load_full_state(self.model, self.optimizer, weights, state["optimizer_by_name"])
        else:
            self.model.load_state_dict(weights, strict=False)
            self.optimizer.load_state_dict(state["optimizer"])
        # The schedule is a pure function of the step (so --epochs can be extended on resume).
        self.scheduler.step_update(num_updates=int(state["step"]))
        if self.ema is not None and ema_state is not None:
            self.ema.module.load_state_dict(ema_state)
        self.start_epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best, self.timing = dict(state["best"]), dict(state["timing"])
        self.start_step_in_epoch = int(state.get("step_in_epoch", 0))
        self.acc = dict(state.get("epoch_acc") or self._new_accumulator())
        self.skipped = dict(state.get("skipped", self.skipped))
        self.epochs_done = int(state.get("epochs_done", self.start_epoch))
        self._trim_metrics(self.step)

    def _trim_metrics(self, step: int) -> None:
        """Drop log lines written after the checkpoint being resumed (they will be redone)."""
        path = self.out / "metrics.jsonl"
        if not dist.is_main() or not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= step:
                    kept.append(line)
            except ValueError:  # a line cut short by the crash
                continue
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        self._setup()
        if self.resume:
            self._load()
        elif dist.is_main():
            save_config(self.cfg, self.out / "config.yaml")
            (self.out / "classes.json").write_text(json.dumps(self.data.classes))
            stats = {"mean": list(self.data.mean), "std": list(self.data.std),
                     "train_size": len(self.data.train), "eval_split": self.data.eval_split,
                     "eval_size": len(self.data.eval) if self.data.eval is not None else 0,
                     "test_split": self.data.test_split,
                     "test_size": len(self.data.test) if self.data.test is not None else 0}
            (self.out / "data_stats.json").write_text(json.dumps(stats, indent=2))
        with self.stop:
            self._loop()
        return self._finish()

    def _loop(self) -> None:
        epochs = self.cfg.train.epochs
        for epoch in range(self.start_epoch, epochs):
            start, self.start_step_in_epoch = self.start_step_in_epoch, 0
            train_stats = self.train_one_epoch(epoch, start=start)
            if train_stats is None:  # stopped by a signal, checkpoint written
                return
            eval_metrics = self._evaluate_epoch()
            self.last_eval = {k: v for k, v in eval_metrics.items() if not k.startswith("ema_")}
            if eval_metrics.get("top1", -1.0) > self.best["top1"]:
                self.best = {"top1": eval_metrics["top1"], "epoch": epoch + 1}
            self.metrics.write({"type": "epoch", "epoch": epoch + 1, "step": self.step,
                                "split": self.data.eval_split, **train_stats,
                                **{f"eval_{k}": v for k, v in eval_metrics.items()}})
            self.epochs_done = epoch + 1
            folder = self._save(epoch, eval_metrics)
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
        if self.eval_loader is None:
            return {}
        metrics = self._eval_encoder(self.eval_loader)
        if self.ema is not None:
            ema = evaluate(self.ema.module, self.eval_loader, self.device, self.dtype)
            metrics.update({f"ema_{k}": v for k, v in ema.items() if k != "n"})
        return metrics

    def _epoch_seed(self, epoch: int) -> int:
        return self.cfg.train.seed * 100_003 + epoch

    def train_one_epoch(self, epoch: int, start: int = 0) -> dict[str, float] | None:
        """One pass over the training data from its ``start``-th step; returns epoch means
        and timings, or None when a signal stopped it (after writing a checkpoint)."""
        cfg, acc = self.cfg, self.acc
        if start == 0:
            self.acc = acc = self._new_accumulator()
        self.sampler.set_epoch(epoch, start=start * self.local_batch)
        self.model.train()
        epoch_start, done_before = time.perf_counter(), acc["count"] + acc["skipped"]
        total_steps = cfg.train.epochs * self.steps_per_epoch
        bar = tqdm(total=self.steps_per_epoch, initial=start,
                   desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=not self.progress, dynamic_ncols=True, leave=False)
        every = cfg.train.checkpoint_every
        for i, (images, labels, index) in enumerate(self.train_loader, start=start):
            if i >= self.steps_per_epoch:
                break
            t0 = time.perf_counter()
            # this step's dropout, drop-path and mixup draw from (seed, step, rank) alone
            seed_all(mix_seed(cfg.train.seed, self.step, 0x57E9, dist.rank()))
            stats = self.train_step(images, labels, index, epoch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            acc["step_seconds"] += time.perf_counter() - t0
            if stats is None:
                acc["skipped"] += 1
            else:
                acc["count"] += 1
                for k, v in stats.items():
                    acc["sums"][k] = acc["sums"].get(k, 0.0) + v
            elapsed = time.perf_counter() - epoch_start
            steps_here = acc["count"] + acc["skipped"] - done_before
            rate = steps_here * cfg.data.batch_size / max(elapsed, 1e-9)
            remaining = (total_steps - self.step) * elapsed / max(steps_here, 1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}" if stats else "skip", img_s=f"{rate:.0f}",
                            eta=_fmt_seconds(remaining), refresh=False)
            bar.update(1)
            if stats is not None and self.step % cfg.train.log_every == 0:
                self.metrics.write({"type": "train", "epoch": epoch + 1, "step": self.step,
                                    "lr": self.optimizer.param_groups[0]["lr"],
                                    "img_per_s": rate, **stats})
            self._check_bad_files()
            last = i + 1 >= self.steps_per_epoch or (cfg.train.max_steps
                                                     and self.step >= cfg.train.max_steps)
            stopping = self.stopping
            if not last and (stopping or (every and self.step % every == 0)):
                acc["seconds"] += time.perf_counter() - epoch_start
                epoch_start = time.perf_counter()
                folder = self._save(epoch, {}, mid_epoch=i + 1)
                if stopping:
                    bar.close()
                    self._check_stop(folder)
        bar.close()
        acc["seconds"] += time.perf_counter() - epoch_start
        self.timing["train_seconds"] += acc["seconds"]
        self.timing["step_seconds"] += acc["step_seconds"]
        self.timing["steps_timed"] += acc["count"] + acc["skipped"]
        count, steps = max(acc["count"], 1), max(acc["count"] + acc["skipped"], 1)
        means = {f"train_{k}": v / count for k, v in acc["sums"].items()}
        return {**means, "epoch_seconds": acc["seconds"],
                "step_seconds": acc["step_seconds"] / steps, "skipped_steps": acc["skipped"],
                "img_per_s": steps * cfg.data.batch_size / max(acc["seconds"], 1e-9)}

    def _check_bad_files(self) -> None:
        """Stop once unreadable files exceed ``data.max_bad_fraction`` of the data."""
        path = self.out / BAD_FILES
        size = path.stat().st_size if path.is_file() else 0
        if size == self._bad_seen[0]:
            return
        bad = read_bad_log(path)
        self._bad_seen = (size, len(bad))
        total = sum(len(ds) for ds in (self.data.train, self.data.eval, self.data.test)
                    if ds is not None)
        limit = self.cfg.data.max_bad_fraction
        if len(bad) > limit * total:
            listed = ", ".join(list(bad)[:3])
            raise TrainingError(
                f"{len(bad)} unreadable image files (more than data.max_bad_fraction={limit} "
                f"of {total}), e.g. {listed}; all are listed in '{path}'. Replace or remove "
                "them, or raise data.max_bad_fraction, then continue with --resume auto")

    def train_step(self, images: Tensor, labels: Tensor, index: Tensor,
                   epoch: int) -> dict[str, float] | None:
        """One optimizer step; returns its scalar statistics, or None when the loss or the
        gradient was not finite and the step was skipped (weights left unchanged)."""
        cfg = self.cfg
        mask = sample_masks(self.masker, index, epoch, cfg.train.seed) \
            if self.masker is not None else None
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if mask is not None:
            mask = mask.to(self.device, non_blocking=True)
        if self.mixup is not None:
            images, labels = self.mixup(images, labels)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            out = self.step_model(images, labels, mask, mim_seed=self._epoch_seed(epoch)
                                  * 65_537 + self.step + 7_919 * dist.rank())
        self.optimizer.zero_grad(set_to_none=True)
        # Backward always runs, even on a NaN loss: under DDP every process must take part in
        # the gradient all-reduce. A NaN anywhere then shows in the total gradient norm,
        # which is the same on every process, so all skip the step together.
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                              cfg.train.clip_grad or math.inf)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
            norm = norm.full_tensor()
        values, finite = self._step_values(out, norm)
        self.step += 1
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step_update(num_updates=self.step)
            self._skip_step(values[0])
            return None
        self.skipped["in_row"] = 0
        self.optimizer.step()
        self.scheduler.step_update(num_updates=self.step)
        if self.ema is not None:
            self.ema.update(self.model.encoder, step=self.step)
        stats = {"loss": values[0], "loss_cls": values[1]}
        if out.loss_mim is not None:
            stats["loss_mim"] = values[2]
        if out.mim_acc is not None:
            stats["mim_acc"] = values[3]
        return stats

    def _step_values(self, out: Any, norm: Tensor) -> tuple[list[float], bool]:
        """Losses and MIM accuracy averaged over processes, whether the step is finite
        everywhere, and whether any process was asked to stop: one transfer per step."""
        zero = out.loss.new_zeros(())
        parts = [out.loss, out.loss_cls, out.loss_mim if out.loss_mim is not None else zero,
                 out.mim_acc if out.mim_acc is not None else zero]
        flags = [torch.isfinite(out.loss) & torch.isfinite(norm),
                 torch.tensor(self.stop.signum is not None, device=norm.device)]
        vec = torch.stack([p.detach().float() for p in parts] + [f.float() for f in flags])
        world = dist.world_size()
        if world > 1:
            vec = dist.all_reduce_sum(vec)
            vec[:4] /= world
        values = vec.tolist()
        self.stopping = values[5] > 0
        return values[:4], values[4] == world

    def _skip_step(self, loss: float) -> None:
        self.skipped["total"] += 1
        self.skipped["in_row"] += 1
        self.metrics.write({"type": "skip", "step": self.step, "loss": loss})
        if self.skipped["in_row"] >= self.cfg.train.max_bad_steps:
            last = latest_checkpoint(self.out)
            raise TrainingError(
                f"{self.skipped['in_row']} steps in a row had a non-finite loss or gradient "
                f"(up to step {self.step}; train.max_bad_steps={self.cfg.train.max_bad_steps}). "
                f"The last good checkpoint '{last}' is intact. Lower train.lr, set "
                "train.clip_grad, or check the data, then continue with --resume auto")

    def _final_eval(self, loader: DataLoader) -> dict[str, float]:
        """The final model on ``loader``; the last epoch's numbers when it was the eval split."""
        if loader is self.eval_loader and self.last_eval:
            return dict(self.last_eval)
        return self._eval_encoder(loader)

    def _eval_encoder(self, loader: DataLoader) -> dict[str, float]:
        """Evaluate the encoder; under FSDP the root's own parameters (patch embedding, head)
        are gathered first, as the encoder is called outside the root's forward."""
        if not self.fsdp:
            return evaluate(self.model.encoder, loader, self.device, self.dtype)
        self.model.unshard()
        try:
            return evaluate(self.model.encoder, loader, self.device, self.dtype)
        finally:
            self.model.reshard()

    def _finish(self) -> dict[str, Any]:
        """Final evaluation on val and test, summary.json."""
        summary: dict[str, Any] = {
            "steps": self.step, "seed": self.cfg.train.seed,
            "mim": self.model.mim is not None, "mim_weight": self.model.mim_weight,
            "target": self.cfg.mim.target if self.model.mim is not None else None,
            "eval_split": self.data.eval_split, "best": self.best,
            "init_from": self.cfg.train.init_from,
            "train_seconds": self.timing["train_seconds"],
            "mean_step_seconds": self.timing["step_seconds"] / max(self.timing["steps_timed"], 1),
            "encoder_params": sum(p.numel() for p in self.model.encoder.parameters()),
            "device": str(self.device), "amp": str(self.dtype) if self.dtype else "off",
        }
        summary["epochs_done"] = self.epochs_done
        summary["skipped_steps"] = self.skipped["total"]
        bad = read_bad_log(self.out / BAD_FILES)
        summary["bad_files"] = {"count": len(bad), "files": sorted(bad)[:100],
                                "log": BAD_FILES if bad else None}
        if self.eval_loader is not None and self.data.eval_split == "val":
            summary["val"] = self._final_eval(self.eval_loader)
        if self.test_loader is not None:
            summary["test"] = self._final_eval(self.test_loader)
            if self.ema is not None:
                summary["test_ema"] = evaluate(self.ema.module, self.test_loader, self.device,
                                               self.dtype)
        summary["test_split"] = self.data.test_split
        if dist.is_main():
            summary["mim_grid"] = self._save_grid()
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        return summary

    def _save_grid(self) -> str | None:
        """RUN/mim_grid.png: validation images, masked inputs, MIM predictions and the
        tokenizer's reconstructions. A picture that cannot be drawn never fails a finished
        run: the reason is printed and the summary says null."""
        if self.model.mim is None or self.fsdp or self.data.eval is None:
            return None
        from supmim.visualize import save_run_grid
        try:
            path = save_run_grid(self.model, self.data.eval, self.out / "mim_grid.png",
                                 seed=self.cfg.train.seed)
        except Exception as err:  # noqa: BLE001 - see docstring
            print(f"supmim: note: could not draw the MIM grid ({type(err).__name__}: {err})")
            return None
        return Path(path).name


def _fmt_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train(cfg: RunConfig, out_dir: str | Path, *, resume: bool | str = False,
          progress: bool = True) -> dict[str, Any]:
    """Python API: train one run and return its summary (``resume``: see :class:`Trainer`)."""
    return Trainer(cfg, out_dir, resume=resume, progress=progress).fit()
