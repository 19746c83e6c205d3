"""Where a training step's time goes: ``torch.profiler`` over the supervised and the MIM
trainer step of ``supmim bench``'s setting (same model, batch, synthetic in-memory data, an
untrained VQ tokenizer of the same cost as a trained one), side by side in one process.

    OMP_NUM_THREADS=1 python benchmarks/profile_step.py [--steps 3] [--threads 1] [--top 15]
        [--model vit_tiny_patch16_224 --img-size 32 --patch-size 4 --batch 128]

Prints, for each arm, the operators with the most self CPU time (per step), and then the
operators whose time grows most from the supervised to the MIM step: the first thing to look
at before making the MIM step cheaper (issue 13, item 3). Also reports the counted FLOPs of
each step, so time and FLOP ratios can be compared.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from supmim.data.splits import RunData
from supmim.experiments.bench import (BenchConfig, _random_tokenizer, _Synthetic, _trainer,
                                      run_config)
from supmim.metrics import step_flops


def _profile(trainer, batches: list, steps: int) -> dict[str, tuple[float, int]]:
    """{operator: (self CPU ms per step, calls per step)} over ``steps`` trainer steps."""
    trainer.train_step([batches[0]], 0)  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            trainer.train_step([batches[(i + 1) % len(batches)]], 0)
    return {e.key: (e.self_cpu_time_total / 1000 / steps, e.count // steps)
            for e in prof.key_averages()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b = BenchConfig(model=args.model, img_size=args.img_size, patch_size=args.patch_size,
                    batch=args.batch, device="cpu", amp="off", threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tok = _random_tokenizer(Path(tmp) / "tok", b)
        chans = 3
        dataset = _Synthetic(b.batch * (args.steps + 1), chans, b.img_size, 10)
        data = RunData(train=dataset, eval=None, eval_split="val", test=None,
                       test_split="test", classes=[str(i) for i in range(10)],
                       mean=(0.5,) * chans, std=(0.25,) * chans)
        batches = [(dataset.images[i * b.batch:(i + 1) * b.batch],
                    dataset.labels[i * b.batch:(i + 1) * b.batch],
                    torch.arange(i * b.batch, (i + 1) * b.batch)) for i in range(args.steps + 1)]
        arms = {"supervised": run_config(BenchConfig(**{**b.__dict__, "target": "none"}), None),
                "mim": run_config(b, tok)}
        tables, flops = {}, {}
        for name, cfg in arms.items():
            t = _trainer(cfg, Path(tmp) / name, data)
            flops[name] = step_flops(lambda: t.train_step([batches[0]], 0))
            tables[name] = _profile(t, batches, args.steps)
    totals = {n: sum(ms for ms, _ in t.values()) for n, t in tables.items()}
    for name, table in tables.items():
        print(f"\n{name}: {totals[name]:.0f} ms self CPU per step, "
              f"{flops[name] / 1e9:.1f} GFLOP per step")
        print(f"{'operator':40s} {'ms/step':>9s} {'share':>6s} {'calls':>6s}")
        for op, (ms, calls) in sorted(table.items(), key=lambda kv: -kv[1][0])[:args.top]:
            print(f"{op[:40]:40s} {ms:9.1f} {ms / totals[name]:6.1%} {calls:6d}")
    sup, mim = tables["supervised"], tables["mim"]
    growth = {op: mim[op][0] - sup.get(op, (0.0, 0))[0] for op in mim}
    print(f"\nMIM / supervised: time {totals['mim'] / totals['supervised']:.2f}x, counted FLOPs "
          f"{flops['mim'] / flops['supervised']:.2f}x; where the extra "
          f"{totals['mim'] - totals['supervised']:.0f} ms go:")
    for op, extra in sorted(growth.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{op[:40]:40s} {extra:+9.1f} ms "
              f"({sup.get(op, (0.0, 0))[0]:.1f} -> {mim[op][0]:.1f})")


if __name__ == "__main__":
    main()
