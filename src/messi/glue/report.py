"""Turn a sweep folder into report.md (tables) and report.png (GLUE average vs size)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .. import io
from ..errors import MessiError
from .metrics import glue_score
from .sweep import UNCOMPRESSED  # the columns with no ratio


def load_records(sweep_dir: Path) -> list[dict]:
    """Every cell's metrics.json under ``sweep_dir``."""
    records = []
    for path in sorted(Path(sweep_dir).glob("*/seed-*/*/metrics.json")):
        try:
            record = json.loads(path.read_text())
            missing = [k for k in ("task", "method", "ratio", "metrics", "embedding_params") if k not in record]
        except (OSError, ValueError, TypeError) as e:
            raise MessiError(f"{path} is corrupt ({e}); delete it and rerun `messi sweep` to redo that cell") from e
        if missing:
            raise MessiError(f"{path} lacks {', '.join(missing)}; delete it and rerun `messi sweep` to redo that cell")
        records.append(record)
    if not records:
        raise MessiError(f"{sweep_dir} holds no metrics.json; run `messi sweep --output-dir {sweep_dir}` first")
    return records


def _mean(values) -> float:
    return float(np.mean(list(values)))


def _std(values) -> float:
    """Sample standard deviation; NaN (not a crash, as in ``statistics``) if a value is NaN."""
    return float(np.std(list(values), ddof=1))


def _column(r: dict) -> str:
    return r["method"] if r["method"] in UNCOMPRESSED else f"{r['method']} {r['ratio']:.0%}"


def _column_order(column: str):
    """none, then the control, then by ratio, the SVD baseline before MESSI at each ratio."""
    if column in UNCOMPRESSED:
        return (0, 0.0, column != "none")
    method, ratio = column.split()
    return (1, float(ratio.rstrip("%")), "" if method == "svd" else method)


def _compressed(columns) -> list[str]:
    """The columns that compressed something (they have a ratio), in order."""
    return [c for c in columns if c not in UNCOMPRESSED]


def _mean_spread(values: list[float], fmt: str = ".1f", spread_fmt: str = ".1f") -> str:
    """``mean ± std`` of ``values`` (just the value for one, a dash for none)."""
    if not values:
        return "—"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(_mean(values), fmt)} ± {format(_std(values), spread_fmt)}"


#: (stage, the metrics.json key holding that stage's metrics)
STAGES = (("recovery", "metrics"), ("no_recovery", "no_recovery"))


def _stage_metrics(r: dict, stage: str, key: str) -> dict | None:
    """The record's metrics for ``stage``; a compressed cell run with --recovery-epochs 0 has no
    "after recovery" stage (its metrics are the no-recovery ones). Uncompressed cells have no
    no-recovery metrics, so they always keep theirs."""
    if stage == "recovery" and r.get("no_recovery") and r.get("epochs") == 0:
        return None
    return r.get(key)


def summarize(records: list[dict]):
    """scores[(column, stage)][task] -> list of GLUE scores over seeds; stage is
    "recovery" (after fine-tuning) or "no_recovery"; plus each column's embedding parameters."""
    scores = defaultdict(lambda: defaultdict(list))
    params = {}
    for r in records:
        col = _column(r)
        params[col] = r["embedding_params"]
        for stage, key in STAGES:
            if _stage_metrics(r, stage, key):
                scores[(col, stage)][r["task"]].append(glue_score(r[key]))
    return scores, params


def paired_drops(records: list[dict]):
    """drops[(column, stage)][task][seed] = score - the uncompressed score of the same task and seed.

    Pairing by seed removes what the columns share (the fine-tuned base model, the data order),
    so the spread left is the compression's own.
    """
    ref = {(r["task"], r["seed"]): glue_score(r["metrics"]) for r in records if r["method"] == "none"}
    drops = defaultdict(lambda: defaultdict(dict))
    for r in records:
        base = ref.get((r["task"], r["seed"]))
        if r["method"] == "none" or base is None:
            continue
        for stage, key in STAGES:
            if _stage_metrics(r, stage, key):
                drops[(_column(r), stage)][r["task"]][r["seed"]] = glue_score(r[key]) - base
    return drops


def _difference(a: dict, b: dict) -> dict:
    """Per-seed a - b over the seeds both have."""
    return {s: a[s] - b[s] for s in a.keys() & b.keys()}


