"""Everything a training run is made of, built from its config: the model (wrapped for DDP,
sharded for FSDP, compiled), optimizer, schedule, EMA, masker, mixup and the loaders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from timm.data import Mixup
from timm.models.vision_transformer import VisionTransformer
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Dataset

from supmim.config import RunConfig, compile_enabled
from supmim.data import EpochSampler
from supmim.data.splits import RunData
from supmim.data.streaming import StreamingImages
from supmim.engine import dist
from supmim.device import amp_dtype, grad_scaler
from supmim.engine.device_loader import (DeviceEvalLoader, DeviceTrainLoader,
                                        device_loader_refusal, resident, resident_eval)
from supmim.engine.signals import quiet_worker
from supmim.errors import ConfigError, TrainingError
from supmim.models import SupMimModel, build_model, grid_of
from supmim.models.masking import Masker, build_masker
from supmim.run import RunDir
from supmim.targets import build_target, target_class


@dataclass
class Loaders:
    """``train``/``eval``/``test`` are DataLoaders over worker processes, or the
    device-resident loaders of :mod:`supmim.engine.device_loader` (``resident``)."""

    train: Any
    sampler: EpochSampler | StreamingImages  # set_epoch(epoch, start) before each epoch
    eval: Any
    test: Any
    local_batch: int  # this process's share of data.batch_size (one micro-batch)
    steps_per_epoch: int  # optimizer steps: loader batches // train.accum_steps
    resident: bool = False

    def close(self) -> None:
        """Stop the persistent workers now. Left to interpreter exit they would hang it:
        they ignore SIGTERM (``quiet_worker``), and exit joins them after a SIGTERM. Dropping
        the loader's iterator shuts them down (DataLoader keeps it in ``_iterator``)."""
        for loader in (self.train, self.eval, self.test):
            workers = getattr(loader, "_iterator", None)
            if workers is not None and hasattr(workers, "_shutdown_workers"):
                workers._shutdown_workers()
            if loader is not None:
                loader._iterator = None


@dataclass
class TrainParts:
    """The trainable pieces. ``step_model`` is what a step calls (DDP-wrapped and/or
    compiled); ``model`` is the plain module whose state dicts are saved."""

    model: SupMimModel
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    ema: ModelEmaV3 | None
    masker: Masker | None
    mixup: Mixup | None
    fsdp: bool
    # fp16's loss scaler (a pass-through for other precisions); its state is checkpointed
    scaler: torch.amp.GradScaler = field(
        default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))
    # mim.token_cache's views (supmim.data.views) on the training device: the step reads
    # each sample's token ids from it instead of running the frozen tokenizer
    token_views: Any = None


def build_mim_target(cfg: RunConfig) -> nn.Module | None:
    """The frozen MIM target ``cfg.mim`` names (None without MIM)."""
    mim, m = cfg.mim, cfg.model
    if not mim.enabled:
        return None
    return build_target(mim.target, img_size=m.img_size, patch_size=m.patch_size,
                        in_chans=m.in_chans, **target_class(mim.target).options_from(mim))


def build_loaders(cfg: RunConfig, data: RunData, device: torch.device) -> Loaders:
    """The training loader (this process's share of a (seed, epoch) permutation, full
    batches only) and the sharded evaluation loaders. An optimizer step takes
    ``train.accum_steps`` of the training loader's batches."""
    d, world, accum = cfg.data, dist.world_size(), cfg.train.accum_steps
    if d.batch_size % world:
        raise ConfigError(f"data.batch_size ({d.batch_size}) is the global batch and must "
                          f"divide evenly over the {world} processes")
    if len(data.train) < d.batch_size:
        raise ConfigError(f"data.batch_size ({d.batch_size}) is larger than the "
                          f"{len(data.train)} training images")
    local_batch = d.batch_size // world
    common: dict[str, Any] = dict(num_workers=d.num_workers, pin_memory=device.type == "cuda",
                                  persistent_workers=d.num_workers > 0,
                                  worker_init_fn=quiet_worker if d.num_workers else None)
    # drop_last: every step sees a full batch (mixup needs an even size; step times compare)
    if isinstance(data.train, StreamingImages):  # streamed: it is its own sampler
        sampler: EpochSampler | StreamingImages = data.train
        data.train.place(dist.rank(), world, local_batch)
        # not persistent: each epoch's iteration copies the epoch (set_epoch) into the workers
        train = DataLoader(data.train, batch_size=local_batch, drop_last=True,
                           **{**common, "persistent_workers": False})
        batches = len(data.train) // world // local_batch
    else:
        sampler = EpochSampler(len(data.train), seed=cfg.train.seed, rank=dist.rank(),
                               world=world)
        train = DataLoader(data.train, batch_size=local_batch, sampler=sampler,
                           drop_last=True, **common)
        batches = len(train)
    # the incomplete accumulation at the end of an epoch is dropped, as drop_last does
    steps = batches // accum
    if steps == 0:
        raise ConfigError(f"data.batch_size x train.accum_steps ({d.batch_size} x {accum}) is "
                          f"larger than the {len(data.train)} training images; lower one of them")
    if cfg.train.max_steps:
        steps = min(steps, cfg.train.max_steps)

    def eval_loader(ds: Dataset | None) -> DataLoader | None:
        if ds is None:
            return None
        if isinstance(ds, StreamingImages):  # one unshuffled pass, split over the processes
            ds.place(dist.rank(), world)
            return DataLoader(ds, batch_size=d.eval_batch_size, **common)
        return DataLoader(ds, batch_size=d.eval_batch_size,
                          sampler=dist.ShardSampler(len(ds), dist.rank(), world), **common)
    evaluation = eval_loader(data.eval)
    test = eval_loader(data.test) if data.test is not data.eval else evaluation
    loaders = Loaders(train=train, sampler=sampler, eval=evaluation, test=test,
                      local_batch=local_batch, steps_per_epoch=steps)
    total = steps * cfg.train.epochs if not cfg.train.max_steps else cfg.train.max_steps
    if device_loader_refusal(cfg, data, total) is None:
        return resident_loaders(cfg, data, loaders, device)
    return loaders


