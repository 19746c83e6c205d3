"""``supmim bench``: training-step throughput measured side by side in one process.

Three loops run on the same synthetic in-memory batches, interleaved over several rounds so
drifting machine load hits them alike; each figure is the median round:

    plain      a minimal PyTorch loop: timm ViT, cross-entropy, AdamW (the reference)
    trainer    supmim's own training loop (``Trainer.train_one_epoch``), MIM off
    trainer+mim  the same loop with the MIM branch (decoder + frozen target) on

Reported: images/s of each (median round), page faults and kernel time per step, the
ratios trainer/plain (framework overhead) and mim/trainer (the price of MIM; each the median
of the per-round ratios, with their range), the MIM/supervised FLOP ratio and the time ratio
over it, the target's (tokenizer's) share of the MIM step, peak GPU memory, and model FLOPs
per step (``torch.utils.flop_counter``) with the FLOPs utilisation on GPUs whose
peak is known (or given with ``--peak-tflops``).
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from supmim.config import RunConfig, build_config, compile_enabled
from supmim.device import amp_dtype, resolve_device
from supmim.data.splits import RunData
from supmim.engine.loop import Trainer
from supmim.errors import ConfigError
from supmim.files import write_json
from supmim.metrics import step_flops
from supmim.models import create_vit

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device name.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4,
                    "H100 PCIe": 756.5, "H100": 756.5, "A100": 312.0, "L40S": 362.1,
                    "A10G": 70.0, "L4": 121.0}


@dataclass
class BenchConfig:
    model: str = "vit_tiny_patch16_224"
    embed_dim: int | None = None  # None keeps the timm model's own sizes
    depth: int | None = None
    num_heads: int | None = None
    img_size: int = 32
    patch_size: int = 4
    batch: int = 128
    steps: int = 10
    warmup: int = 3
    rounds: int = 3
    target: str = "vq"
    mask_ratio: float = 0.75
    decoder_depth: int = 1
    device: str = "auto"
    amp: str = "auto"
    compile: bool | str = "auto"  # train.compile: "auto" (CUDA only), true or false
    threads: int = 0
    peak_tflops: float | None = None
    data: str | None = None  # also time the data loader on this --data (real decoding)
    workers: int = 8


class _Synthetic(Dataset):
    """``n`` fixed random images (already normalised), labels and indices, in memory."""

    def __init__(self, n: int, chans: int, size: int, classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, chans, size, size, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        i = key[0] if isinstance(key, tuple) else key
        return self.images[i], int(self.labels[i]), i


def run_config(b: BenchConfig, tokenizer: str | None) -> RunConfig:
    mim = b.target != "none"
    overrides = [f"model.name={b.model}", f"model.img_size={b.img_size}",
                 f"model.patch_size={b.patch_size}", f"data.batch_size={b.batch}",
                 "data.num_workers=0", f"mim.mask_ratio={b.mask_ratio}",
                 f"mim.decoder_depth={b.decoder_depth}", f"train.device={b.device}",
                 f"train.amp={b.amp}", f"train.threads={b.threads}", "train.log_every=1000000",
                 "train.checkpoint_every=0", "model.drop_path=0.1", f"train.compile={b.compile}"]
    overrides += [f"model.{k}={getattr(b, k)}" for k in ("embed_dim", "depth", "num_heads")
                  if getattr(b, k) is not None]
    if b.embed_dim is not None:
        heads = b.num_heads or 1
        overrides += [f"mim.decoder_dim={max(heads, b.embed_dim // 2 // heads * heads)}",
                      f"mim.decoder_heads={heads}"]
    extra: dict[str, Any] = {"mim.target": b.target if mim else "pixel", "mim.enabled": mim}
    if tokenizer:
        extra["mim.tokenizer"] = tokenizer
    return build_config(extra=extra, overrides=overrides)


def _random_tokenizer(folder: Path, b: BenchConfig) -> str:
    """An untrained VQ tokenizer with the benchmark's token grid: same cost as a trained one."""
    from supmim.targets.tokenizers.small_vq import TokenizerConfig, VQTokenizer
    factor = min((2, 4, 8, 16), key=lambda f: abs(f - b.patch_size))
    VQTokenizer(TokenizerConfig(factor=factor, img_size=b.img_size)).save(folder)
    return str(folder)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PlainLoop:
    """The reference: nothing but forward, cross-entropy, backward and AdamW."""

    def __init__(self, cfg: RunConfig, loader: DataLoader, device: torch.device,
                 dtype: torch.dtype | None, compile_model: bool) -> None:
        torch.manual_seed(0)
        self.model = create_vit(cfg.model, num_classes=10).to(device).train()
        self.step_model = torch.compile(self.model) if compile_model else self.model
        extra = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr,
                                     weight_decay=cfg.train.weight_decay, **extra)
        self.loader, self.device, self.dtype = loader, device, dtype

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            loss = nn.functional.cross_entropy(self.step_model(images).float(), labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps over the loader."""
        start = time.perf_counter()
        for i, (images, labels, _) in enumerate(self.loader):
            if i >= steps:
                break
            self.step(images, labels)
        _sync(self.device)
        return time.perf_counter() - start


def _trainer(cfg: RunConfig, out: Path, data: RunData) -> Trainer:
    t = Trainer(cfg, out, progress=False, data=data)
    t.setup()
    return t


def _trainer_run(t: Trainer, steps: int) -> float:
    t.steps_per_epoch = steps
    start = time.perf_counter()
    t.train_one_epoch(0)
    _sync(t.device)
    return time.perf_counter() - start


def _peak(device: torch.device, given: float | None) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", given
    name = torch.cuda.get_device_name(device)
    if given:
        return name, given
    return name, next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _target_share(t: Trainer, images: torch.Tensor, repeats: int = 5) -> float:
    """Seconds the frozen target (tokenizer) takes on one batch."""
    images = images.to(t.device)
    t.model.mim_targets(images)
    _sync(t.device)
    start = time.perf_counter()
    for _ in range(repeats):
        t.model.mim_targets(images)
    _sync(t.device)
    return (time.perf_counter() - start) / repeats


def bench(b: BenchConfig) -> dict[str, Any]:
    """Run the benchmark; returns the result dict (also what ``--out`` writes)."""
    if b.steps < 1 or b.rounds < 1 or b.batch < 1:
        raise ConfigError("bench: --steps, --rounds and --batch must be >= 1")
    if b.threads:
        torch.set_num_threads(b.threads)
    device = resolve_device(b.device)
    with tempfile.TemporaryDirectory(prefix="supmim-bench-") as tmp:
        tmp_path = Path(tmp)
        tok = _random_tokenizer(tmp_path / "tok", b) if b.target == "vq" else None
        cfg_mim = run_config(b, tok)
        cfg_sup = run_config(BenchConfig(**{**asdict(b), "target": "none"}), None)
        chans = cfg_mim.model.in_chans
        dataset = _Synthetic(b.batch * max(b.steps, b.warmup), chans, b.img_size, 10)
        data = RunData(train=dataset, eval=None, eval_split="val", test=None, test_split="test",
                       classes=[str(i) for i in range(10)], mean=(0.5,) * chans,
                       std=(0.25,) * chans)
        dtype = amp_dtype(b.amp, device)
        plain = _PlainLoop(cfg_sup, DataLoader(dataset, batch_size=b.batch, shuffle=True,
                                               drop_last=True), device, dtype,
                           compile_enabled(b.compile, device))
        loops = {"plain": plain.run,
                 "trainer": lambda n, t=_trainer(cfg_sup, tmp_path / "sup", data): _trainer_run(t, n)}
        mim_trainer = None
        if b.target != "none":
            mim_trainer = _trainer(cfg_mim, tmp_path / "mim", data)
            loops["trainer+mim"] = lambda n: _trainer_run(mim_trainer, n)
        times: dict[str, list[float]] = {k: [] for k in loops}
        peak_mem: dict[str, int] = {}
        for name, run in loops.items():  # warm-up (and compilation) outside the timing
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            run(b.warmup)
            if device.type == "cuda":
                peak_mem[name] = int(torch.cuda.max_memory_allocated(device))
        faults: dict[str, list[float]] = {k: [] for k in loops}
        system: dict[str, list[float]] = {k: [] for k in loops}
        for _ in range(b.rounds):
            for name, run in loops.items():
                before = resource.getrusage(resource.RUSAGE_SELF)
                times[name].append(run(b.steps) / b.steps)
                after = resource.getrusage(resource.RUSAGE_SELF)
                # the process's page faults (each a fresh, zeroed page) and kernel time
                faults[name].append((after.ru_minflt - before.ru_minflt) / b.steps)
                system[name].append((after.ru_stime - before.ru_stime) / b.steps)
        step = {k: statistics.median(v) for k, v in times.items()}
        # ratios of the loops' times within each round, then their median: a round's loops
        # run back to back, so load that drifts between rounds cancels (less spread than a
        # ratio of the medians on a shared machine)
        rounds = {"trainer_over_plain_throughput": _per_round(times["plain"], times["trainer"])}
        images, labels = dataset.images[: b.batch].to(device), dataset.labels[: b.batch].to(device)
        flops = {"plain": step_flops(lambda: plain.step(images, labels))}
        if mim_trainer is not None:
            index = torch.arange(b.batch)
            flops["trainer+mim"] = step_flops(
                lambda: mim_trainer.train_step([(images, labels, index)], 0))
        name, peak = _peak(device, b.peak_tflops)
        result: dict[str, Any] = {
            "config": asdict(b), "device": name, "torch": torch.__version__,
            "amp": str(dtype) if dtype else "off",
            "compiled": compile_enabled(b.compile, device), "threads": torch.get_num_threads(),
            "sdpa": bool(getattr(plain.model.blocks[0].attn, "fused_attn", False)),
            "step_seconds": step, "step_seconds_rounds": times,
            "images_per_s": {k: b.batch / v for k, v in step.items()},
            "ratio_trainer_over_plain_throughput":
                statistics.median(rounds["trainer_over_plain_throughput"]),
            "ratio_rounds": rounds,
            "minor_faults_per_step": {k: statistics.median(v) for k, v in faults.items()},
            "system_seconds_per_step": {k: statistics.median(v) for k, v in system.items()},
            "flops_per_step": flops,
            "achieved_tflops": {k: flops[k] / step[k] / 1e12 for k in flops},
            "peak_memory_bytes": peak_mem or None,
        }
        if mim_trainer is not None:
            rounds["mim_over_sup_step_time"] = _per_round(times["trainer+mim"], times["trainer"])
            result["ratio_mim_over_sup_step_time"] = statistics.median(
                rounds["mim_over_sup_step_time"])
            # The supervised trainer step does the plain loop's arithmetic, so the plain
            # count is its FLOPs; issue 13's target is time ratio <= 1.05x this ratio.
            result["ratio_mim_over_sup_flops"] = flops["trainer+mim"] / flops["plain"]
            result["mim_time_ratio_over_flop_ratio"] = (result["ratio_mim_over_sup_step_time"]
                                                        / result["ratio_mim_over_sup_flops"])
            result["target_seconds_per_step"] = _target_share(mim_trainer, images)
            result["target_share_of_mim_step"] = (result["target_seconds_per_step"]
                                                  / step["trainer+mim"])
        if b.data:
            result["loader"] = loader_throughput(b)
        if peak:
            result["peak_tflops"] = peak
            result["mfu"] = {k: v / peak for k, v in result["achieved_tflops"].items()}
        return result


def _per_round(numerator: list[float], denominator: list[float]) -> list[float]:
    return [a / b for a, b in zip(numerator, denominator)]


def loader_throughput(b: BenchConfig, batches: int = 20) -> dict[str, Any]:
    """Images/s the training data loader delivers on ``b.data`` (decode + augmentation,
    ``b.workers`` workers, pinned memory on CUDA), after one warm-up batch."""
    from supmim.data.splits import build_run_data
    cfg = run_config(BenchConfig(**{**asdict(b), "target": "none"}), None)
    cfg.data.data = b.data
    data = build_run_data(cfg)
    from supmim.data import EpochSampler
    sampler = EpochSampler(len(data.train), seed=0)
    loader = DataLoader(data.train, batch_size=b.batch, sampler=sampler, drop_last=True,
                        num_workers=b.workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=b.workers > 0)
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            images, *_ = next(it)
        except StopIteration:
            break
        n += len(images)
    seconds = time.perf_counter() - start
    return {"data": b.data, "workers": b.workers, "images": n,
            "images_per_s": n / max(seconds, 1e-9)}


def format_result(r: dict[str, Any]) -> str:
    """A few readable lines for the terminal."""
    c = r["config"]
    lines = [f"supmim bench: {c['model']} {c['img_size']}px patch {c['patch_size']}, batch "
             f"{c['batch']}, {r['device']}, amp {r['amp']}, {r['threads']} threads, "
             f"median of {c['rounds']} rounds x {c['steps']} steps"]
    for k, v in r["images_per_s"].items():
        extra = (f", {r['minor_faults_per_step'][k]:.0f} page faults, "
                 f"{1000 * r['system_seconds_per_step'][k]:.0f} ms system")
        if k in r["achieved_tflops"]:
            extra += f", {r['achieved_tflops'][k]:.2f} TFLOP/s"
            if "mfu" in r:
                extra += f" (MFU {100 * r['mfu'][k]:.1f}%)"
        lines.append(f"  {k:12s} {v:9.1f} img/s  {1000 * r['step_seconds'][k]:8.1f} ms/step{extra}")

    def spread(key: str) -> str:
        xs = r["ratio_rounds"][key]
        return f" (rounds {min(xs):.3f}-{max(xs):.3f})" if len(xs) > 1 else ""
    lines.append(f"  trainer / plain throughput: {r['ratio_trainer_over_plain_throughput']:.3f}"
                 + spread("trainer_over_plain_throughput"))
    if "ratio_mim_over_sup_step_time" in r:
        lines.append(f"  MIM / supervised step time: {r['ratio_mim_over_sup_step_time']:.3f}"
                     f"{spread('mim_over_sup_step_time')}, FLOPs "
                     f"{r['ratio_mim_over_sup_flops']:.3f}: time / FLOP ratio "
                     f"{r['mim_time_ratio_over_flop_ratio']:.3f}")
        lines.append(f"  MIM target (tokenizer) share of the MIM step: "
                     f"{100 * r['target_share_of_mim_step']:.1f}%")
    if r.get("loader"):
        lo = r["loader"]
        lines.append(f"  data loader: {lo['images_per_s']:.0f} img/s with {lo['workers']} "
                     f"workers on {lo['data']} (the MIM step needs "
                     f"{r['images_per_s'].get('trainer+mim', r['images_per_s']['trainer']):.0f})")
    if r.get("peak_memory_bytes"):
        lines.append("  peak memory: " + ", ".join(f"{k} {v / 2**30:.2f} GiB"
                                                   for k, v in r["peak_memory_bytes"].items()))
    return "\n".join(lines)


def write_result(r: dict[str, Any], path: str | Path) -> None:
    write_json(path, r)