def _average_drop(by_task: dict[str, dict], tasks: list[str]) -> str:
    """Mean over tasks of each task's mean drop; ± the spread over seeds that every task has."""
    mean = _average({t: list(by_task.get(t, {}).values()) for t in tasks}, tasks)
    if mean is None:
        return "—"
    common = set.intersection(*(set(by_task[t]) for t in tasks))
    if len(common) < 2:
        return f"**{mean:+.2f}**"
    per_seed = [_mean(by_task[t][s] for t in tasks) for s in sorted(common)]
    return f"**{mean:+.2f}** ± {_std(per_seed):.2f}"


def _drop_table(drops, columns: list[str], tasks: list[str], stage: str, seeds_of: dict,
                differences: bool = True) -> list[str]:
    """Rows of the paired-drop table for one stage, with a MESSI - SVD column per ratio unless
    ``differences`` is False."""
    cols = [c for c in columns if c != "none" and (c, stage) in drops]
    ratios = sorted({c.split()[1] for c in _compressed(cols)}) if differences else []
    diffs = {f"messi − svd {q}": (f"messi {q}", f"svd {q}") for q in ratios
             if f"messi {q}" in cols and f"svd {q}" in cols}
    table = {c: drops[(c, stage)] for c in cols}
    for name, (m, v) in diffs.items():
        table[name] = {t: _difference(table[m].get(t, {}), table[v].get(t, {})) for t in tasks}
    names = list(table)
    lines = ["| task | seeds | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for t in tasks:
        lines.append(f"| {t} | {seeds_of[t]} | "
                     + " | ".join(_mean_spread(list(table[c].get(t, {}).values()), "+.2f", ".2f") for c in names) + " |")
    for label, subset in _task_sets(tasks):
        lines.append(f"| **{label}** | | " + " | ".join(_average_drop(table[c], subset) for c in names) + " |")
    return lines + [""]


def against_control(drops) -> dict:
    """Each compressed column's after-recovery drop minus the control's, per task and seed: the
    recovered model against the base trained the same extra epochs uncompressed. Empty when the
    sweep has no control."""
    control = drops.get(("control", "recovery"))
    if not control:
        return {}
    return {(c, stage): {t: _difference(by_task, control.get(t, {})) for t, by_task in by_seed.items()}
            for (c, stage), by_seed in drops.items() if stage == "recovery" and c not in UNCOMPRESSED}


def _task_sets(tasks: list[str]) -> list[tuple[str, list[str]]]:
    """The averages to show: all tasks, and without WNLI, whose adversarial dev set GLUE
    baselines (BERT's paper among them) leave out of their average."""
    sets = [("average", tasks)]
    if "wnli" in tasks and len(tasks) > 1:
        sets.append(("average without wnli", [t for t in tasks if t != "wnli"]))
    return sets


def _average(by_task: dict[str, list[float]], tasks: list[str]) -> float | None:
    if any(not by_task.get(t) for t in tasks):
        return None
    return _mean(_mean(by_task[t]) for t in tasks)


def write_report(sweep_dir: str | Path) -> tuple[Path, Path, str]:
    """Write SWEEP/report.md and SWEEP/report.png; return their paths and the markdown."""
    sweep_dir = Path(sweep_dir)
    records = load_records(sweep_dir)
    scores, params = summarize(records)
    tasks = sorted({r["task"] for r in records})
    columns = sorted(params, key=_column_order)
    seeds = sorted({r["seed"] for r in records})
    ref = scores[("none", "recovery")]
    lines = [f"# GLUE sweep: {sweep_dir.name}", "",
             f"Tasks: {', '.join(tasks)}. Seeds: {', '.join(map(str, seeds))}. Scores are the GLUE "
             "convention (mean of the task's metrics, in %: CoLA Matthews corr., MRPC F1/acc, "
             "STS-B Pearson/Spearman, others accuracy), mean ± std over seeds. Drop = column - none.", ""]
    for stage, title in (("recovery", "After recovery fine-tuning"), ("no_recovery", "Without recovery")):
        cols = [c for c in columns if (c, stage) in scores or (stage == "no_recovery" and c == "none")]
        # skipped when compressed cells exist but none has this stage (--recovery-epochs 0,
        # compress-first); a sweep of uncompressed cells alone shows its scores once
        if cols == ["none"] and (stage == "no_recovery" or len(columns) > 1):
            continue
        lines += [f"## {title}", "", "| task | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for t in tasks:
            cells = [_mean_spread((ref if c == "none" else scores[(c, stage)]).get(t, [])) for c in cols]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        for label, subset in _task_sets(tasks):
            avg_ref = _average(ref, subset)
            avgs = [_average(ref if c == "none" else scores[(c, stage)], subset) for c in cols]
            lines.append(f"| **{label}** | " + " | ".join("—" if a is None else f"**{a:.2f}**" for a in avgs) + " |")
            lines.append("| drop vs none | " + " | ".join(
                "—" if a is None or avg_ref is None else f"{a - avg_ref:+.2f}" for a in avgs) + " |")
        lines.append("")
    drops = paired_drops(records)
    seeds_of = {t: len(ref.get(t, [])) for t in tasks}
    lines += ["## Drop against uncompressed, paired by seed", "",
              "Each cell: the column's score minus the uncompressed model's score for the same task "
              "and seed, mean ± std over seeds; `messi − svd` is the per-seed difference of the two "
              "(positive: MESSI better). The average's ± is the spread over seeds every task has.", ""]
    for stage, title in (("recovery", "After recovery"), ("no_recovery", "Without recovery")):
        if any(s == stage for _, s in drops):
            lines += [f"### {title}", ""] + _drop_table(drops, columns, tasks, stage, seeds_of)
    versus_control = against_control(drops)
    if versus_control:
        lines += ["## After recovery, against the control", "",
                  "A recovered model trained the base's epochs plus the recovery epochs; the control "
                  "trained the same base the same extra epochs with nothing compressed. Each cell: the "
                  "recovered score minus the control's, same task and seed, mean ± std over seeds.", ""]
        lines += _drop_table(versus_control, columns, tasks, "recovery", seeds_of, differences=False)
    lines += ["## Sizes", "", "| column | embedding parameters |", "|---|---|"]
    lines += [f"| {c} | {params[c]:,} |" for c in columns] + [""]
    md = "\n".join(lines)
    md_path, png_path = sweep_dir / "report.md", sweep_dir / "report.png"
    io.write_text(md_path, md)
    _plot(scores, params, tasks, png_path, drops, columns)
    return md_path, png_path, md


def _plot(scores, params, tasks, path: Path, drops, columns: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bars) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1, 1.2]})
    _plot_drops(bars, drops, _compressed(columns), tasks)
    ref = _average(scores[("none", "recovery")], tasks)
    if ref is not None:
        ax.axhline(ref, color="black", lw=1)
        ax.plot(params["none"] / 1e6, ref, "k*", ms=12, label=f"uncompressed ({params['none'] / 1e6:.1f}M)")
    control = _average(scores[("control", "recovery")], tasks) if ("control", "recovery") in scores else None
    if control is not None:
        ax.axhline(control, color="grey", lw=1, ls=":")
        ax.plot(params["control"] / 1e6, control, "D", color="grey",
                label="control (uncompressed + the recovery epochs)")
    methods = sorted({c.split()[0] for c in _compressed(params)})
    for method in methods:
        color = _color(method)
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
    io.save_png(fig, path)


