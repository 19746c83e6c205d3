"""VQGAN tokenizers with the published architectures, so public checkpoints load into them.

Two families share one module tree and differ in a handful of switches (:class:`VQGANConfig`
``arch``):

====================  ==============================  =====================================
                      "maskgit" (MaskGIT, MAGE)        "taming" (taming-transformers VQModel)
====================  ==============================  =====================================
input range           [0, 1]                           [-1, 1]
res-block convs       no bias                          bias
res-block shortcut    1x1 conv of the block's output   1x1 conv of the block's input
                      (out -> out), added to it        (in -> out)
downsampling          2x2 average pooling (TF "SAME")  3x3 stride-2 conv, zero pad right/bottom
attention             none                             after the res blocks of ``attn_levels``
                                                       and between the two mid blocks
encoder output conv   1x1, straight to the codes       3x3, then ``quant_conv`` (1x1)
decoder blocks/level  num_res_blocks                   num_res_blocks + 1
decoder input         the codes                        ``post_quant_conv`` (1x1) of the codes
====================  ==============================  =====================================

Common to both: GroupNorm(32 groups, eps 1e-6) with affine terms, swish (SiLU), 3x3 convs with
"SAME" padding (1 pixel; Flax's SAME equals this for odd kernels at stride 1), nearest-neighbour
2x upsampling followed by a 3x3 conv, and token ids = argmin of the squared L2 distance to the
codebook (first index on ties, as ``jnp.argmin`` and ``torch.argmin``). The MaskGIT shortcut
quirk (``residual = conv(x)`` after ``x`` was overwritten) is in the Flax original and in every
port; it is kept so the imported weights compute what they were trained to compute.

Module names are supmim's own; :mod:`supmim.targets.tokenizers.importers` maps each source's keys
onto them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supmim.errors import CheckpointError, ConfigError
from supmim.targets.tokenizers.files import load_into, parse_config, read_meta, write_tokenizer
from supmim.targets.tokenizers.small_vq import TokenizerShape

ARCHS = ("maskgit", "taming")
GN_EPS = 1e-6  # flax.linen.GroupNorm's default and taming's Normalize()


@dataclass
class VQGANConfig:
    """Architecture of a VQGAN tokenizer; defaults are MaskGIT's ImageNet f16 tokenizer
    (``maskgit/configs/vqgan_config.py``): 128 x [1, 1, 2, 2, 4], 2 res blocks, 1024 x 256
    codes. ``attn_levels`` / ``mid_attn`` / quant convs only exist for ``arch="taming"``."""

    arch: str = "maskgit"
    in_chans: int = 3
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    mid_blocks: int = 2  # res blocks at the lowest resolution (MaskGIT: num_res_blocks)
    z_channels: int = 256  # encoder output channels (= embed_dim for MaskGIT)
    embed_dim: int = 256  # code vector size
    codebook_size: int = 1024
    attn_levels: list[int] = field(default_factory=list)  # taming: level 0 = full resolution
    mid_attn: bool = False  # taming: attention between the two mid blocks
    norm_groups: int = 32
    img_size: int = 256  # resolution it was trained at (informational)

    @classmethod
    def taming_f16_1024(cls) -> VQGANConfig:
        """taming-transformers ``configs/imagenet_vqgan.yaml`` (f16, 1024 codes, attention at
        16x16 of a 256 input = level 4)."""
        return cls(arch="taming", ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
                   mid_blocks=2, z_channels=256, embed_dim=256, codebook_size=1024,
                   attn_levels=[4], mid_attn=True)

    def validate(self) -> None:
        """ConfigError for values the model cannot be built with."""
        if self.arch not in ARCHS:
            raise ConfigError(f"VQGAN arch must be one of {ARCHS}, got {self.arch!r}")
        if not self.ch_mult or any(int(m) < 1 for m in self.ch_mult):
            raise ConfigError(f"VQGAN ch_mult must be a non-empty list of positive ints, "
                              f"got {self.ch_mult}")
        for name in ("in_chans", "ch", "z_channels", "embed_dim", "codebook_size",
                     "norm_groups", "img_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"VQGAN {name} must be >= 1, got {getattr(self, name)}")
        widths = [self.ch] + [self.ch * m for m in self.ch_mult]
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(f"VQGAN channel widths {sorted(set(widths))} must be multiples of "
                              f"norm_groups={self.norm_groups}")
        if self.arch == "maskgit" and (self.attn_levels or self.mid_attn):
            raise ConfigError("MaskGIT VQGANs have no attention: attn_levels must be empty and "
                              "mid_attn false")
        if self.arch == "maskgit" and self.z_channels != self.embed_dim:
            raise ConfigError(f"MaskGIT VQGANs quantise the encoder output directly: "
                              f"z_channels ({self.z_channels}) must equal embed_dim "
                              f"({self.embed_dim})")
        if self.arch == "taming" and self.mid_blocks != 2:
            raise ConfigError("taming VQGANs have exactly 2 mid blocks")
        if any(not 0 <= lv < len(self.ch_mult) for lv in self.attn_levels):
            raise ConfigError(f"attn_levels {self.attn_levels} outside 0..{len(self.ch_mult) - 1}")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def widths(self) -> list[int]:
        return [self.ch * m for m in self.ch_mult]


# ----------------------------------------------------------------------------- blocks


def _norm(groups: int, ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, ch, eps=GN_EPS, affine=True)


class ResBlock(nn.Module):
    """(B, cin, H, W) -> (B, cout, H, W): norm-swish-conv3x3 twice plus a shortcut."""

    def __init__(self, cin: int, cout: int, *, arch: str, groups: int) -> None:
        super().__init__()
        bias = arch == "taming"
        self.on_output = arch == "maskgit"  # MaskGIT's shortcut reads the block's output
        self.norm1 = _norm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
        self.norm2 = _norm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias)
        self.shortcut = nn.Conv2d(cout if self.on_output else cin, cout, 1, bias=bias) \
            if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.shortcut is not None:
            x = self.shortcut(h if self.on_output else x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over positions (taming): (B, C, H, W) -> same, residual."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(groups, ch)
        self.q, self.k, self.v = (nn.Conv2d(ch, ch, 1) for _ in range(3))
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """2x downsampling: TF-style average pooling (MaskGIT) or a stride-2 conv (taming)."""

    def __init__(self, ch: int, arch: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2) if arch == "taming" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is not None:
            return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming's asymmetric zero padding
        # TF "SAME" pooling pads odd sizes at the end and averages only the real pixels; with
        # padding 0 and ceil_mode, PyTorch clips the last window to the input the same way.
        return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)


class Stage(nn.Module):
    """One resolution level: res blocks, each optionally followed by attention."""

    def __init__(self, cin: int, cout: int, n_blocks: int, *, attn: bool, arch: str,
                 groups: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(cin if i == 0 else cout, cout, arch=arch, groups=groups)
            for i in range(n_blocks))
        self.attns = nn.ModuleList(AttnBlock(cout, groups) for _ in range(n_blocks)) \
            if attn else nn.ModuleList()

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if len(self.attns):
                x = self.attns[i](x)
        return x


class Mid(nn.Module):
    """Lowest-resolution blocks: res blocks, with attention after the first (taming)."""

    def __init__(self, ch: int, n_blocks: int, *, attn: bool, arch: str, groups: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(ch, ch, arch=arch, groups=groups)
                                    for _ in range(n_blocks))
        self.attn = AttnBlock(ch, groups) if attn else None

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == 0 and self.attn is not None:
                x = self.attn(x)
        return x


class Encoder(nn.Module):
    """(B, in_chans, H, W) in the tokenizer's input range -> (B, z_channels, H/f, W/f)."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        arch, g, w = cfg.arch, cfg.norm_groups, cfg.widths
        self.conv_in = nn.Conv2d(cfg.in_chans, cfg.ch, 3, padding=1, bias=arch == "taming")
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        cin = cfg.ch
        for level, cout in enumerate(w):
            self.stages.append(Stage(cin, cout, cfg.num_res_blocks, attn=level in cfg.attn_levels,
                                     arch=arch, groups=g))
            if level < len(w) - 1:
                self.downs.append(Downsample(cout, arch))
            cin = cout
        self.mid = Mid(w[-1], cfg.mid_blocks, attn=cfg.mid_attn, arch=arch, groups=g)
        self.norm_out = _norm(g, w[-1])
        k = 3 if arch == "taming" else 1
        self.conv_out = nn.Conv2d(w[-1], cfg.z_channels, k, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for level, stage in enumerate(self.stages):
            x = stage(x)
            if level < len(self.downs):
                x = self.downs[level](x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv (both families)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, in_chans, h*f, w*f) in the tokenizer's output range.

    ``stages[level]`` works at the encoder's resolution ``level``; they run from the lowest
    resolution up, each followed by ``ups[level - 1]`` except level 0."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        arch, g, w = cfg.arch, cfg.norm_groups, cfg.widths
        n = cfg.num_res_blocks + (1 if arch == "taming" else 0)
        self.conv_in = nn.Conv2d(cfg.z_channels, w[-1], 3, padding=1)
        self.mid = Mid(w[-1], cfg.mid_blocks, attn=cfg.mid_attn, arch=arch, groups=g)
        stages: list[Stage] = []
        cin = w[-1]
        for level in reversed(range(len(w))):
            stages.append(Stage(cin, w[level], n, attn=level in cfg.attn_levels, arch=arch,
                                groups=g))
            cin = w[level]
        self.stages = nn.ModuleList(reversed(stages))
        self.ups = nn.ModuleList(Upsample(w[level]) for level in range(1, len(w)))
        self.norm_out = _norm(g, w[0])
        self.conv_out = nn.Conv2d(w[0], cfg.in_chans, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(range(len(self.stages))):
            x = self.stages[level](x)
            if level > 0:
                x = self.ups[level - 1](x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Codebook(nn.Module):
    """``weight`` (K, D); ids = argmin_k ||z - e_k||^2 (VQ-VAE, MaskGIT, taming)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, dim).uniform_(-1.0 / size, 1.0 / size))

    def distances(self, z: Tensor) -> Tensor:
        """(B, D, h, w) -> (B, h, w, K) squared distances to every code, in float32 outside
        autocast so that bf16 rounding cannot flip near-ties."""
        b, d, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):
            flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
            e = self.weight.float()
            # ||z||^2 - 2 z.e + ||e||^2; ||z||^2 does not change the argmin but keeps the
            # values the distances the sources compute.
            dist = (flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ e.t()
                    + e.pow(2).sum(1)[None, :])
            return dist.clamp_min(0.0).reshape(b, h, w, -1)

    def nearest(self, z: Tensor) -> Tensor:
        """(B, D, h, w) -> (B, h, w) int64 ids of the nearest codes."""
        return self.distances(z).argmin(dim=-1)

    def lookup(self, ids: Tensor) -> Tensor:
        """(B, h, w) ids -> (B, D, h, w) code vectors."""
        return self.weight[ids.long()].permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------- tokenizer


class VQGAN(TokenizerShape, nn.Module):
    """Images (B, C, H, W) in [0, 1] <-> token ids (B, H/f, W/f) in [0, codebook_size).

    ``encode`` maps [0, 1] into the family's own input range first (MaskGIT: unchanged,
    taming: ``2x - 1``); ``decode`` maps back and clamps to [0, 1]. Frozen use only: there is
    no training path (see :mod:`supmim.targets.tokenizers.train` for a trainable tokenizer).
    """

    def __init__(self, config: VQGANConfig | None = None) -> None:
        super().__init__()
        self.config = config or VQGANConfig()
        self.config.validate()
        cfg = self.config
        self.encoder = Encoder(cfg)
        taming = cfg.arch == "taming"
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1) if taming else None
        self.quantizer = Codebook(cfg.codebook_size, cfg.embed_dim)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1) if taming else None
        self.decoder = Decoder(cfg)
        self.metadata: dict[str, Any] = {}
        self.requires_grad_(False)
        self.eval()

    @property
    def kind(self) -> str:
        return f"vqgan-{self.config.arch}"

    @property
    def input_range(self) -> tuple[float, float]:
        return (-1.0, 1.0) if self.config.arch == "taming" else (0.0, 1.0)

    def _to_input(self, images01: Tensor) -> Tensor:
        lo, hi = self.input_range
        return images01 * (hi - lo) + lo

    def _from_output(self, x: Tensor) -> Tensor:
        lo, hi = self.input_range
        return ((x.float() - lo) / (hi - lo)).clamp(0.0, 1.0)

    def encode_latents(self, images01: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, embed_dim, H/f, W/f) pre-quantisation vectors."""
        self._check(images01)
        z = self.encoder(self._to_input(images01))
        return self.quant_conv(z) if self.quant_conv is not None else z

    @torch.no_grad()
    def encode(self, images01: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, H/f, W/f) int64 token ids."""
        return self.quantizer.nearest(self.encode_latents(images01))

    @torch.no_grad()
    def code_distances(self, images01: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, H/f, W/f, codebook_size) float32 squared distances
        from each latent to every code; their argmin is :meth:`encode`'s id."""
        return self.quantizer.distances(self.encode_latents(images01))

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """(B, h, w) int64 ids -> (B, C, h*f, w*f) images clamped to [0, 1]."""
        if ids.ndim != 3:
            raise ConfigError(f"tokenizer decode expects (B, h, w) ids, got shape {tuple(ids.shape)}")
        q = self.quantizer.lookup(ids)
        if self.post_quant_conv is not None:
            q = self.post_quant_conv(q)
        return self._from_output(self.decoder(q))

    def train(self, mode: bool = True) -> VQGAN:
        return super().train(False)  # frozen: always in eval mode

    # ----------------------------------------------------------------- persistence

    def save(self, out_dir: str | Path) -> None:
        """supmim's tokenizer folder (see :mod:`supmim.targets.tokenizers.files`)."""
        write_tokenizer(out_dir, self.state_dict(), kind=self.kind, config=asdict(self.config),
                        metadata=self.metadata)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> VQGAN:
        """A VQGAN tokenizer folder written by :meth:`save` (``supmim tokenizer import``)."""
        meta, weights, meta_path = read_meta(path)
        if meta["kind"] not in {f"vqgan-{a}" for a in ARCHS}:
            raise CheckpointError(f"{meta_path} holds a {meta['kind']!r} tokenizer, not a VQGAN: "
                                  f"load it with supmim.targets.load_tokenizer")
        config = parse_config(VQGANConfig, meta, meta_path, "import the checkpoint again")
        if f"vqgan-{config.arch}" != meta["kind"]:
            raise CheckpointError(f"unreadable tokenizer config {meta_path}: kind "
                                  f"{meta['kind']!r} disagrees with arch {config.arch!r}; "
                                  "import the checkpoint again")
        return load_into(cls(config), weights, meta, meta_path, map_location)
