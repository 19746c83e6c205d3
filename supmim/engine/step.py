"""One optimizer step, read top to bottom: seeds, masks, both passes and the loss (one
forward of the joint model), backward, clipping, the finite check, the update, the EMA.

    step_seeds(seed, step, rank) -> global RNGs (dropout, drop-path, mixup) and the MIM seed
    sample_masks(...)            -> (B, N) bool, fixed per (seed, epoch, sample)
    model(images, labels, mask)  -> loss = CE_cls + lambda * target.loss(...)   (models/joint)
    loss.backward(); clip; skip the update when the loss or gradient is not finite
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from supmim.engine import dist
from supmim.engine.build import TrainParts
from supmim.models.joint import StepOutput
from supmim.models.masking import sample_masks
from supmim.seeds import seed_all, step_seeds


@dataclass
class StepResult:
    """What one step reports: ``stats`` (loss, loss_cls, loss_mim, mim_acc; averaged over
    processes) or None when the step was skipped; ``loss`` the total loss either way;
    ``stopping`` whether any process was asked to stop."""

    stats: dict[str, float] | None
    loss: float
    stopping: bool


class TrainStep:
    """Runs optimizer steps on ``parts``; ``step`` counts steps over the whole run."""

    def __init__(self, parts: TrainParts, *, seed: int, clip_grad: float | None,
                 device: torch.device, dtype: torch.dtype | None) -> None:
        self.parts, self.seed, self.device, self.dtype = parts, seed, device, dtype
        self.clip = clip_grad or math.inf

    def __call__(self, images: Tensor, labels: Tensor, index: Tensor, *, epoch: int, step: int,
                 stop_asked: bool = False) -> StepResult:
        """Optimizer step number ``step`` (0-based) on a batch: images (B,C,H,W), labels
        (B,), index (B,) dataset positions (they fix the masks). The schedule is set to
        ``step + 1`` afterwards, whether the update was applied or skipped."""
        p = self.parts
        seeds = step_seeds(self.seed, step, dist.rank())
        seed_all(seeds.global_)  # this step's dropout, drop-path and mixup
        mask = sample_masks(p.masker, index, epoch, self.seed) if p.masker is not None else None
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if mask is not None:
            mask = mask.to(self.device, non_blocking=True)
        if p.mixup is not None:
            images, labels = p.mixup(images, labels)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            out = p.step_model(images, labels, mask, mim_seed=seeds.mim)
        p.optimizer.zero_grad(set_to_none=True)
        # Backward always runs, even on a NaN loss: under DDP every process must take part in
        # the gradient all-reduce. A NaN anywhere then shows in the total gradient norm,
        # which is the same on every process, so all skip the step together.
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(p.model.parameters(), self.clip)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
            norm = norm.full_tensor()
        values, finite, stopping = self._reduce(out, norm, stop_asked)
        if finite:
            p.optimizer.step()
        else:
            p.optimizer.zero_grad(set_to_none=True)
        p.scheduler.step_update(num_updates=step + 1)
        if not finite:
            return StepResult(stats=None, loss=values[0], stopping=stopping)
        if p.ema is not None:
            p.ema.update(p.model.encoder, step=step + 1)
        stats = {"loss": values[0], "loss_cls": values[1]}
        if out.loss_mim is not None:
            stats["loss_mim"] = values[2]
        if out.mim_acc is not None:
            stats["mim_acc"] = values[3]
        return StepResult(stats=stats, loss=values[0], stopping=stopping)

    def _reduce(self, out: StepOutput, norm: Tensor, stop_asked: bool
                ) -> tuple[list[float], bool, bool]:
        """Losses and MIM accuracy averaged over processes, whether the step is finite
        everywhere, and whether any process was asked to stop: one transfer per step."""
        zero = out.loss.new_zeros(())
        parts = [out.loss, out.loss_cls, out.loss_mim if out.loss_mim is not None else zero,
                 out.mim_acc if out.mim_acc is not None else zero]
        flags = [torch.isfinite(out.loss) & torch.isfinite(norm),
                 torch.tensor(stop_asked, device=norm.device)]
        vec = torch.stack([x.detach().float() for x in parts] + [f.float() for f in flags])
        world = dist.world_size()
        if world > 1:
            vec = dist.all_reduce_sum(vec)
            vec[:4] /= world
        values = vec.tolist()
        return values[:4], values[4] == world, values[5] > 0
