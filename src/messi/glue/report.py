"""Turn a sweep folder into report.md (tables) and report.png (GLUE average vs size)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from ..errors import MessiError
from .metrics import glue_score


def load_records(sweep_dir: Path) -> list[dict]:
    """Every cell's metrics.json under ``sweep_dir``."""
    records = [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("*/seed-*/*/metrics.json"))]
    if not records:
        raise MessiError(f"{sweep_dir} holds no metrics.json; run `messi sweep --output-dir {sweep_dir}` first")
    return records


def _column(r: dict) -> str:
    return "none" if r["method"] == "none" else f"{r['method']} {r['ratio']:.0%}"


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def summarize(records: list[dict]):
    """scores[(column, stage)][task] -> list of GLUE scores over seeds; stage is
    "recovery" (after fine-tuning) or "no_recovery"; plus each column's embedding parameters."""
    scores = defaultdict(lambda: defaultdict(list))
    params = {}
    for r in records:
        col = _column(r)
        params[col] = r["embedding_params"]
        scores[(col, "recovery")][r["task"]].append(glue_score(r["metrics"]))
        if r.get("no_recovery"):
            scores[(col, "no_recovery")][r["task"]].append(glue_score(r["no_recovery"]))
    return scores, params


def _average(by_task: dict[str, list[float]], tasks: list[str]) -> float | None:
    if any(not by_task.get(t) for t in tasks):
        return None
    return statistics.mean(statistics.mean(by_task[t]) for t in tasks)


def write_report(sweep_dir: str | Path) -> tuple[Path, Path, str]:
    """Write SWEEP/report.md and SWEEP/report.png; return their paths and the markdown."""
    from ..io import write_text

    sweep_dir = Path(sweep_dir)
    records = load_records(sweep_dir)
    scores, params = summarize(records)
    tasks = sorted({r["task"] for r in records})
    columns = sorted(params, key=lambda c: (c != "none", c.split()[0], c))
    seeds = sorted({r["seed"] for r in records})
    ref = scores[("none", "recovery")]
    lines = [f"# GLUE sweep: {sweep_dir.name}", "",
             f"Tasks: {', '.join(tasks)}. Seeds: {', '.join(map(str, seeds))}. Scores are the GLUE "
             "convention (mean of the task's metrics, in %: CoLA Matthews corr., MRPC F1/acc, "
             "STS-B Pearson/Spearman, others accuracy), mean ± std over seeds. Drop = column - none.", ""]
    for stage, title in (("recovery", "After recovery fine-tuning"), ("no_recovery", "Without recovery")):
        cols = [c for c in columns if (c, stage) in scores or (stage == "no_recovery" and c == "none")]
        lines += [f"## {title}", "", "| task | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for t in tasks:
            cells = [_mean_spread((ref if c == "none" else scores[(c, stage)]).get(t, [])) for c in cols]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        avg_ref = _average(ref, tasks)
        avgs = [_average(ref if c == "none" else scores[(c, stage)], tasks) for c in cols]
        lines.append("| **average** | " + " | ".join("—" if a is None else f"**{a:.2f}**" for a in avgs) + " |")
        lines.append("| drop vs none | " + " | ".join(
            "—" if a is None or avg_ref is None else f"{a - avg_ref:+.2f}" for a in avgs) + " |")
        lines.append("")
    lines += ["## Sizes", "", "| column | embedding parameters |", "|---|---|"]
    lines += [f"| {c} | {params[c]:,} |" for c in columns] + [""]
    md = "\n".join(lines)
    md_path, png_path = sweep_dir / "report.md", sweep_dir / "report.png"
    write_text(md_path, md)
    _plot(scores, params, tasks, png_path)
    return md_path, png_path, md


def _plot(scores, params, tasks, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_file

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ref = _average(scores[("none", "recovery")], tasks)
    if ref is not None:
        ax.axhline(ref, color="black", lw=1)
        ax.plot(params["none"] / 1e6, ref, "k*", ms=12, label=f"uncompressed ({params['none'] / 1e6:.1f}M)")
    methods = sorted({c.split()[0] for c in params if c != "none"})
    for i, method in enumerate(methods):
        color = f"C{i}"
        for stage, style in (("recovery", "-o"), ("no_recovery", "--x")):
            pts = sorted((params[c], _average(scores[(c, stage)], tasks)) for c in params
                         if c.split()[0] == method and (c, stage) in scores)
            pts = [(x / 1e6, y) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), style, color=color,
                        label=f"{method} ({'after recovery' if stage == 'recovery' else 'no recovery'})")
    ax.set_xlabel("embedding parameters (millions)")
    ax.set_ylabel(f"GLUE average over {len(tasks)} task(s)")
    ax.set_title("Accuracy against embedding size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
