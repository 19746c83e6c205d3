"""Host memory over a long run: the ``tiny-test`` model trained for many epochs on ``digits``,
with the resident memory (RSS) of the training process, and of its data-loader workers, read
from ``/proc`` at the end of every epoch.

    python benchmarks/memory_soak.py [--epochs 50] [--workers 0] [--out soak.json]

Prints RSS after epoch 2 and after the last epoch, and their ratio. Issue 17's target: the
last within 5% of epoch 2, for 50 epochs in-process and for 20 epochs with 2 loader workers.
Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from supmim.config import build_config
from supmim.engine.loop import Callback
from supmim.training import train

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of one process in MiB (``/proc/PID/statm``, second field)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the data-loader workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


class RssRecorder(Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        workers = [rss_mib(c) for c in children(os.getpid()) if Path(f"/proc/{c}").exists()]
        self.rows.append({"epoch": epoch, "main_mib": round(rss_mib(), 1),
                          "workers_mib": round(sum(workers), 1), "n_workers": len(workers)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", help="write the per-epoch rows here as JSON")
    args = ap.parse_args()
    cfg = build_config(preset="tiny-test", extra={"data.data": "digits", "mim.target": "pixel"},
                       overrides=[f"train.epochs={args.epochs}", "train.checkpoint_every=0",
                                  f"data.num_workers={args.workers}", "train.log_every=50"])
    rec = RssRecorder()
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run", progress=False, callbacks=[rec])
    early, last = rec.rows[1], rec.rows[-1]
    total = lambda r: r["main_mib"] + r["workers_mib"]  # noqa: E731
    print(f"epochs {args.epochs}, workers {args.workers}: RSS after epoch 2 "
          f"{early['main_mib']:.1f} MiB (+{early['workers_mib']:.1f} in workers), after epoch "
          f"{last['epoch']} {last['main_mib']:.1f} MiB (+{last['workers_mib']:.1f}); "
          f"main {last['main_mib'] / early['main_mib']:.3f}x, "
          f"total {total(last) / total(early):.3f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"epochs": args.epochs, "workers": args.workers,
                                              "rows": rec.rows}, indent=1))


if __name__ == "__main__":
    main()
