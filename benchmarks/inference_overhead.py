"""CPU inference cost of a supmim export against a stock timm ViT of the same size.

A throwaway run (one epoch, with the MIM branch, on a generated image folder) is exported
with ``supmim export`` in both formats; the export is loaded back with plain
``timm.create_model('local-dir:E', pretrained=True)`` and run in PyTorch, and its
``model.onnx`` in onnxruntime. The reference is ``timm.create_model`` with the same
architecture arguments and random weights, in PyTorch and exported to ONNX the same way. All
four run in this process on the same input, interleaved (the order rotates every repeat);
each figure is the median images/s over the repeats.

    OMP_NUM_THREADS=1 python benchmarks/inference_overhead.py [--preset cifar10]
        [--set model.img_size=224 --set model.patch_size=16] [--batch 64] [--repeats 7]
        [--threads 1] [--out result.json]
    python benchmarks/inference_overhead.py --smoke   # the tiny-test model, seconds

The expected result is no overhead: the export is a plain timm ``VisionTransformer``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image

from supmim.config import RunConfig, build_config
from supmim.export import export_run
from supmim.export_onnx import INPUT_NAME, onnx_session, require_onnx, to_onnx
from supmim.models import vit_kwargs
from supmim.training import train

Runner = Callable[[], Any]


def make_folder(root: Path, size: int, per_class: int = 8) -> Path:
    """``root/{train,test}/c{0,1}/*.png`` of noise: enough for a one-epoch run."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k in range(2):
            (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / f"c{k}" / f"{i}.png")
    return root


def exported_run(cfg: RunConfig, work: Path) -> tuple[Path, Path]:
    """Train ``cfg`` for one epoch on noise and export it: ``(timm folder, onnx folder)``."""
    data = make_folder(work / "data", cfg.model.img_size)
    cfg.data.data, cfg.train.epochs, cfg.train.warmup_epochs = str(data), 1, 0.0
    cfg.data.val_fraction, cfg.data.num_workers, cfg.data.batch_size = 0.0, 0, 8
    cfg.mim.target, cfg.train.device = "pixel", "cpu"
    train(cfg, work / "run", progress=False)
    return export_run(work / "run", work / "timm"), export_run(work / "run", work / "onnx",
                                                               fmt="onnx")


def runners(cfg: RunConfig, timm_dir: Path, onnx_dir: Path, x: torch.Tensor, threads: int,
            work: Path) -> dict[str, Runner]:
    """The four timed forward passes, by name."""
    ours = timm.create_model(f"local-dir:{timm_dir}", pretrained=True).eval()
    stock = timm.create_model(cfg.model.name, pretrained=False,
                              **vit_kwargs(cfg.model, ours.num_classes)).eval()
    to_onnx(stock, work / "stock.onnx", tuple(x.shape[1:]), "logits")
    sessions = {"stock": onnx_session(work / "stock.onnx", threads),
                "ours": onnx_session(onnx_dir / "model.onnx", threads)}
    feed = {INPUT_NAME: x.numpy()}

    def torch_run(model: torch.nn.Module) -> Runner:
        return lambda: model(x)
    return {"timm stock (PyTorch)": torch_run(stock),
            "supmim export (PyTorch)": torch_run(ours),
            "timm stock (onnxruntime)": lambda: sessions["stock"].run(None, feed),
            "supmim export (onnxruntime)": lambda: sessions["ours"].run(None, feed)}


def measure(fns: dict[str, Runner], batch: int, repeats: int, iters: int) -> dict[str, list]:
    """images/s of each runner for every repeat; the order rotates between repeats."""
    names, rates = list(fns), {n: [] for n in fns}
    with torch.inference_mode():
        for n in names:
            fns[n]()  # warm-up
        for r in range(repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                for _ in range(iters):
                    fns[n]()
                rates[n].append(batch * iters / (time.perf_counter() - start))
    return rates


def report(rates: dict[str, list], meta: dict[str, Any]) -> dict[str, Any]:
    """Print the table; return the JSON result."""
    base = statistics.median(rates["timm stock (PyTorch)"])
    rows = [{"name": n, "images_per_s": statistics.median(v), "min": min(v), "max": max(v),
             "vs_stock_pytorch": statistics.median(v) / base, "repeats": v}
            for n, v in rates.items()]
    print(f"{meta['model']} at {meta['img_size']} px, batch {meta['batch']}, "
          f"{meta['threads']} thread(s), median of {meta['repeats']} interleaved repeats")
    print(f"| {'':<28} | images/s (median) | min - max         | vs stock PyTorch |")
    print(f"| {'-' * 28} | ----------------- | ----------------- | ---------------- |")
    for row in rows:
        span = f"{row['min']:.1f} - {row['max']:.1f}"
        print(f"| {row['name']:<28} | {row['images_per_s']:17.1f} | {span:<17} | "
              f"{row['vs_stock_pytorch']:16.3f} |")
    return {**meta, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cifar10", help="model config of this supmim preset")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="config override, e.g. model.img_size=224")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--iters", type=int, default=5, help="forward passes per timed repeat")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--smoke", action="store_true", help="tiny-test model, a few passes")
    p.add_argument("--out", help="write the result JSON here")
    args = p.parse_args(argv)
    require_onnx()
    if args.smoke:
        args.preset, args.batch, args.repeats, args.iters = "tiny-test", 4, 3, 2
    torch.set_num_threads(args.threads)
    cfg = build_config(preset=args.preset, overrides=args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        timm_dir, onnx_dir = exported_run(cfg, work)
        m = cfg.model
        x = torch.randn(args.batch, m.in_chans, m.img_size, m.img_size)
        rates = measure(runners(cfg, timm_dir, onnx_dir, x, args.threads, work),
                        args.batch, args.repeats, args.iters)
    import onnxruntime
    meta = {"model": f"{m.name} ({m.embed_dim} wide, {m.depth} deep, patch {m.patch_size})",
            "preset": args.preset, "overrides": args.overrides, "img_size": m.img_size,
            "batch": args.batch, "repeats": args.repeats, "iters": args.iters,
            "threads": args.threads, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "timm": timm.__version__,
            "onnxruntime": onnxruntime.__version__, "command": " ".join(sys.argv)}
    result = report(rates, meta)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
