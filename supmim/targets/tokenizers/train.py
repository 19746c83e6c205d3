"""Train and evaluate the small VQ tokenizer (:mod:`supmim.targets.tokenizers.small_vq`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from supmim.device import resolve_device
from supmim.errors import ConfigError
from supmim.targets.tokenizers.small_vq import TokenizerConfig, VQTokenizer


@dataclass
class TokenizerTrainConfig:
    """Optimisation settings: AdamW, linear warmup then cosine decay to 1% of ``lr``.

    Defaults: ~3 minutes on 2 CPU cores for the default 32x32 tokenizer. Many small batches
    beat fewer large ones at equal compute (CIFAR-10, val PSNR at lr 2e-3: batch 32 x 4000
    steps 24.1 dB, 64 x 2000 23.6, 128 x 1000 23.1); lr 3e-3 added ~0.1 dB.
    """

    steps: int = 4000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 100
    eval_batches: int | None = None  # None: the whole validation set
    device: str = "auto"  # "auto": CUDA when available, else CPU
    # Optional patch discriminator (VQGAN's adversarial term, hinge loss, adaptive weight).
    # Off by default: on CIFAR-10 at f4 (4000 steps, on from step 2000, weight 0.1) its steps
    # took 2.6x as long and PSNR / codebook usage were unchanged (24.75 vs 24.77 dB val, 100%
    # both); MIM targets only need the token ids. See benchmarks/results/tokenizers.md.
    disc_weight: float = 0.0  # adversarial weight (x taming's adaptive weight); 0 = no discriminator
    disc_start: int = 0  # step at which the discriminator starts (taming starts late, e.g. half)
    disc_lr: float = 1e-4
    disc_channels: int = 64

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "disc_channels"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"tokenizer training {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"tokenizer training lr must be > 0, got {self.lr}")
        if self.disc_weight < 0 or self.disc_lr <= 0 or self.disc_start < 0:
            raise ConfigError(f"tokenizer training needs disc_weight >= 0, disc_lr > 0 and "
                              f"disc_start >= 0, got {self.disc_weight}, {self.disc_lr}, "
                              f"{self.disc_start}")


class PatchDiscriminator(torch.nn.Module):
    """A small PatchGAN (pix2pix / VQGAN style): (B, C, H, W) in [0, 1] -> (B, 1, H/4, W/4)
    real/fake logits, one per overlapping patch. Two stride-2 4x4 convs keep the receptive
    field near a token's footprint at f4."""

    def __init__(self, in_chans: int, channels: int = 64) -> None:
        super().__init__()
        c = channels
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(in_chans, c, 4, stride=2, padding=1), torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), torch.nn.GroupNorm(8, 2 * c),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(2 * c, 2 * c, 3, padding=1), torch.nn.GroupNorm(8, 2 * c),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(2 * c, 1, 3, padding=1))

    def forward(self, images01: Tensor) -> Tensor:
        return self.net(images01 * 2.0 - 1.0)


def _adaptive_weight(rec: Tensor, gen: Tensor, last: Tensor) -> Tensor:
    """||d rec / d last|| / ||d gen / d last|| (taming's ``calculate_adaptive_weight``),
    clamped to [0, 1e4] and detached: the GAN term's scale follows the reconstruction's."""
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_gen = torch.autograd.grad(gen, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_gen.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def _perplexity(ids: Tensor, codebook_size: int) -> float:
    """exp(entropy) of the code frequencies in ``ids``."""
    counts = torch.bincount(ids.flatten(), minlength=codebook_size).double()
    freq = counts[counts > 0] / counts.sum()
    return float((-(freq * freq.log()).sum()).exp())


def _images_only(batch: Sequence[Any]) -> Tensor:
    """Collate (image, label, ...) items - or bare image tensors - into (B, C, H, W) float."""
    return torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in batch]).float()


