"""The MIM decoder: a shallow transformer that predicts a target for every patch."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from supmim.models.encoder import gather_rows, visible_indices


class MimDecoder(nn.Module):
    """Maps encoder tokens to per-patch predictions.

    Encoder tokens are projected to the decoder width; in drop mode the hidden positions are
    filled with a learned mask token; decoder position embeddings are added; ``depth`` timm
    transformer blocks (0 = none, a linear head) run over prefix + patch tokens; a linear head
    maps each patch to ``out_dim`` (codebook logits, or regression values).
    """

    def __init__(self, enc_dim: int, grid: tuple[int, int], num_prefix: int, out_dim: int,
                 dim: int = 128, depth: int = 1, heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_patches, self.num_prefix = grid[0] * grid[1], num_prefix
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.mask_token, std=0.02)
        self.apply(_init_linear)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "mask_token"}

    def forward(self, z: Tensor, mask: Tensor, dropped: bool,
                hidden: Tensor | None = None) -> Tensor:
        """z: (B, P + N_vis, E) if ``dropped`` else (B, P + N, E); mask: (B, N) bool.

        Returns (B, N, out_dim) predictions for every patch, or with ``hidden`` (B, M) patch
        indices (:func:`~supmim.models.encoder.hidden_indices`) (B, M, out_dim) for those
        patches only: the loss needs no more, and the head's matmul shrinks to M rows.
        """
        h = self.embed(z)
        prefix, patches = h[:, :self.num_prefix], h[:, self.num_prefix:]
        if dropped:
            batch, dim = h.shape[0], h.shape[-1]
            full = h.new_zeros(batch, self.num_patches, dim)
            # N_vis is patches' own length: static shapes, no nonzero (nor a sync on CUDA)
            idx = visible_indices(mask, patches.shape[1]).unsqueeze(-1).expand(-1, -1, dim)
            full = full.scatter(1, idx, patches)
            patches = torch.where(mask.unsqueeze(-1), self.mask_token.to(h.dtype), full)
        x = torch.cat([prefix, patches + self.pos_embed.to(h.dtype)], dim=1)
        x = self.blocks(x)[:, self.num_prefix:]
        if hidden is not None:
            x = gather_rows(x, hidden)  # norm and head act per token: pick before them
        return self.head(self.norm(x))


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
