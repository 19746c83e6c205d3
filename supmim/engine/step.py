"""One optimizer step, read top to bottom: for each of its k micro-batches seeds, masks,
both passes and the loss (one forward of the joint model) and backward; then clipping, the
finite check, the update, the EMA.

    step_seeds(seed, step, rank, micro) -> global RNGs (dropout, drop-path, mixup), MIM seed
    sample_masks(...)            -> (B, N) bool, fixed per (seed, epoch, sample)
    model(images, labels, mask)  -> loss = CE_cls + lambda * target.loss(...)   (models/joint)
    scaler.scale(loss / k).backward()   (gradients reduced across processes on the last one)
    unscale; clip; skip the update when a loss or the gradient is not finite
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from supmim.engine import dist
from supmim.engine.build import TrainParts
from supmim.models.joint import StepOutput
from supmim.models.masking import sample_masks
from supmim.seeds import seed_all, step_seeds

# one micro-batch: images (B,C,H,W), labels (B,), index (B,) dataset positions
Batch = Sequence[Tensor]


@dataclass
class StepResult:
    """What one step reports: ``stats`` (loss, loss_cls, loss_mim, mim_acc; averaged over
    micro-batches and processes) or None when the step was skipped; ``loss`` the total loss
    either way; ``stopping`` whether any process was asked to stop; ``overflow`` whether a
    skip was fp16's loss scale overflowing (a finite loss; the scaler halves its scale)."""

    stats: dict[str, float] | None
    loss: float
    stopping: bool
    overflow: bool = False


class TrainStep:
    """Runs optimizer steps on ``parts``; ``step`` counts steps over the whole run."""

    def __init__(self, parts: TrainParts, *, seed: int, clip_grad: float | None,
                 device: torch.device, dtype: torch.dtype | None) -> None:
        self.parts, self.seed, self.device, self.dtype = parts, seed, device, dtype
        self.clip = clip_grad or math.inf

    def __call__(self, batches: Sequence[Batch], *, epoch: int, step: int,
                 stop_asked: bool = False) -> StepResult:
        """Optimizer step number ``step`` (0-based) on k = ``len(batches)`` micro-batches
        (images, labels, index). Each micro-batch's loss is divided by k, so the gradient is
        the mean over all k x B samples: every loss term is a mean over B samples or over a
        fixed number of masked patches per sample. The schedule is set to ``step + 1``
        afterwards, whether the update was applied or skipped."""
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
        means, finite, stopping = self._reduce(totals, norm, stop_asked)
        if finite:
            p.scaler.step(p.optimizer)  # optimizer.step() (fp16: unless the scaler saw an inf)
        else:
            p.optimizer.zero_grad(set_to_none=True)
        # an inf gradient at a scale >= 1 is the scale's fault (the scaler halves it), below
        # 1 the gradient's own
        overflow = (not finite and p.scaler.is_enabled() and math.isfinite(means[0])
                    and p.scaler.get_scale() >= 1.0)
        p.scaler.update()  # fp16: a smaller scale after an overflow (a skipped step)
        p.scheduler.step_update(num_updates=step + 1)
        if not finite:
            return StepResult(stats=None, loss=means[0], stopping=stopping, overflow=overflow)
        if p.ema is not None:
            p.ema.update(p.model.encoder, step=step + 1)
        stats = {"loss": means[0], "loss_cls": means[1]}
        if out.loss_mim is not None:
            stats["loss_mim"] = means[2]
        if out.mim_acc is not None:
            stats["mim_acc"] = means[3]
        return StepResult(stats=stats, loss=means[0], stopping=stopping)

    def _forward(self, batch: Batch, *, epoch: int, step: int, micro: int) -> StepOutput:
        """One micro-batch through the joint model, with its own seeds."""
        p = self.parts
        images, labels, index = batch
        seeds = step_seeds(self.seed, step, dist.rank(), micro)
        seed_all(seeds.global_)  # this micro-step's dropout, drop-path and mixup
        mask = sample_masks(p.masker, index, epoch, self.seed) if p.masker is not None else None
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if mask is not None:
            mask = mask.to(self.device, non_blocking=True)
        if p.mixup is not None:
            images, labels = p.mixup(images, labels)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            return p.step_model(images, labels, mask, mim_seed=seeds.mim)

    def _reduce(self, totals: Tensor, norm: Tensor, stop_asked: bool
                ) -> tuple[list[float], bool, bool]:
        """``totals`` (4,) (loss, loss_cls, loss_mim, mim_acc of this process) averaged over
        processes, whether the step is finite everywhere, and whether any process was asked
        to stop: one transfer per step."""
        flags = torch.stack([torch.isfinite(totals[0]) & torch.isfinite(norm),
                             torch.tensor(stop_asked, device=norm.device)])
        vec = torch.cat([totals.float(), flags.float()])
        world = dist.world_size()
        if world > 1:
            vec = dist.all_reduce_sum(vec)
            vec[:4] /= world
        values = vec.tolist()
        return values[:4], values[4] == world, values[5] > 0


def _values(out: StepOutput) -> Tensor:
    """(4,) float32, detached: loss, loss_cls, loss_mim, mim_acc (0 where absent)."""
    zero = out.loss.new_zeros(())
    parts = [out.loss, out.loss_cls, out.loss_mim if out.loss_mim is not None else zero,
             out.mim_acc if out.mim_acc is not None else zero]
    return torch.stack([x.detach().float() for x in parts])