def _color(method: str) -> str:
    """One colour per method in both panels: SVD blue, MESSI orange, calibrated green / red,
    calibrated and output-aware purple / brown."""
    return {"svd": "C0", "messi": "C1", "svd+cal": "C2", "messi+cal": "C3", "svd+cal+out": "C4",
            "messi+cal+out": "C5"}.get(method, "C6")


def _plot_drops(ax, drops, columns: list[str], tasks: list[str]) -> None:
    """Grouped bars: each task's mean drop without recovery per column, std over seeds as whiskers."""
    width = 0.8 / max(1, len(columns))
    first_ratio = columns[0].split()[1] if columns else None
    for i, col in enumerate(columns):
        by_task = drops.get((col, "no_recovery"), {})
        values = [list(by_task.get(t, {}).values()) for t in tasks]
        means = [_mean(v) if v else 0.0 for v in values]
        spread = [_std(v) if len(v) > 1 else 0.0 for v in values]
        ax.bar([x + (i - (len(columns) - 1) / 2) * width for x in range(len(tasks))], means, width,
               yerr=spread, capsize=2, label=col, color=_color(col.split()[0]),
               hatch=None if col.split()[1] == first_ratio else "//", edgecolor="white")
    ax.axhline(0, color="black", lw=1)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("score - uncompressed (points)")
    ax.set_title("Per-task drop without recovery (paired by seed)")
    ax.grid(axis="y", alpha=0.3)
    if columns:  # a sweep of uncompressed cells alone has no bars
        ax.legend(fontsize=8)
