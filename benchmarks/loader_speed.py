"""Images/s of the training loader: data-loader workers vs the device-resident path
(issue 13, item 5), side by side in one process.

Both loaders are built by ``build_loaders`` from one config (preset ``cifar10`` by default:
32 px, pad-crop + flip, batch 128, MIM masks on), differing only in ``data.loader``; each
round iterates one epoch of each (workers first, then device, alternating), and a round's
figure is images delivered / seconds until the last batch is in hand (masks included). The
decode of the resident set is timed once, separately.

Usage: .venv/bin/python benchmarks/loader_speed.py --data ../shared/data/cifar10_small_5k_1k_jpeg_q75.tar.gz \
           [--preset cifar10] [--rounds 3] [--workers 2] [--set KEY=VALUE ...]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from supmim.config import build_config
from supmim.data.splits import build_run_data
from supmim.engine.build import build_loaders
from supmim.engine.masked_loader import with_masks
from supmim.models.masking import build_masker


def epoch_rate(loaders, epoch: int) -> float:
    loaders.sampler.set_epoch(epoch)
    start, n = time.perf_counter(), 0
    for batch in loaders.train:
        n += batch[0].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="cifar10")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    cfgs = {kind: build_config(preset=a.preset, overrides=[
        f"data.data={a.data}", f"data.loader={kind}", f"data.num_workers={a.workers}",
        "mim.tokenizer=unused", *a.set]) for kind in ("workers", "device")}
    data = build_run_data(cfgs["workers"])
    cpu = torch.device("cpu")
    m = cfgs["workers"].model
    masker = build_masker("random", (m.img_size // m.patch_size,) * 2, 0.75)
    t0 = time.perf_counter()
    loaders = {kind: with_masks(build_loaders(c, data, cpu), masker, 0) for kind, c in cfgs.items()}
    build_s = time.perf_counter() - t0  # the resident set's decode dominates
    assert loaders["device"].resident and not loaders["workers"].resident
    rates: dict[str, list[float]] = {"workers": [], "device": []}
    for r in range(a.rounds):
        for kind in rates:
            rates[kind].append(epoch_rate(loaders[kind], r))
    for ld in loaders.values():
        ld.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch threads {torch.get_num_threads()}, {a.workers} loader workers",
        "images": len(data.train), "batch": cfgs["device"].data.batch_size,
        "img_per_s": med, "rounds": rates, "device_over_workers": med["device"] / med["workers"],
        "build_seconds_incl_decode": build_s}, indent=1))


if __name__ == "__main__":
    main()