def resident_loaders(cfg: RunConfig, data: RunData, loaders: Loaders,
                     device: torch.device) -> Loaders:
    """``loaders`` with the training set, and the evaluation sets whose transform decoding
    reproduces, served from ``device`` (:mod:`supmim.engine.device_loader`)."""
    d = cfg.data
    assert isinstance(loaders.sampler, EpochSampler)
    train = DeviceTrainLoader(resident(cfg, data.train, device), loaders.sampler,
                              loaders.local_batch, seed=cfg.train.seed,
                              pad=d.pad if d.crop == "pad" else 0, hflip=d.hflip,
                              mean=data.mean, std=data.std)

    def eval_loader(ds: Dataset | None, worker_loader: Any) -> Any:
        if not resident_eval(cfg, ds):
            return worker_loader
        return DeviceEvalLoader(resident(cfg, ds, device), d.eval_batch_size, mean=data.mean,
                                std=data.std, rank=dist.rank(), world=dist.world_size())
    evaluation = eval_loader(data.eval, loaders.eval)
    test = eval_loader(data.test, loaders.test) if data.test is not data.eval else evaluation
    return replace(loaders, train=train, eval=evaluation, test=test, resident=True)


def build_parts(cfg: RunConfig, data: RunData, device: torch.device, steps_per_epoch: int, *,
                init: Callable[[VisionTransformer], Any] | None = None) -> TrainParts:
    """Model, optimizer, cosine schedule (per step), EMA, masker and mixup of ``cfg``.

    ``init`` loads weights into the fresh encoder (``train.init_from``)."""
    t = cfg.train
    mixing = t.mixup > 0 or t.cutmix > 0
    views = None
    if cfg.mim.token_cache:  # checked against the run before anything; MIM off: views only
        from supmim.run.token_views import load_for_run
        views = load_for_run(cfg, data, device)
    model = build_model(cfg, num_classes=len(data.classes), mean=data.mean, std=data.std,
                        target=build_mim_target(cfg), init=init)
    model.to(device)
    if t.grad_checkpointing:
        model.encoder.set_grad_checkpointing(True)
    # DDP sees one forward (both losses) per backward; state dicts come from `model`
    step_model: nn.Module = model
    if t.fsdp:
        if not dist.is_distributed():
            raise ConfigError("train.fsdp needs torchrun (several processes); without it use "
                              "the default single-process training")
        dist.shard_model(model)
    elif dist.is_distributed():
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
    if compile_enabled(t.compile, device):
        # the parts, not step_model: see SupMimModel.compile_parts (step_model and `model`
        # stay the eager modules, so state dicts and DDP's no_sync are unchanged)
        model.compile_parts(dynamic=False)
    # fused AdamW (one kernel for all parameters, on GPUs and CPUs): its found_inf input
    # skips a non-finite step on the device (engine.step); timm's layer-decay groups use
    # SupMimModel.group_matcher (the encoder's blocks, under "encoder.")
    optimizer = create_optimizer_v2(model, opt="adamw", lr=t.lr, weight_decay=t.weight_decay,
                                    layer_decay=t.layer_decay, fused=True)
    total = t.epochs * steps_per_epoch
    warmup = min(int(round(t.warmup_epochs * steps_per_epoch)), total - 1)
    scheduler = CosineLRScheduler(optimizer, t_initial=max(total - warmup, 1), lr_min=t.min_lr,
                                  warmup_t=warmup, warmup_lr_init=min(1e-6, t.lr),
                                  warmup_prefix=True, t_in_epochs=False)
    mixup = Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing,
                  num_classes=len(data.classes)) if mixing else None
    masker = build_masker(cfg.mim.masking, grid_of(model.encoder), cfg.mim.mask_ratio) \
        if model.has_mim else None
    ema = ModelEmaV3(model.encoder, decay=t.ema_decay) if t.ema else None
    return TrainParts(model=model, step_model=step_model, optimizer=optimizer,
                      scheduler=scheduler, ema=ema, masker=masker, mixup=mixup, fsdp=t.fsdp,
                      scaler=grad_scaler(amp_dtype(t.amp, device), device),
                      token_views=views)


def guarded_batches(loader: DataLoader, run: RunDir, group: int = 1) -> Iterator[list[Any]]:
    """``loader``'s batches in lists of ``group`` (the micro-batches of one optimizer step;
    an incomplete last list is dropped); a data-loader worker that died (killed, out of
    memory) becomes a TrainingError naming the intact checkpoint instead of a traceback."""
    it, batches = iter(loader), []
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as err:
            if "DataLoader worker" not in str(err):
                raise
            raise TrainingError(f"a data-loader worker died ({str(err).splitlines()[0]}); the "
                                f"last checkpoint '{run.latest()}' is intact. Continue with "
                                f"`supmim train --out {run.path} --resume auto` (lower "
                                "data.num_workers if it ran out of memory)") from err
        batches.append(batch)
        if len(batches) == group:
            yield batches
            batches = []
