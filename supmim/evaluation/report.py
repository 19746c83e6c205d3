"""``supmim report``: the evaluations of several models side by side, with deltas and plots.

Inputs are *groups*: ``[LABEL=]PATH[,PATH...]``. A PATH is a result JSON, or a model / run
folder whose ``eval/*.json`` results are read (a run's ``summary.json`` adds its training-time
test accuracy). Several paths in one group (e.g. one run per seed) are summarised as
mean +- sample std. The first group is the reference: every other group gets a delta
against it, paired by position (seed i with seed i) when both groups have the same number
of members, so the spread of the delta is the spread of the paired differences.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supmim.evaluation.common import EvaluationError, write_json

_TASK_ORDER = ["training", "classify", "linear", "knn", "retrieval", "segment", "robustness"]


@dataclass
class Group:
    label: str
    paths: list[Path]
    members: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # per path: name -> result


def parse_group(text: str) -> tuple[str | None, list[Path]]:
    """``[LABEL=]PATH[,PATH...]`` -> (label or None, paths)."""
    label: str | None = None
    rest = text
    if "=" in text and not Path(text).exists():
        label, rest = text.split("=", 1)
    paths = [Path(p) for p in rest.split(",") if p]
    if not paths or (label is not None and not label):
        raise EvaluationError(f"'{text}' is not [LABEL=]PATH[,PATH...]")
    return label, paths


def default_label(paths: list[Path]) -> str:
    """One path: its name; several: their common prefix without a seed suffix
    (baseline_seed0, baseline_seed1 -> baseline)."""
    names = [p.stem if p.is_file() else p.resolve().name for p in paths]
    if len(names) == 1:
        return names[0]
    prefix = re.sub(r"[_-]*(seed)?[_-]*$", "", os.path.commonprefix(names))
    return prefix or names[0]


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """{result name: result} found at ``path`` (a JSON file or a folder)."""
    files: list[Path] = []
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.glob("eval/*.json")) + sorted(path.glob("*.json"))
    else:
        raise EvaluationError(f"report input '{path}' does not exist")
    results: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            obj = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and obj.get("supmim_eval"):
            if obj["task"] == "embed":
                continue
            results[obj["name"]] = {**obj, "_file": str(f)}
        elif f.name == "summary.json" and isinstance(obj, dict) and "test" in obj:
            metrics = {f"{split} top-1": obj[split]["top1"] for split in ("test", "val")
                       if isinstance(obj.get(split), dict) and "top1" in obj[split]}
            results["training | run's own evaluation"] = {
                "task": "training", "name": "training | run's own evaluation", "metrics": metrics,
                "lower_is_better": [], "details": {}, "_file": str(f)}
    if path.is_file() and not results:
        raise EvaluationError(f"'{path}' is not a supmim evaluation result")
    return results


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def build_report(groups: list[Group]) -> dict[str, Any]:
    """Rows of (evaluation, metric) with per-group statistics and deltas against group 0."""
    names: list[str] = []
    for g in groups:
        for member in g.members:
            names += [n for n in member if n not in names]
    names.sort(key=lambda n: (_task_rank(n, groups), n))
    rows = []
    for name in names:
        found = [m[name] for g in groups for m in g.members if name in m]
        example = found[0]
        metrics: list[str] = []
        for r in found:  # the union, in first-seen order (only some results have e.g. mCE)
            metrics += [k for k in r["metrics"] if k not in metrics]
        lower = {k for r in found for k in r.get("lower_is_better", [])}
        for metric in metrics:
            row: dict[str, Any] = {"evaluation": name, "task": example["task"], "metric": metric,
                                   "lower_is_better": metric in lower,
                                   "groups": {}, "deltas": {}}
            per_group = []  # per group: one value or None per member
            for g in groups:
                values = [m[name]["metrics"].get(metric) if name in m else None for m in g.members]
                per_group.append(values)
                present = [v for v in values if v is not None]
                row["groups"][g.label] = _stats(present) if present else None
            ref = per_group[0]
            for g, values in zip(groups[1:], per_group[1:]):
                ref_present = [v for v in ref if v is not None]
                present = [v for v in values if v is not None]
                if not ref_present or not present:
                    continue
                pairs = [(v, r) for v, r in zip(values, ref) if v is not None and r is not None] \
                    if len(values) == len(ref) else []
                if pairs:  # member i against member i (seed against seed)
                    row["deltas"][g.label] = {**_stats([v - r for v, r in pairs]), "paired": True}
                else:
                    row["deltas"][g.label] = {"mean": statistics.fmean(present) - statistics.fmean(ref_present),
                                              "std": None, "n": min(len(present), len(ref_present)),
                                              "paired": False}
            rows.append(row)
    return {"groups": [{"label": g.label, "paths": [str(p) for p in g.paths]} for g in groups],
            "rows": rows}


def _task_rank(name: str, groups: list[Group]) -> int:
    task = next((m[name]["task"] for g in groups for m in g.members if name in m), "")
    return _TASK_ORDER.index(task) if task in _TASK_ORDER else len(_TASK_ORDER)


def _cell(stats: dict[str, Any] | None, signed: bool = False) -> str:
    if stats is None:
        return "-"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    text = fmt.format(stats["mean"])
    if stats.get("std") is not None and stats["n"] > 1:
        text += " +- {:.2f}".format(stats["std"])
    return text


def render_markdown(report: dict[str, Any], groups: list[Group], plots: dict[str, str], title: str) -> str:
    labels = [g["label"] for g in report["groups"]]
    lines = [f"# {title}", ""]
    lines += ["| group | models |", "| --- | --- |"]
    lines += [f"| {g['label']} | {', '.join('`' + p + '`' for p in g['paths'])} |" for g in report["groups"]]
    lines += ["", "Values: mean +- sample std over a group's models; deltas against "
              f"**{labels[0]}**, paired by position when the groups have equal size. Metrics in %; "
              "for those marked (lower is better) a negative delta is an improvement.", ""]
    delta_labels = labels[1:]
    header = ["evaluation", "metric", *labels, *[f"{d} - {labels[0]}" for d in delta_labels]]
    current_task = None
    for row in report["rows"]:
        if row["task"] != current_task:
            current_task = row["task"]
            lines += ["", f"## {current_task}", ""]
            if current_task in plots:
                lines += [f"![{current_task}]({plots[current_task]})", ""]
            lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        metric = row["metric"] + (" (lower is better)" if row["lower_is_better"] else "")
        cells = [row["evaluation"], metric, *[_cell(row["groups"].get(label)) for label in labels],
                 *[_cell(row["deltas"].get(label), signed=True) for label in delta_labels]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += _corruption_table(groups)
    if "deltas" in plots:
        lines += ["", "## All deltas at a glance", "", f"![deltas]({plots['deltas']})"]
    return "\n".join(lines) + "\n"


def _corruption_table(groups: list[Group]) -> list[str]:
    """Per-corruption accuracy (mean over severities) for the robustness results."""
    out: list[str] = []
    names = sorted({n for g in groups for m in g.members for n, r in m.items()
                    if r["task"] == "robustness" and r.get("details", {}).get("accuracy")})
    for name in names:
        corruptions = None
        table: dict[str, list[float]] = {}
        for g in groups:
            per_member = [m[name]["details"]["accuracy"] for m in g.members if name in m]
            if not per_member:
                continue
            corruptions = corruptions or list(per_member[0])
            table[g.label] = [statistics.fmean(statistics.fmean(acc[c]) for acc in per_member)
                              for c in corruptions]
        if not corruptions:
            continue
        out += ["", f"### {name.replace('|', '-')}: top-1 per corruption (mean over severities and models)", "",
                "| corruption | " + " | ".join(table) + " |", "|" + " --- |" * (len(table) + 1)]
        for i, c in enumerate(corruptions):
            out.append(f"| {c} | " + " | ".join(f"{v[i]:.2f}" for v in table.values()) + " |")
    return out


def make_plots(report: dict[str, Any], groups: list[Group], out_md: Path) -> dict[str, str]:
    """PNG files beside the report; returns {section: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = out_md.with_suffix("")
    labels = [g["label"] for g in report["groups"]]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    plots: dict[str, str] = {}

    def save(fig: Any, key: str) -> None:
        path = Path(f"{stem}_{key}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")  # long row labels must not be cut
        plt.close(fig)
        plots[key] = path.name

    # kNN: top-1 against k, one panel per evaluation
    knn = {}
    for row in report["rows"]:
        m = re.match(r"k=(\d+) top-1$", row["metric"])
        if row["task"] == "knn" and m:
            knn.setdefault(row["evaluation"], []).append((int(m.group(1)), row))
    if knn:
        fig, axes = plt.subplots(1, len(knn), figsize=(5 * len(knn), 3.8), squeeze=False)
        for ax, (name, items) in zip(axes[0], knn.items()):
            items.sort(key=lambda t: t[0])
            for color, label in zip(colors, labels):
                pts = [(k, r["groups"][label]) for k, r in items if r["groups"].get(label)]
                if pts:
                    ax.errorbar([k for k, _ in pts], [s["mean"] for _, s in pts],
                                yerr=[s["std"] for _, s in pts], marker="o", capsize=3, color=color,
                                label=label)
            ax.set_xscale("log")
            ax.set_xlabel("k")
            ax.set_ylabel("top-1 (%)")
            ax.set_title(name, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend()
        save(fig, "knn")

    # grouped bars for retrieval and segmentation headline metrics
    for task, wanted in (("retrieval", ("R@1", "R@5", "R@10", "mAP")), ("segment", ("mIoU", "pixel acc"))):
        rows = [r for r in report["rows"] if r["task"] == task and r["metric"] in wanted]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(rows)), 4.2))
        width = 0.8 / len(labels)
        for j, (color, label) in enumerate(zip(colors, labels)):
            xs = [i + j * width for i in range(len(rows))]
            stats = [r["groups"].get(label) for r in rows]
            ax.bar(xs, [s["mean"] if s else 0 for s in stats], width, color=color, label=label,
                   yerr=[s["std"] if s else 0 for s in stats], capsize=2)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
        ax.set_xticklabels(["\n".join(textwrap.fill(part.replace("_", " "), 20)
                                      for part in [*r["evaluation"].split(" | ")[1:], r["metric"]])
                            for r in rows], fontsize=7)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
        save(fig, task)

    # robustness: accuracy against severity, mean over corruptions, clean at severity 0
    robust = sorted({n for g in groups for m in g.members for n, r in m.items()
                     if r["task"] == "robustness" and r.get("details", {}).get("accuracy")})
    if robust:
        fig, axes = plt.subplots(1, len(robust), figsize=(5.5 * len(robust), 3.8), squeeze=False)
        for ax, name in zip(axes[0], robust):
            for color, g in zip(colors, groups):
                curves = []
                for m in g.members:
                    if name not in m:
                        continue
                    d = m[name]["details"]
                    per_sev = [statistics.fmean(acc[i] for acc in d["accuracy"].values())
                               for i in range(len(d["severities"]))]
                    curves.append([d["clean"], *per_sev])
                if not curves:
                    continue
                xs = [0, *m[name]["details"]["severities"]] if name in m else list(range(len(curves[0])))
                mean = [statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))]
                for c in curves:
                    ax.plot(xs, c, color=color, alpha=0.25, linewidth=1)
                ax.plot(xs, mean, color=color, marker="o", linewidth=2, label=f"{g.label} (mean)")
            ax.set_xlabel("severity (0 = clean)")
            ax.set_ylabel("top-1 (%), mean over corruptions")
            ax.set_title(name, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend()
        save(fig, "robustness")

    # every delta in one picture
    if len(labels) > 1:
        target = labels[1]
        rows = [r for r in report["rows"] if target in r["deltas"]]
        if rows:
            fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
            means = [r["deltas"][target]["mean"] * (-1 if r["lower_is_better"] else 1) for r in rows]
            errs = [r["deltas"][target]["std"] or 0 for r in rows]
            ax.barh(range(len(rows)), means, xerr=errs, capsize=2,
                    color=[colors[2] if v >= 0 else colors[3] for v in means])
            ax.set_yticks(range(len(rows)))
            ax.set_yticklabels([f"{r['evaluation']}: {r['metric']}" for r in rows], fontsize=7)
            ax.invert_yaxis()
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_xlabel(f"{target} - {labels[0]} (points; right = better: the sign of\n"
                          "lower-is-better metrics such as mCE is flipped)")
            ax.grid(axis="x", alpha=0.3)
            save(fig, "deltas")
    return plots


def report(inputs: list[str], out: str | Path, *, title: str = "Evaluation report") -> dict[str, Any]:
    """Write ``out`` (markdown), ``<out stem>.json`` and ``<out stem>_*.png``; returns the report."""
    out = Path(out)
    if out.suffix.lower() != ".md":
        raise EvaluationError(f"--out '{out}' should be a .md file (the JSON and PNGs go beside it)")
    groups = []
    for text in inputs:
        label, paths = parse_group(text)
        group = Group(label or default_label(paths), paths)
        group.members = [read_results(p) for p in paths]
        if not any(group.members):
            raise EvaluationError(f"no evaluation results under {', '.join(map(str, paths))}; run "
                                  "`supmim eval ...` on it first (results go to MODEL/eval/ by default)")
        groups.append(group)
    seen = set()
    for g in groups:
        if g.label in seen:
            raise EvaluationError(f"two groups are labelled '{g.label}'; name them with LABEL=PATH")
        seen.add(g.label)
    result = build_report(groups)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = make_plots(result, groups, out)
    result["plots"] = plots
    out.write_text(render_markdown(result, groups, plots, title))
    write_json(out.with_suffix(".json"), result)
    return result
