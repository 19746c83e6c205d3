"""The joint model: one module call computes the supervised and the MIM loss.

    images (B,C,H,W), labels (B,) or soft (B,num_classes)
     |- supervised: encoder(images) -> logits -> CE(labels)           (clean image)
     |- MIM:        target(images) -> (B,N) ids | (B,N,D) values      (frozen, no grad)
                    forward_masked(encoder, images, mask) -> decoder -> (B,M,out_dim)
                    CE / MSE on the M hidden positions only (gathered, static shapes)
    loss = CE_cls + weight * loss_mim

Computing both in one ``forward`` keeps DDP at one forward per backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from supmim.models.decoder import MimDecoder
from supmim.models.encoder import forward_masked, gather_rows, grid_of, hidden_indices


@dataclass
class StepOutput:
    loss: Tensor  # scalar, what is back-propagated
    loss_cls: Tensor
    logits: Tensor  # (B, num_classes)
    loss_mim: Tensor | None = None
    mim_acc: Tensor | None = None  # token accuracy on hidden patches (token targets only)


class SupMimModel(nn.Module):
    """Encoder + (optional) MIM decoder and frozen target.

    ``target=None`` gives the plain supervised model. ``weight`` is lambda; ``passes`` 2
    classifies the clean image (the paper), 1 the masked one (SupMAE); ``mask_token``
    replaces hidden patches by a learned [MASK] embedding (BEiT) instead of dropping them
    (MAE). The MIM branch's randomness (drop-path) runs on a forked RNG seeded per step, and
    the decoder is initialised on a forked RNG seeded by ``init_seed``, so the supervised
    branch sees exactly the random numbers it would see without MIM: with weight 0 the
    encoder trains bit-for-bit like the baseline.

    ``num_masked`` (an argument of the MIM calls): the hidden count of every row of the
    mask passed with it, which the trainer's masker fixes. The hidden positions are then
    gathered with static shapes: no ``nonzero``, so no host sync on CUDA and no graph break
    under ``torch.compile``. It must be the mask's count (rows are picked by a sort, not
    checked: a check would read the mask on the host); None falls back to ``nonzero``, for
    masks of any count that is the same in every row.
    """

    def __init__(self, encoder: VisionTransformer, *, mean: Sequence[float],
                 std: Sequence[float], target: nn.Module | None = None, weight: float = 1.0,
                 passes: int = 2, mask_token: bool = False, decoder_dim: int = 128,
                 decoder_depth: int = 1, decoder_heads: int = 4, label_smoothing: float = 0.0,
                 init_seed: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.label_smoothing = label_smoothing
        chans = encoder.patch_embed.proj.in_channels
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, chans, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, chans, 1, 1),
                             persistent=False)
        self.weight, self.passes = float(weight), int(passes)
        self.target = target
        # compile_parts: compiled callables by method name
        self._compiled: dict[str, Callable[..., Any]] = {}
        self.decoder: MimDecoder | None = None
        self.mask_token: nn.Parameter | None = None
        if target is None:
            return
        for p in target.parameters():
            p.requires_grad_(False)
        target.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            if mask_token:
                self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
                nn.init.trunc_normal_(self.mask_token, std=0.02)
            self.decoder = MimDecoder(encoder.embed_dim, grid_of(encoder),
                                      encoder.num_prefix_tokens, int(target.out_dim),
                                      dim=decoder_dim, depth=decoder_depth, heads=decoder_heads)

    @property
    def has_mim(self) -> bool:
        return self.target is not None

    @property
    def mim_weight(self) -> float:
        return self.weight if self.has_mim else 0.0

    def train(self, mode: bool = True) -> "SupMimModel":
        super().train(mode)
        if self.target is not None:
            self.target.eval()  # frozen, always in eval mode
        return self

    def no_weight_decay(self) -> set[str]:
        """Parameter names the timm optimizer factory exempts from weight decay."""
        names = {f"encoder.{n}" for n in self.encoder.no_weight_decay()}
        if self.decoder is not None:
            names |= {f"decoder.{n}" for n in self.decoder.no_weight_decay()}
        if self.mask_token is not None:
            names.add("mask_token")
        return names

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The encoder's timm layer groups under the ``encoder.`` prefix, for layer-wise lr
        decay; decoder, mask token and head fall outside them and keep the full lr."""
        def prefix(rule: Any) -> Any:
            if isinstance(rule, str):
                return "|".join(r"^encoder\." + alt.lstrip("^") for alt in rule.split("|"))
            return [(prefix(regex), suffix) for regex, suffix in rule]
        return {name: prefix(rule) for name, rule in self.encoder.group_matcher(coarse).items()}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Weights to checkpoint: encoder, decoder and mask token, not the frozen target."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("target.")}

    def compile_parts(self, **options: Any) -> None:
        """``torch.compile`` the clean pass (encoder + classifier loss), the masked pass with
        the decoder and the MIM loss, and the frozen target, each on its own; the trainer
        passes the masker's hidden count with every mask (``num_masked``), so the masked pass
        has static shapes.

        Parts, not one compile of the whole forward: the MIM branch's ``fork_rng`` and
        ``manual_seed(mim_seed)`` break the graph, so the RNG fork stays plain eager code
        between compiled graphs (each part one graph without a break), the MIM branch's
        random numbers (drop-path) come from the forked generator, and the clean pass is the
        same graph with and without MIM.
        The compiled callables live in a plain dict, not as modules: state dict keys, DDP
        and FSDP wrapping and the EMA copy of the encoder are those of the eager model. The
        MIM loss is in the masked pass's graph: hidden positions are a static gather."""
        names = ["_clean"] + (["mim_targets", "_masked_loss", "_one_pass_parts"]
                              if self.has_mim else [])
        self._compiled = {name: torch.compile(getattr(self, name), **options) for name in names}

    def _part(self, name: str) -> Callable[..., Any]:
        """The compiled ``name`` after :meth:`compile_parts`, else the eager method."""
        return self._compiled.get(name) or getattr(self, name)

    def unnormalize(self, images: Tensor) -> Tensor:
        """Normalised (B,C,H,W) -> [0, 1]."""
        return (images * self.std + self.mean).clamp(0.0, 1.0)

    def forward(self, images: Tensor, labels: Tensor, mask: Tensor | None = None,
                mim_seed: int = 0, targets: Tensor | None = None,
                num_masked: int | None = None) -> StepOutput:
        """images (B,C,H,W) normalised; labels (B,) ids or (B,K) soft; mask (B,N) bool with
        ``num_masked`` True in every row (None: any count, found by ``nonzero``);
        ``targets``: the MIM targets of these images (a view cache's (B,N) ids), used
        instead of running the frozen target."""
        if self.has_mim and mask is not None and self.passes == 1:
            return self._one_pass(images, labels, mask, targets, num_masked)
        logits, loss_cls = self._part("_clean")(images, labels)
        if not self.has_mim or mask is None:
            return StepOutput(loss=loss_cls, loss_cls=loss_cls, logits=logits)
        devices = [images.device.index or 0] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(mim_seed)
            loss_mim, acc = self.mim_loss(images, mask, targets, num_masked)
        loss = loss_cls + self.weight * loss_mim
        return StepOutput(loss=loss, loss_cls=loss_cls, logits=logits, loss_mim=loss_mim,
                          mim_acc=acc)

    def _clean(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The supervised pass on the clean image: logits and the classifier loss."""
        logits = self.encoder(images)
        return logits, F.cross_entropy(logits.float(), labels,
                                       label_smoothing=self.label_smoothing)

    def _one_pass(self, images: Tensor, labels: Tensor, mask: Tensor,
                  targets: Tensor | None = None, num_masked: int | None = None) -> StepOutput:
        """SupMAE-style: one encoder pass over the masked image feeds both the classifier
        (pooling the visible tokens) and the decoder; cheaper, but the classifier never sees
        a whole image in training."""
        if targets is None:
            targets = self._part("mim_targets")(images)
        logits, loss_cls, loss_mim, acc = self._part("_one_pass_parts")(
            images, labels, mask, targets, num_masked)
        return StepOutput(loss=loss_cls + self.weight * loss_mim, loss_cls=loss_cls,
                          logits=logits, loss_mim=loss_mim, mim_acc=acc)

    def _one_pass_parts(self, images: Tensor, labels: Tensor, mask: Tensor, targets: Tensor,
                        num_masked: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One masked encoder pass: logits, the classifier loss, the MIM loss and accuracy."""
        assert self.decoder is not None and self.target is not None
        z = forward_masked(self.encoder, images, mask, self.mask_token, num_masked)
        logits = self.encoder.forward_head(z)
        loss_cls = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        hidden = hidden_indices(mask, num_masked)
        pred = self.decoder(z, mask, dropped=self.mask_token is None, hidden=hidden)
        return (logits, loss_cls) + self.target.loss(pred, gather_rows(targets, hidden))

    def mim_targets(self, images: Tensor) -> Tensor:
        """Frozen targets in float32 outside autocast: (B,N) ids or (B,N,D) values."""
        assert self.target is not None
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            return self.target(self.unnormalize(images.float()))

    def mim_predict(self, images: Tensor, mask: Tensor, hidden: Tensor | None = None
                    ) -> Tensor:
        """Decoder predictions for the masked image: (B,N,out_dim) for every patch, or
        (B,M,out_dim) for the patches at ``hidden`` (B,M), M = every row's hidden count."""
        assert self.decoder is not None
        num_masked = None if hidden is None else hidden.shape[1]
        z = forward_masked(self.encoder, images, mask, self.mask_token, num_masked)
        return self.decoder(z, mask, dropped=self.mask_token is None, hidden=hidden)

    def mim_loss(self, images: Tensor, mask: Tensor, targets: Tensor | None = None,
                 num_masked: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Loss on hidden positions only, and token accuracy there (None for regression);
        ``targets`` (B,N[,D]) for every patch, or None to run the frozen target;
        ``num_masked``: every row's hidden count, if known (see the class)."""
        assert self.target is not None
        target = self._part("mim_targets")(images) if targets is None else targets
        return self._part("_masked_loss")(images, mask, target, num_masked)

    def _masked_loss(self, images: Tensor, mask: Tensor, target: Tensor,
                     num_masked: int | None) -> tuple[Tensor, Tensor | None]:
        """The masked pass, the decoder at the M hidden patches and the target's loss
        against ``target`` (B,N[,D]) gathered at the same patches."""
        assert self.target is not None
        hidden = hidden_indices(mask, num_masked)  # (B, M), row-major like x[mask]
        pred = self.mim_predict(images, mask, hidden)
        return self.target.loss(pred, gather_rows(target, hidden))