def _psnr(mse: float) -> float:
    """PSNR in dB of images in [0, 1] from their mean squared error."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def evaluate_tokenizer(tok: Any, data: Dataset, batch_size: int = 256,
                       max_batches: int | None = None, num_workers: int = 0) -> dict[str, float]:
    """Reconstruction and codebook statistics of any tokenizer (``encode`` / ``decode`` on
    [0, 1] images: a trained :class:`VQTokenizer` or an imported VQGAN) on ``data`` (items
    ((C, H, W) in [0, 1], ...), H and W multiples of the tokenizer's factor).

    Returns {"psnr": dB from the mean squared error over all pixels of decode(encode(x)),
    clamped to [0, 1], "usage": % of codes chosen at least once, "perplexity": exp of the
    entropy of code frequencies (equals codebook_size when all codes are equally used),
    "codes_used"}.
    """
    was_training = tok.training
    tok.eval()
    device = next(tok.parameters()).device
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_images_only)
    counts = torch.zeros(tok.codebook_size, dtype=torch.float64, device=device)
    sq_err, n_values = 0.0, 0
    for i, images in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images = images.to(device)
        ids = tok.encode(images)
        recon = tok.decode(ids)
        sq_err += float(((recon.float().clamp(0, 1) - images) ** 2).sum(dtype=torch.float64))
        n_values += images.numel()
        counts += torch.bincount(ids.flatten(), minlength=tok.codebook_size).double()
    tok.train(was_training)
    if n_values == 0:
        raise ConfigError("cannot evaluate the tokenizer on an empty dataset")
    freq = counts / counts.sum()
    entropy = -(freq[freq > 0] * freq[freq > 0].log()).sum()
    return {"psnr": _psnr(sq_err / n_values), "usage": float((counts > 0).double().mean() * 100),
            "perplexity": float(entropy.exp()), "codes_used": int((counts > 0).sum())}


def _batches(loader: DataLoader) -> Iterator[Tensor]:
    while True:  # epochs back to back; a fresh shuffle each time
        yield from loader


def train_tokenizer(model_cfg: TokenizerConfig, train_cfg: TokenizerTrainConfig, train_data: Dataset,
                    val_data: Dataset, out_dir: str | Path, *, progress: bool = True,
                    num_workers: int = 0) -> dict[str, Any]:
    """Train a :class:`VQTokenizer` on ``train_data`` and save it to ``out_dir``.

    Datasets yield (image (C, H, W) float in [0, 1], label, ...) tuples. Writes
    ``metrics.jsonl`` (one line per ``log_every`` steps: losses, PSNR, batch codebook usage
    and perplexity, dead-code restarts), ``summary.json`` (validation PSNR, codebook usage in
    % of codes, perplexity), ``recon.png`` (16 validation images above their reconstructions)
    and the tokenizer files. Returns {"psnr", "usage", "perplexity", "steps", "seconds", ...}.
    Seeds torch's global generator with ``train_cfg.seed`` (model initialisation).
    """
    from torchvision.utils import save_image
    from tqdm import tqdm

    model_cfg.validate()
    train_cfg.validate()
    if len(train_data) < train_cfg.batch_size:  # type: ignore[arg-type]
        raise ConfigError(f"the tokenizer training set has {len(train_data)} images, fewer than "  # type: ignore[arg-type]
                          f"one batch of {train_cfg.batch_size}: lower batch_size or add data")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    tok = VQTokenizer(model_cfg).to(device).train()
    opt = torch.optim.AdamW(tok.parameters(), lr=train_cfg.lr, betas=(0.9, 0.99),
                            weight_decay=train_cfg.weight_decay)
    warmup = min(train_cfg.warmup_steps, train_cfg.steps // 10)

    def lr_at(step: int) -> float:  # multiplier of the base lr for 0-based step
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, train_cfg.steps - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    disc = PatchDiscriminator(model_cfg.in_chans, train_cfg.disc_channels).to(device) \
        if train_cfg.disc_weight > 0 else None
    disc_opt = torch.optim.Adam(disc.parameters(), lr=train_cfg.disc_lr, betas=(0.5, 0.9)) \
        if disc is not None else None
    last_layer = [m for m in tok.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight
    gen = torch.Generator().manual_seed(train_cfg.seed)
    loader = DataLoader(train_data, batch_size=train_cfg.batch_size, shuffle=True, drop_last=True,
                        num_workers=num_workers, collate_fn=_images_only, generator=gen,
                        persistent_workers=num_workers > 0)
    batches = _batches(loader)
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")  # a rerun into the same folder starts a fresh log
    start = time.time()
    bar = tqdm(range(train_cfg.steps), desc="tokenizer", disable=not progress, dynamic_ncols=True)
    running: dict[str, float] = {}
    for step in bar:
        images = next(batches).to(device, non_blocking=True)
        recon, ids, losses = tok(images)
        adversarial = disc is not None and step >= train_cfg.disc_start
        if adversarial:
            # hinge loss (VQGAN): the generator raises D's score of its reconstructions,
            # weighted adaptively as taming does: scaled so that its gradient at the
            # decoder's last layer has disc_weight times the norm of the reconstruction
            # loss's. A fixed weight let the unbounded -D term swamp the ~1e-3 MSE and the
            # codebook collapsed (13.5 dB on CIFAR-10 with weight 0.1).
            assert disc is not None
            losses["gen"] = -disc(recon).mean()
            losses["gen_weight"] = _adaptive_weight(losses["recon"], losses["gen"], last_layer)
            losses["loss"] = losses["loss"] + \
                train_cfg.disc_weight * losses["gen_weight"] * losses["gen"]
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(tok.parameters(), train_cfg.grad_clip)
        opt.step()
        sched.step()
        if adversarial:
            assert disc is not None and disc_opt is not None
            real, fake = disc(images), disc(recon.detach())
            losses["disc"] = F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
            disc_opt.zero_grad(set_to_none=True)
            losses["disc"].backward()
            disc_opt.step()
        # Smoothed values for the bar and the log (cheap: no extra forward).
        for k, v in losses.items():
            v = float(v.detach())
            running[k] = 0.9 * running.get(k, v) + 0.1 * v
        if progress:
            bar.set_postfix(loss=f"{running['loss']:.4f}", psnr=f"{_psnr(running['recon']):.2f}",
                            refresh=False)
        if (step + 1) % train_cfg.log_every == 0 or step + 1 == train_cfg.steps:
            used = torch.unique(ids).numel()
            now = {k: float(v.detach()) for k, v in losses.items()}
            row = {"step": step + 1, "loss": now["loss"], "recon": now["recon"],
                   "commit": now["commit"], "psnr": _psnr(now["recon"]),
                   "batch_usage": 100.0 * used / tok.codebook_size,
                   "batch_perplexity": _perplexity(ids, tok.codebook_size),
                   "restarts": tok.quantizer.restarts,
                   "lr": sched.get_last_lr()[0], "seconds": round(time.time() - start, 2)}
            row.update({k: now[k] for k in ("gen", "gen_weight", "disc") if k in now})
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    bar.close()
    seconds = time.time() - start

    tok.eval()
    result = evaluate_tokenizer(tok, val_data, max_batches=train_cfg.eval_batches,
                                num_workers=num_workers)
    summary: dict[str, Any] = {**result, "steps": train_cfg.steps, "seconds": round(seconds, 1),
                               "train_images": len(train_data),  # type: ignore[arg-type]
                               "val_images": len(val_data),  # type: ignore[arg-type]
                               "model": asdict(model_cfg), "train": asdict(train_cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with torch.no_grad():
        size = len(val_data)  # type: ignore[arg-type]
        # 16 images spread over the split (splits are often sorted by class)
        picks = torch.linspace(0, size - 1, min(16, size)).round().long().unique().tolist()
        n = len(picks)
        originals = _images_only([val_data[i] for i in picks]).to(device)
        recon = tok.decode(tok.encode(originals))
        save_image(torch.cat([originals, recon]).cpu(), out / "recon.png", nrow=n, padding=1)
    tok.metadata = {"summary": {k: summary[k] for k in ("psnr", "usage", "perplexity", "steps",
                                                          "seconds", "train_images")}}
    tok.save(out)
    return summary
