"""What the checkpoint digests cost: a ViT-B/16-sized checkpoint (weights, EMA, AdamW state)
written with and without recording xxh3-128 digests, side by side in one process.

    python benchmarks/checkpoint_digest.py [--rounds 3] [--dir /tmp]

Prints the median write time of each arm, the digest share of the write, and the time to
verify the checkpoint on read. Issue 17's target: digests under 5% of the write time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch

from supmim.run import checkpoint as ckpt


def _states() -> tuple[dict, dict, dict]:
    vit = timm.create_model("vit_base_patch16_224", num_classes=1000)
    weights = {f"encoder.{k}": v for k, v in vit.state_dict().items()}
    opt = torch.optim.AdamW(vit.parameters())
    for p in vit.parameters():  # AdamW's two moments per parameter, as after a real step
        opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.randn_like(p),
                        "exp_avg_sq": torch.rand_like(p)}
    return weights, {"optimizer": opt.state_dict(), "step": 1}, dict(vit.state_dict())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder to write in (default: a temp dir)")
    args = ap.parse_args()
    weights, state, ema = _states()
    size = sum(v.numel() * v.element_size() for v in weights.values())
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="supmim-digest-"))
    real_write = ckpt._write_bytes

    def write_only(path: Path, data: bytes) -> dict:  # the same bytes, no digest
        with open(path, "wb") as fh:
            fh.write(data)
        ckpt._fsync(path)
        return {"size": len(data)}
    times: dict[str, list[float]] = {"with digests": [], "without": [], "verify": []}
    try:
        for _ in range(args.rounds):
            for arm in ("with digests", "without"):
                ckpt._write_bytes = real_write if arm == "with digests" else write_only
                folder = root / "checkpoints" / "epoch_0001"
                start = time.perf_counter()
                ckpt.save_checkpoint(folder, weights, state, {"step": 1}, ema)
                times[arm].append(time.perf_counter() - start)
                if arm == "with digests":
                    start = time.perf_counter()
                    ckpt.verify_checkpoint(folder)
                    times["verify"].append(time.perf_counter() - start)
                shutil.rmtree(folder)
    finally:
        ckpt._write_bytes = real_write
        shutil.rmtree(root, ignore_errors=True)
    # the digest's own cost, without the disk's noise: hashing the same bytes in memory
    from safetensors.torch import save
    import io
    import xxhash
    buf = io.BytesIO()
    torch.save(state, buf)
    blobs = [save(ckpt._contiguous(weights)), save(ckpt._contiguous(ema)), buf.getvalue()]
    hashing = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for blob in blobs:
            xxhash.xxh3_128(blob).hexdigest()
        hashing.append(time.perf_counter() - start)
    times["hashing only"] = hashing
    med = {k: statistics.median(v) for k, v in times.items()}
    share = (med["with digests"] - med["without"]) / med["without"]
    print(f"ViT-B/16 checkpoint: weights {size / 2**20:.0f} MiB (+ EMA, + AdamW state 2x), "
          f"{args.rounds} rounds, torch threads {torch.get_num_threads()}")
    for k, v in med.items():
        print(f"  {k:<13} median {v:.2f} s   rounds {', '.join(f'{x:.2f}' for x in times[k])}")
    print(f"  digests add {100 * share:.1f}% to the write (difference of medians: disk noise)")
    print(f"  hashing the {sum(len(b) for b in blobs) / 2**20:.0f} MiB alone: "
          f"{100 * med['hashing only'] / med['without']:.1f}% of the median write")


if __name__ == "__main__":
    main()
