"""A small VQ-VAE image tokenizer (VQGAN-style, without the GAN) that trains on a CPU.

Images in [0, 1] -> encoder (``factor``x downsampling) -> L2-normalised codes -> nearest
entry of an EMA codebook -> decoder -> images. The token ids are the MIM targets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supmim.errors import CheckpointError, ConfigError
from supmim.targets.tokenizers.files import (CONFIG_NAME, DEFAULT_KIND, FORMAT,  # noqa: F401
                                            FORMAT_VERSION, HOW_TO_MAKE, WEIGHTS_NAME,
                                            load_into, parse_config, read_meta, read_weights,
                                            write_tokenizer)

FACTORS = (2, 4, 8, 16)


@dataclass
class TokenizerConfig:
    """Architecture and quantizer settings; saved next to the weights in tokenizer.json."""

    in_chans: int = 3
    factor: int = 4  # downsampling: a (H, W) image gives (H/factor, W/factor) tokens
    codebook_size: int = 512
    code_dim: int = 32
    # Tuned on CIFAR-10 32x32 on a 2-core CPU: at equal training time a narrow net taking many
    # small steps beat wider/deeper ones (channels 32 > 48 > 64, 1 res block > 2).
    channels: int = 32  # width at 1/2 scale; 2 * channels at the coarser levels
    num_res_blocks: int = 1  # per level, in the encoder and the decoder
    img_size: int = 32  # size it was trained at (informational)
    decay: float = 0.99  # EMA decay of the codebook statistics
    beta: float = 0.25  # commitment loss weight
    restart_after: int = 20  # steps a code may go unused (in training) before it is restarted

    def validate(self) -> None:
        """ConfigError for values the model cannot be built with."""
        if self.factor not in FACTORS:
            raise ConfigError(f"tokenizer factor must be one of {FACTORS}, got {self.factor}")
        for name in ("in_chans", "codebook_size", "code_dim", "channels", "img_size", "restart_after"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"tokenizer {name} must be >= 1, got {getattr(self, name)}")
        if self.num_res_blocks < 0:
            raise ConfigError(f"tokenizer num_res_blocks must be >= 0, got {self.num_res_blocks}")
        if self.codebook_size < 2:
            raise ConfigError(f"tokenizer codebook_size must be >= 2, got {self.codebook_size}")
        if self.img_size % self.factor:
            raise ConfigError(f"tokenizer img_size {self.img_size} is not a multiple of factor "
                              f"{self.factor}: pick an img_size divisible by it")
        if not 0.0 < self.decay < 1.0:
            raise ConfigError(f"tokenizer decay must be in (0, 1), got {self.decay}")

    @property
    def widths(self) -> list[int]:
        """Channel width at each latent level below full resolution, 2x-downsampled first:
        ``channels`` at 1/2 scale, twice that at every coarser level (log2(factor) levels)."""
        levels = int(math.log2(self.factor))
        return [self.channels] + [2 * self.channels] * (levels - 1)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each position: (B, C, H, W) -> (B, C, H, W).

    Not GroupNorm: its statistics span the whole image, which removed each image's overall
    colour and brightness (flat-coloured test images came back grey; CIFAR-10 lost ~2 dB
    PSNR early on) and made every token depend on the whole image instead of its patch.
    """

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ch))
        self.bias = nn.Parameter(torch.zeros(ch))

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, 1e-6)
        return x.permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """Norm-SiLU-conv3x3 twice, plus identity: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            ChannelNorm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
            ChannelNorm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))
        # Start as the identity: short CPU runs learn faster (+1.3 dB on CIFAR-10 after 150 steps).
        nn.init.zeros_(self.block[-1].weight)
        nn.init.zeros_(self.block[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


# Full resolution is handled by space-to-depth (PixelUnshuffle / PixelShuffle by 2): a CPU
# spends most of its time on spatial convolutions, and the first 2x of downsampling costs
# nothing this way while losing no information.


def _encoder(cfg: TokenizerConfig) -> nn.Sequential:
    """(B, C, H, W) -> (B, code_dim, H/f, W/f)."""
    w = cfg.widths
    layers: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(4 * cfg.in_chans, w[0], 3, padding=1)]
    for i in range(len(w)):
        if i > 0:
            layers.append(nn.Conv2d(w[i - 1], w[i], 2, stride=2))
        layers.extend(ResBlock(w[i]) for _ in range(cfg.num_res_blocks))
    layers += [ChannelNorm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], cfg.code_dim, 1)]
    return nn.Sequential(*layers)


def _decoder(cfg: TokenizerConfig) -> nn.Sequential:
    """(B, code_dim, h, w) -> (B, C, h*f, w*f), mirroring the encoder."""
    w = cfg.widths
    layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, w[-1], 3, padding=1)]
    for i in range(len(w) - 1, -1, -1):
        layers.extend(ResBlock(w[i]) for _ in range(cfg.num_res_blocks))
        if i > 0:
            layers.append(nn.ConvTranspose2d(w[i], w[i - 1], 4, stride=2, padding=1))
    layers += [ChannelNorm(w[0]), nn.SiLU(),
               nn.Conv2d(w[0], 4 * cfg.in_chans, 3, padding=1), nn.PixelShuffle(2)]
    return nn.Sequential(*layers)


class EMAQuantizer(nn.Module):
    """Cosine-similarity vector quantizer with an EMA codebook.

    Inputs and codes are L2-normalised, so the nearest code is the one with the largest dot
    product; on the unit sphere no code can be stranded far from the data, which keeps
    codebook usage high. The codebook is not trained by gradients: in training mode each
    forward moves every code towards the mean of the inputs assigned to it (EMA with
    Laplace-smoothed counts), and codes unused for ``restart_after`` steps are re-seeded
    with random inputs of the current batch. The codebook starts as a random sample of the
    first batch's inputs.
    """

    def __init__(self, codebook_size: int, code_dim: int, decay: float = 0.99,
                 restart_after: int = 20, eps: float = 1e-5) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.decay = decay
        self.restart_after = restart_after
        self.eps = eps
        self.register_buffer("embed", F.normalize(torch.randn(codebook_size, code_dim), dim=1))
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # Training-time bookkeeping only: not worth a place in the saved file.
        self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long),
                             persistent=False)
        self.restarts = 0  # codes re-seeded so far (for logging)

    def nearest(self, z: Tensor) -> Tensor:
        """(M, D) L2-normalised vectors -> (M,) int64 ids of the closest codes.

        Always float32 and outside autocast: in bf16 near-ties between codes would flip ids."""
        with torch.autocast(z.device.type, enabled=False):
            return (z.float() @ self.embed.float().t()).argmax(dim=1)

    def distances(self, z: Tensor) -> Tensor:
        """(M, D) L2-normalised vectors -> (M, K) float32 squared distances to every code
        (on the unit sphere ``||z - e||^2 = 2 - 2 z.e``; argmin = :meth:`nearest`)."""
        with torch.autocast(z.device.type, enabled=False):
            return (2.0 - 2.0 * (z.float() @ self.embed.float().t())).clamp_min(0.0)

    @torch.no_grad()
    def _init(self, z: Tensor) -> None:
        idx = torch.randint(0, z.shape[0], (self.codebook_size,), device=z.device)
        self.embed.copy_(z[idx])
        self.embed_sum.copy_(z[idx])
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, z: Tensor, ids: Tensor) -> None:
        onehot = F.one_hot(ids, self.codebook_size).type(z.dtype)  # (M, K)
        counts = onehot.sum(0)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embed.copy_(F.normalize(self.embed_sum / smoothed[:, None], dim=1))
        # Dead-code restart: re-seed long-unused codes on random current inputs.
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.unused_steps >= self.restart_after).nonzero().squeeze(1)
        if dead.numel():
            picks = z[torch.randint(0, z.shape[0], (dead.numel(),), device=z.device)]
            self.embed[dead] = picks
            self.embed_sum[dead] = picks  # weight 1: the new code follows its data quickly
            self.cluster_size[dead] = 1.0
            self.unused_steps[dead] = 0
            self.restarts += int(dead.numel())

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (B, D, h, w) -> (quantised (B, D, h, w) with straight-through gradients,
        ids (B, h, w) int64, commitment loss: mean squared distance to the chosen codes)."""
        b, d, h, w = z.shape
        flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, d).float(), dim=1)
        if self.training and not bool(self.initialized):
            self._init(flat.detach())
        ids = self.nearest(flat.detach())
        if self.training:
            self._update(flat.detach(), ids)
        q = self.embed[ids]
        commit = F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()  # straight-through: decoder gradients go to the encoder
        q = q.reshape(b, h, w, d).permute(0, 3, 1, 2)
        return q, ids.reshape(b, h, w), commit


