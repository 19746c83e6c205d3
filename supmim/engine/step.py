"""One optimizer step, read top to bottom: for each of its k micro-batches seeds, masks,
both passes and the loss (one forward of the joint model) and backward; then clipping, the
finite check, the update, the EMA.

    step_seeds(seed, step, rank, micro) -> global RNGs (dropout, drop-path, mixup), MIM seed
    masks                        -> (B, N) bool, fixed per (seed, epoch, sample): built by
                                    the data loader (supmim.data.MaskedItems), else here
    model(images, labels, mask)  -> loss = CE_cls + lambda * target.loss(...)   (models/joint)
    scaler.scale(loss / k).backward()   (gradients reduced across processes on the last one)
    unscale; clip; skip the update when a loss or the gradient is not finite

The step never waits for the device: the losses, the finite check, the stop flag and the
skip decision stay device tensors (:class:`StepResult`). A skipped step is skipped on the
device, by the fused AdamW's ``found_inf`` input and a zero EMA weight; the loop reads the
results of many steps at once (:class:`PendingSteps`, every ``train.log_every`` steps and
before a checkpoint). An optimizer without a fused step falls back to reading the flag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from supmim.engine import dist
from supmim.engine.build import TrainParts
from supmim.models.joint import StepOutput
from supmim.models.masking import sample_masks
from supmim.seeds import seed_all, step_seeds

# one micro-batch: images (B,C,H,W), labels (B,), index (B,) dataset positions, and
# optionally mask (B,N) bool (the loader builds it when the run has a MIM branch)
Batch = Sequence[Tensor]

# the columns of StepResult.row
ROW = ("loss", "loss_cls", "loss_mim", "mim_acc", "applied", "stopping", "overflow")


@dataclass
class StepResult:
    """One step's outcome, still on the device: ``row`` (7,) float32 with the columns of
    :data:`ROW` (losses and MIM accuracy averaged over micro-batches and processes;
    ``applied`` 1 unless the step was skipped; ``stopping`` 1 when any process was asked to
    stop; ``overflow`` 1 when a skip was fp16's loss scale overflowing: a finite loss, the
    scaler halves its scale). ``has_mim`` / ``has_acc``: whether those columns mean
    anything."""

    row: Tensor
    has_mim: bool
    has_acc: bool


@dataclass
class StepRecord:
    """A step's outcome read back on the host: ``stats`` (loss, loss_cls, loss_mim,
    mim_acc) or None when it was skipped; ``loss`` the total loss either way."""

    step: int
    stats: dict[str, float] | None
    loss: float
    stopping: bool
    overflow: bool = False


@dataclass
class PendingSteps:
    """Steps whose results are still on the device; :meth:`read` brings them all back in
    one transfer, in step order."""

    items: list[tuple[int, StepResult]] = field(default_factory=list)

    def add(self, step: int, result: StepResult) -> None:
        self.items.append((step, result))

    def read(self) -> list[StepRecord]:
        if not self.items:
            return []
        rows = torch.stack([r.row for _, r in self.items]).tolist()  # the one host read
        records = [_record(step, r, row) for (step, r), row in zip(self.items, rows)]
        self.items = []
        return records


def _record(step: int, result: StepResult, row: list[float]) -> StepRecord:
    v = dict(zip(ROW, row))
    stats = None
    if v["applied"] > 0.5:
        stats = {"loss": v["loss"], "loss_cls": v["loss_cls"]}
        if result.has_mim:
            stats["loss_mim"] = v["loss_mim"]
        if result.has_acc:
            stats["mim_acc"] = v["mim_acc"]
    return StepRecord(step=step, stats=stats, loss=v["loss"], stopping=v["stopping"] > 0.5,
                      overflow=v["overflow"] > 0.5)


class TrainStep:
    """Runs optimizer steps on ``parts``; ``step`` counts steps over the whole run."""

    def __init__(self, parts: TrainParts, *, seed: int, clip_grad: float | None,
                 device: torch.device, dtype: torch.dtype | None) -> None:
        self.parts, self.seed, self.device, self.dtype = parts, seed, device, dtype
        self.clip = clip_grad or math.inf
        # the stop flag as a device value without a host-to-device copy per step
        self._flags = (torch.zeros((), device=device), torch.ones((), device=device))

    def __call__(self, batches: Sequence[Batch], *, epoch: int, step: int,
                 stop_asked: bool = False) -> StepResult:
        """Optimizer step number ``step`` (0-based) on k = ``len(batches)`` micro-batches
        (images, labels, index[, mask]). Each micro-batch's loss is divided by k, so the
        gradient is the mean over all k x B samples: every loss term is a mean over B
        samples or over a fixed number of masked patches per sample. The schedule is set
        to ``step + 1`` afterwards, whether the update was applied or skipped."""
        p, k = self.parts, len(batches)
        p.optimizer.zero_grad(set_to_none=True)
        totals: Tensor | None = None
        for micro, batch in enumerate(batches):
            with dist.gradient_sync(p.step_model, p.model, enabled=micro == k - 1,
                                    fsdp=p.fsdp):
                out = self._forward(batch, epoch=epoch, step=step, micro=micro)
                # Backward always runs, even on a NaN loss: under DDP every process must take
                # part in the gradient reduction. A NaN anywhere then shows in the total
                # gradient norm, which is the same on every process, so all skip together.
                p.scaler.scale(out.loss / k).backward()
            values = _values(out) / k
            totals = values if totals is None else totals + values
        assert totals is not None, "an optimizer step needs at least one micro-batch"
        p.scaler.unscale_(p.optimizer)  # fp16: clip and check the true gradient
        norm = torch.nn.utils.clip_grad_norm_(p.model.parameters(), self.clip)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
            norm = norm.full_tensor()
        vec = self._reduce(totals, norm, stop_asked)  # (6,): means, applied, stopping
        applied = vec[4]
        # an inf gradient at a scale >= 1 is the scale's fault (the scaler halves it), below
        # 1 the gradient's own
        overflow = torch.zeros_like(applied)
        if p.scaler.is_enabled():
            overflow = ((applied < 0.5) & torch.isfinite(vec[0])
                        & (p.scaler._get_scale_async() >= 1.0)).float()
        _update_where(p.optimizer, applied)
        p.scaler.update()  # fp16: a smaller scale after an overflow (a skipped step)
        p.scheduler.step_update(num_updates=step + 1)
        if p.ema is not None:
            ema_update_where(p.ema, p.model.encoder, step + 1, applied)
        return StepResult(row=torch.cat([vec, overflow.reshape(1)]),
                          has_mim=out.loss_mim is not None, has_acc=out.mim_acc is not None)

    def _forward(self, batch: Batch, *, epoch: int, step: int, micro: int) -> StepOutput:
        """One micro-batch through the joint model, with its own seeds."""
        p = self.parts
        images, labels, index = batch[:3]
        seeds = step_seeds(self.seed, step, dist.rank(), micro)
        seed_all(seeds.global_)  # this micro-step's dropout, drop-path and mixup
        mask = None
        if p.masker is not None:
            mask = batch[3] if len(batch) > 3 else sample_masks(p.masker, index, epoch, self.seed)
            mask = mask.to(self.device, non_blocking=True)
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        cached: dict[str, Tensor] = {}
        if p.token_views is not None and mask is not None:  # ids of this epoch's views
            at = index.to(self.device, non_blocking=True)
            cached["targets"] = p.token_views.ids_of(at, p.token_views.view_of(epoch, at))
        if p.mixup is not None:
            images, labels = p.mixup(images, labels)
        # the masker hides this many in every row: static gathers, no host sync
        count = p.masker.count if p.masker is not None else None
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            return p.step_model(images, labels, mask, mim_seed=seeds.mim, num_masked=count,
                                **cached)

    def _reduce(self, totals: Tensor, norm: Tensor, stop_asked: bool) -> Tensor:
        """(6,) on the device: ``totals`` (loss, loss_cls, loss_mim, mim_acc of this process)
        averaged over processes, 1 if the step is finite on every process, 1 if any process
        was asked to stop. One all-reduce, no host read."""
        finite = (torch.isfinite(totals[0]) & torch.isfinite(norm)).float()
        vec = torch.cat([totals.float(), finite.reshape(1), self._flags[stop_asked].reshape(1)])
        world = dist.world_size()
        if world > 1:
            vec = dist.all_reduce_sum(vec)
            vec = torch.cat([vec[:4] / world, (vec[4:5] > world - 0.5).float(),
                             (vec[5:6] > 0.5).float()])
        return vec


def _update_where(optimizer: torch.optim.Optimizer, applied: Tensor) -> None:
    """``optimizer.step()`` when ``applied`` (0-d, 1. or 0.) is 1, decided on the device by a
    fused optimizer (its ``found_inf`` input skips the whole update, the step count
    included); other optimizers read the flag."""
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.found_inf = 1.0 - applied  # type: ignore[attr-defined]
        optimizer.grad_scale = None  # type: ignore[attr-defined]  # already unscaled
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale  # type: ignore[attr-defined]
    elif applied.item() > 0.5:
        optimizer.step()


def ema_update_where(ema: nn.Module, model: nn.Module, step: int, applied: Tensor) -> None:
    """timm's ``ModelEmaV3.update(model, step)`` (ema += (1 - decay) * (model - ema)), with
    the weight multiplied by ``applied`` (0-d, 1. or 0.) so a skipped step leaves the EMA as
    it was without a host read."""
    weight = applied * (1.0 - ema.get_decay(step))
    with torch.no_grad():
        pairs = list(zip(ema.module.state_dict().values(), model.state_dict().values()))
        ema_f = [e for e, m in pairs if e.is_floating_point()]
        diff = torch._foreach_sub([m.to(device=e.device, dtype=e.dtype) for e, m in pairs
                                   if e.is_floating_point()], ema_f)
        torch._foreach_mul_(diff, weight)
        torch._foreach_add_(ema_f, diff)
        for e, m in pairs:
            if not e.is_floating_point():
                e.copy_(torch.where(applied > 0.5, m, e))


def _values(out: StepOutput) -> Tensor:
    """(4,) float32, detached: loss, loss_cls, loss_mim, mim_acc (0 where absent)."""
    zero = out.loss.new_zeros(())
    parts = [out.loss, out.loss_cls, out.loss_mim if out.loss_mim is not None else zero,
             out.mim_acc if out.mim_acc is not None else zero]
    return torch.stack([x.detach().float() for x in parts])
