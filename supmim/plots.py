"""Plots read back from run directories (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def epoch_records(run_dir: Path) -> list[dict]:
    """The per-epoch lines of a run's ``metrics.jsonl`` (last write wins for an epoch)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("type") == "epoch":
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_arm_curves(arms: dict[str, list[Path]], out_png: Path,
                    keys: tuple[str, ...] = ("eval_top1", "train_loss_cls")) -> Path:
    """One panel per metric; a thin line per run, a thick line for each arm's mean."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys):
        for color, (arm, runs) in zip(colors, arms.items()):
            series = []
            for run in runs:
                recs = [r for r in epoch_records(run) if key in r]
                if recs:
                    xs, ys = [r["epoch"] for r in recs], [r[key] for r in recs]
                    ax.plot(xs, ys, color=color, alpha=0.3, linewidth=1)
                    series.append(dict(zip(xs, ys)))
            epochs = sorted(set().union(*series)) if series else []
            means = [sum(s[e] for s in series if e in s) / sum(e in s for s in series)
                     for e in epochs]
            if epochs:
                ax.plot(epochs, means, color=color, linewidth=2.5, label=f"{arm} (mean)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key.replace("eval_", "validation ").replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