class TokenizerShape:
    """What every tokenizer reads off its ``config`` (``factor``, ``codebook_size``,
    ``in_chans``) and the input check they share."""

    config: Any

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def in_chans(self) -> int:
        return self.config.in_chans

    def _check(self, images01: Tensor) -> None:
        if images01.ndim != 4 or images01.shape[1] != self.in_chans:
            raise ConfigError(f"tokenizer expects (B, {self.in_chans}, H, W) images, "
                              f"got shape {tuple(images01.shape)}")
        h, w = images01.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ConfigError(f"image size {h}x{w} is not a multiple of the tokenizer factor "
                              f"{self.factor}: resize the images first")


class VQTokenizer(TokenizerShape, nn.Module):
    """Images (B, C, H, W) in [0, 1] <-> token ids (B, H/f, W/f) in [0, codebook_size)."""

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        super().__init__()
        self.config = config or TokenizerConfig()
        self.config.validate()
        self.encoder = _encoder(self.config)
        self.quantizer = EMAQuantizer(self.config.codebook_size, self.config.code_dim,
                                      decay=self.config.decay,
                                      restart_after=self.config.restart_after)
        self.decoder = _decoder(self.config)
        self.metadata: dict[str, Any] = {}  # free-form (metrics, data) saved in tokenizer.json

    def _encode(self, images01: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self._check(images01)
        z = self.encoder(images01 * 2.0 - 1.0)  # centre the input for the first conv
        return self.quantizer(z)

    def _decode_codes(self, q: Tensor) -> Tensor:
        return self.decoder(q) * 0.5 + 0.5

    @torch.no_grad()
    def encode(self, images01: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, H/f, W/f) int64 token ids."""
        return self._encode(images01)[1]

    @torch.no_grad()
    def code_distances(self, images01: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, H/f, W/f, codebook_size) float32 squared distances
        from each position's latent to every code; their argmin is :meth:`encode`'s id."""
        self._check(images01)
        z = self.encoder(images01 * 2.0 - 1.0)
        b, d, h, w = z.shape
        flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, d).float(), dim=1)
        return self.quantizer.distances(flat).reshape(b, h, w, -1)

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """(B, h, w) int64 ids -> (B, C, h*f, w*f) images clamped to [0, 1]."""
        if ids.ndim != 3:
            raise ConfigError(f"tokenizer decode expects (B, h, w) ids, got shape {tuple(ids.shape)}")
        q = self.quantizer.embed[ids.long()].permute(0, 3, 1, 2)
        return self._decode_codes(q).clamp(0.0, 1.0)

    def forward(self, images01: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(B, C, H, W) in [0, 1] -> (reconstruction (B, C, H, W), not clamped so the loss
        keeps its gradient; ids (B, H/f, W/f); losses {"recon": MSE, "commit": commitment,
        "loss": recon + beta * commit})."""
        q, ids, commit = self._encode(images01)
        recon = self._decode_codes(q)
        rec = F.mse_loss(recon, images01)
        return recon, ids, {"recon": rec, "commit": commit, "loss": rec + self.config.beta * commit}

    # ----------------------------------------------------------------- persistence

    kind = DEFAULT_KIND
    input_range = (0.0, 1.0)  # what encode() takes; the net itself sees [-1, 1]

    def save(self, out_dir: str | Path) -> None:
        """Write ``out_dir/tokenizer.safetensors`` and ``out_dir/tokenizer.json`` (config,
        metadata and the weights' sha256), each through a temporary file and a rename."""
        write_tokenizer(out_dir, self.state_dict(), kind=self.kind, config=asdict(self.config),
                        metadata=self.metadata)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> VQTokenizer:
        """Load a tokenizer from its directory, or from its ``.safetensors`` file with the
        ``tokenizer.json`` beside it. Reads safetensors only (never pickle). CheckpointError
        when files are missing or unreadable or the weights do not fit the config."""
        meta, weights, meta_path = read_meta(path)
        if meta["kind"] != cls.kind:
            raise CheckpointError(f"{meta_path} holds a {meta['kind']!r} tokenizer, not a "
                                  f"{cls.kind!r} one: load it with "
                                  f"supmim.targets.load_tokenizer")
        config = parse_config(TokenizerConfig, meta, meta_path, "re-save or retrain the tokenizer")
        return load_into(cls(config), weights, meta, meta_path, map_location)
