"""The report's arithmetic on hand-made records (the real sweep is in test_glue_end_to_end)."""

import pytest

from messi.glue.report import paired_drops, write_report


def _record(task, seed, method, ratio, acc, acc_no_recovery=None):
    r = {"task": task, "seed": seed, "method": method, "ratio": ratio,
         "embedding_params": {"none": 100, "control": 100, "svd": 60, "messi": 61}[method],
         "metrics": {"accuracy": acc}}
    if acc_no_recovery is not None:
        r["no_recovery"] = {"accuracy": acc_no_recovery}
    return r


RECORDS = [
    _record("rte", 1, "none", 0.0, 0.60), _record("rte", 2, "none", 0.0, 0.70),
    _record("rte", 1, "svd", 0.4, 0.58, 0.50), _record("rte", 2, "svd", 0.4, 0.66, 0.62),
    _record("rte", 1, "messi", 0.4, 0.61, 0.55), _record("rte", 2, "messi", 0.4, 0.69, 0.66),
]


def test_drops_are_paired_by_seed():
    drops = paired_drops(RECORDS)
    assert drops[("svd 40%", "recovery")]["rte"] == pytest.approx({1: -2.0, 2: -4.0})
    assert drops[("messi 40%", "no_recovery")]["rte"] == pytest.approx({1: -5.0, 2: -4.0})


def test_report_shows_paired_difference(tmp_path):
    import json

    for i, r in enumerate(RECORDS):
        cell = tmp_path / r["task"] / f"seed-{r['seed']}" / f"{r['method']}-{i}"
        cell.mkdir(parents=True)
        (cell / "metrics.json").write_text(json.dumps(r))
    _, png, md = write_report(tmp_path)
    # after recovery: messi - svd = (+1 - -2, -1 - -4) = (3, 3) -> mean 3, std 0
    assert "| rte | 2 | -3.00 ± 1.41 | +0.00 ± 1.41 | +3.00 ± 0.00 |" in md
    # without recovery: (-5 - -10, -4 - -8) = (5, 4)
    assert "+4.50 ± 0.71" in md
    assert png.stat().st_size > 1000


# Two tasks (WNLI: the "average without wnli" row), two seeds, SVD and MESSI at 40% with and
# without recovery, and SVD at 60% run with --recovery-epochs 0 on one seed of RTE only.
# Scores are accuracies in %; every number below was worked out by hand from these records.
GOLDEN = [
    _record("rte", 1, "none", 0.0, 0.60), _record("rte", 2, "none", 0.0, 0.70),
    _record("rte", 1, "svd", 0.4, 0.58, 0.50), _record("rte", 2, "svd", 0.4, 0.66, 0.62),
    _record("rte", 1, "messi", 0.4, 0.61, 0.55), _record("rte", 2, "messi", 0.4, 0.69, 0.66),
    _record("wnli", 1, "none", 0.0, 0.50), _record("wnli", 2, "none", 0.0, 0.54),
    _record("wnli", 1, "svd", 0.4, 0.48, 0.40), _record("wnli", 2, "svd", 0.4, 0.46, 0.44),
    _record("wnli", 1, "messi", 0.4, 0.50, 0.46), _record("wnli", 2, "messi", 0.4, 0.52, 0.48),
    {**_record("rte", 1, "svd", 0.6, 0.40, 0.40), "epochs": 0, "embedding_params": 40},
]

GOLDEN_MD = """\
# GLUE sweep: golden

Tasks: rte, wnli. Seeds: 1, 2. Scores are the GLUE convention (mean of the task's metrics, in %: CoLA \
Matthews corr., MRPC F1/acc, STS-B Pearson/Spearman, others accuracy), mean ± std over seeds. \
Drop = column - none.

## After recovery fine-tuning

| task | none | svd 40% | messi 40% |
|---|---|---|---|
| rte | 65.0 ± 7.1 | 62.0 ± 5.7 | 65.0 ± 5.7 |
| wnli | 52.0 ± 2.8 | 47.0 ± 1.4 | 51.0 ± 1.4 |
| **average** | **58.50** | **54.50** | **58.00** |
| drop vs none | +0.00 | -4.00 | -0.50 |
| **average without wnli** | **65.00** | **62.00** | **65.00** |
| drop vs none | +0.00 | -3.00 | +0.00 |

## Without recovery

| task | none | svd 40% | messi 40% | svd 60% |
|---|---|---|---|---|
| rte | 65.0 ± 7.1 | 56.0 ± 8.5 | 60.5 ± 7.8 | 40.0 |
| wnli | 52.0 ± 2.8 | 42.0 ± 2.8 | 47.0 ± 1.4 | — |
| **average** | **58.50** | **49.00** | **53.75** | — |
| drop vs none | +0.00 | -9.50 | -4.75 | — |
| **average without wnli** | **65.00** | **56.00** | **60.50** | **40.00** |
| drop vs none | +0.00 | -9.00 | -4.50 | -25.00 |

## Drop against uncompressed, paired by seed

Each cell: the column's score minus the uncompressed model's score for the same task and seed, \
mean ± std over seeds; `messi − svd` is the per-seed difference of the two (positive: MESSI better). \
The average's ± is the spread over seeds every task has.

### After recovery

| task | seeds | svd 40% | messi 40% | messi − svd 40% |
|---|---|---|---|---|
| rte | 2 | -3.00 ± 1.41 | +0.00 ± 1.41 | +3.00 ± 0.00 |
| wnli | 2 | -5.00 ± 4.24 | -1.00 ± 1.41 | +4.00 ± 2.83 |
| **average** | | **-4.00** ± 2.83 | **-0.50** ± 1.41 | **+3.50** ± 1.41 |
| **average without wnli** | | **-3.00** ± 1.41 | **+0.00** ± 1.41 | **+3.00** ± 0.00 |

### Without recovery

| task | seeds | svd 40% | messi 40% | svd 60% | messi − svd 40% |
|---|---|---|---|---|---|
| rte | 2 | -9.00 ± 1.41 | -4.50 ± 0.71 | -20.00 | +4.50 ± 0.71 |
| wnli | 2 | -10.00 ± 0.00 | -5.00 ± 1.41 | — | +5.00 ± 1.41 |
| **average** | | **-9.50** ± 0.71 | **-4.75** ± 0.35 | — | **+4.75** ± 1.06 |
| **average without wnli** | | **-9.00** ± 1.41 | **-4.50** ± 0.71 | **-20.00** | **+4.50** ± 0.71 |

## Sizes

| column | embedding parameters |
|---|---|
| none | 100 |
| svd 40% | 60 |
| messi 40% | 61 |
| svd 60% | 40 |
"""


def _write_sweep(folder, records):
    import json

    for i, r in enumerate(records):
        cell = folder / r["task"] / f"seed-{r['seed']}" / f"{r['method']}-{i}"
        cell.mkdir(parents=True)
        (cell / "metrics.json").write_text(json.dumps(r))
    return folder


def test_report_every_cell_against_hand_computed_values(tmp_path, monkeypatch):
    from messi import io

    monkeypatch.setattr(io, "save_png", lambda fig, path: None)  # the figure has its own test
    md_path, _, md = write_report(_write_sweep(tmp_path / "golden", GOLDEN))
    assert md == GOLDEN_MD
    assert md_path.read_text() == GOLDEN_MD


def test_report_figure_shows_the_averages_and_the_paired_drops(tmp_path, monkeypatch):
    from messi import io

    figures = []
    monkeypatch.setattr(io, "save_png", lambda fig, path: figures.append((fig, path)))
    _, png_path, _ = write_report(_write_sweep(tmp_path / "golden", GOLDEN))
    (fig, path), = figures
    assert path == png_path
    left, right = fig.axes
    # left: GLUE average (both tasks) against embedding parameters, as in GOLDEN_MD
    assert left.get_xlabel() == "embedding parameters (millions)"
    assert left.get_ylabel() == "GLUE average over 2 task(s)"
    lines = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in left.get_lines()}
    assert {label for label in lines if not label.startswith("_")} == {
        "uncompressed (0.0M)", "svd (after recovery)", "svd (no recovery)", "messi (after recovery)",
        "messi (no recovery)"}
    assert lines["uncompressed (0.0M)"] == ([100e-6], [pytest.approx(58.5)])
    assert lines["svd (after recovery)"] == ([60e-6], [pytest.approx(54.5)])
    assert lines["svd (no recovery)"] == ([60e-6], [pytest.approx(49.0)])  # svd 60% lacks wnli: no point
    assert lines["messi (after recovery)"] == ([61e-6], [pytest.approx(58.0)])
    assert lines["messi (no recovery)"] == ([61e-6], [pytest.approx(53.75)])
    horizontal = [ln for ln in left.get_lines() if ln.get_label().startswith("_")]
    assert [list(ln.get_ydata()) for ln in horizontal] == [[pytest.approx(58.5)] * 2]
    colors = {label: ln.get_color() for ln in left.get_lines() for label in [ln.get_label()]}
    assert colors["svd (after recovery)"] == colors["svd (no recovery)"] != colors["messi (no recovery)"]
    # right: per task (rte, wnli) the mean paired drop without recovery, one bar group per column
    assert [t.get_text() for t in right.get_xticklabels()] == ["rte", "wnli"]
    from matplotlib.container import BarContainer

    bars = {c.get_label(): c for c in right.containers if isinstance(c, BarContainer)}
    assert list(bars) == ["svd 40%", "messi 40%", "svd 60%"]
    heights = {k: [pytest.approx(b.get_height()) for b in c] for k, c in bars.items()}
    assert heights == {"svd 40%": [-9.0, -10.0], "messi 40%": [-4.5, -5.0], "svd 60%": [-20.0, 0.0]}
    width = 0.8 / 3
    assert [b.get_width() for c in bars.values() for b in c] == pytest.approx([width] * 6)  # side by side
    assert [b.get_x() + b.get_width() / 2 for b in bars["svd 40%"]] == pytest.approx([-width, 1 - width])
    assert [b.get_x() + b.get_width() / 2 for b in bars["svd 60%"]] == pytest.approx([width, 1 + width])
    assert [b.get_hatch() for c in bars.values() for b in c][::2] == [None, None, "//"]  # 60%: hatched
    assert bars["svd 40%"][0].get_facecolor() == bars["svd 60%"][0].get_facecolor() != bars["messi 40%"][0].get_facecolor()
    # whiskers: std over the two seeds (svd 40% rte: -10 and -8)
    whiskers = bars["svd 40%"].errorbar.lines[2][0].get_segments()
    assert [seg[1][1] - seg[0][1] for seg in whiskers] == pytest.approx([2 * 2 ** 0.5, 0.0])
    assert any(ln.get_ydata()[0] == 0 for ln in right.get_lines())  # the zero line
    assert right.get_ylabel() == "score - uncompressed (points)"
    assert right.get_title() == "Per-task drop without recovery (paired by seed)"
    assert left.get_title() == "Accuracy against embedding size"
    assert lines["svd (after recovery)"] and left.get_lines()[1].get_marker() == "*"
    styles = {ln.get_label(): (ln.get_linestyle(), ln.get_marker()) for ln in left.get_lines()}
    assert styles["svd (after recovery)"] == ("-", "o") and styles["svd (no recovery)"] == ("--", "x")
    assert left.get_legend() is not None and right.get_legend() is not None


def test_bad_sweep_folders_are_named_with_the_fix(tmp_path):
    from messi.errors import MessiError
    from messi.glue.report import load_records

    with pytest.raises(MessiError, match="holds no metrics.json; run `messi sweep"):
        load_records(tmp_path)
    folder = _write_sweep(tmp_path / "s", GOLDEN[:2])
    cell = next(folder.glob("rte/seed-1/*/metrics.json"))
    cell.write_text('{"task": "rte", "method": "none", "ratio": 0.0, "metrics": {}}')
    with pytest.raises(MessiError, match=r"metrics.json lacks embedding_params; delete it and rerun"):
        load_records(folder)
    cell.write_text('{"task": "rte", "meth')
    with pytest.raises(MessiError, match=r"seed-1/none-0/metrics.json is corrupt"):
        load_records(folder)
    cell.write_text('[1, 2]')  # JSON, but not a record
    with pytest.raises(MessiError, match="corrupt|lacks"):
        load_records(folder)
    assert [r["seed"] for r in load_records(_write_sweep(tmp_path / "ok", GOLDEN[:2]))] == [1, 2]


def test_report_files_and_the_stages_a_sweep_did_not_run(tmp_path, monkeypatch):
    from matplotlib.container import BarContainer

    from messi import io

    figures = []
    monkeypatch.setattr(io, "save_png", lambda fig, path: figures.append(fig))
    # --recovery-epochs 0: compressed cells only have the no-recovery stage
    zero = [_record("rte", 1, "none", 0.0, 0.60), _record("sst2", 1, "none", 0.0, 0.90),
            {**_record("rte", 1, "svd", 0.4, 0.50, 0.50), "epochs": 0},
            {**_record("sst2", 1, "svd", 0.4, 0.80, 0.80), "epochs": 0}]
    folder = _write_sweep(tmp_path / "zero", zero)
    md_path, png_path, md = write_report(folder)
    assert (md_path, png_path) == (folder / "report.md", folder / "report.png")
    assert "## After recovery fine-tuning" not in md and "### After recovery" not in md
    assert "| rte | 60.0 | 50.0 |" in md and "| sst2 | 90.0 | 80.0 |" in md
    assert "| rte | 1 | -10.00 |" in md and "| **average** | | **-10.00** |" in md
    assert "without wnli" not in md  # two tasks, neither is WNLI
    bars = [c for c in figures[-1].axes[1].containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == ["svd 40%"]
    assert [b.get_width() for b in bars[0]] == pytest.approx([0.8, 0.8])  # one column: the full slot
    assert [b.get_height() for b in bars[0]] == pytest.approx([-10.0, -10.0])
    whiskers = bars[0].errorbar.lines[2][0].get_segments()
    assert [seg[1][1] - seg[0][1] for seg in whiskers] == [0.0, 0.0]  # one seed: no spread
    # compress-first: compressed cells have no no-recovery stage
    first = [_record("rte", 1, "none", 0.0, 0.60), _record("rte", 1, "messi", 0.4, 0.58)]
    md = write_report(_write_sweep(tmp_path / "first", first))[2]
    assert "## After recovery fine-tuning" in md and "## Without recovery" not in md
    assert "| rte | 60.0 | 58.0 |" in md and "| rte | 1 | -2.00 |" in md


def test_task_sets_and_unpaired_seeds():
    from messi.glue.report import _difference, _task_sets

    assert _task_sets(["rte", "wnli"]) == [("average", ["rte", "wnli"]), ("average without wnli", ["rte"])]
    assert _task_sets(["wnli"]) == [("average", ["wnli"])]
    assert _task_sets(["rte", "sst2"]) == [("average", ["rte", "sst2"])]
    assert _difference({1: 2.0, 2: 5.0}, {2: 1.0, 3: 4.0}) == {2: 4.0}  # only seeds both have
    drops = paired_drops(GOLDEN)
    assert not any(column == "none" for column, _ in drops)
    assert set(drops) == {(c, s) for c in ("svd 40%", "messi 40%") for s in ("recovery", "no_recovery")} | {
        ("svd 60%", "no_recovery")}


def test_messi_minus_svd_needs_both_at_that_ratio():
    from messi.glue.report import _drop_table

    drops = paired_drops(GOLDEN + [{**_record("wnli", 1, "messi", 0.6, 0.30, 0.30), "epochs": 0,
                                    "embedding_params": 41}])
    columns = ["none", "svd 40%", "messi 40%", "svd 60%", "messi 60%"]
    lines = _drop_table(drops, columns, ["rte", "wnli"], "no_recovery", {"rte": 2, "wnli": 2})
    assert lines[0] == "| task | seeds | svd 40% | messi 40% | svd 60% | messi 60% | messi − svd 40% | messi − svd 60% |"
    # svd 60% has only RTE seed 1 and messi 60% only WNLI seed 1: no seed to pair
    assert lines[2] == "| rte | 2 | -9.00 ± 1.41 | -4.50 ± 0.71 | -20.00 | — | +4.50 ± 0.71 | — |"
    assert lines[3] == "| wnli | 2 | -10.00 ± 0.00 | -5.00 ± 1.41 | — | -20.00 | +5.00 ± 1.41 | — |"


def test_report_colours_are_one_per_method():
    from messi.glue.report import _color

    assert [_color(m) for m in ("svd", "messi", "svd+cal", "messi+cal", "svd+cal+out", "messi+cal+out", "other")] == \
        ["C0", "C1", "C2", "C3", "C4", "C5", "C6"]


def test_a_nan_score_is_shown_as_nan(tmp_path, monkeypatch):
    # a model that predicts one constant has an undefined Pearson/Matthews: shown, not hidden
    from messi import io
    from messi.glue.report import _mean_spread

    assert _mean_spread([float("nan")]) == "nan" and _mean_spread([1.0, float("nan")]) == "nan ± nan"
    monkeypatch.setattr(io, "save_png", lambda fig, path: None)
    records = [_record("rte", 1, "none", 0.0, 0.60), _record("rte", 1, "svd", 0.4, float("nan"), 0.5)]
    md = write_report(_write_sweep(tmp_path / "nan", records))[2]
    assert "| rte | 60.0 | nan |" in md and "| rte | 1 | +nan |" in md and "| **average** | **60.00** | **nan** |" in md
    records += [_record("rte", 2, "none", 0.0, 0.70), _record("rte", 2, "svd", 0.4, 0.5, 0.5)]
    md = write_report(_write_sweep(tmp_path / "nan2", records))[2]
    assert "| rte | 2 | +nan ± nan |" in md


def test_report_of_a_sweep_with_only_uncompressed_cells(tmp_path, monkeypatch):
    from messi import io

    monkeypatch.setattr(io, "save_png", lambda fig, path: None)
    md = write_report(_write_sweep(tmp_path / "base", [_record("rte", 1, "none", 0.0, 0.6)]))[2]
    assert "| rte | 60.0 |" in md and "### " not in md and "| none | 100 |" in md
    assert md.count("| rte | 60.0 |") == 1 and "## Without recovery" not in md  # shown once


# RTE, two seeds: the uncompressed base, the control (the base trained the recovery epochs with
# nothing compressed), SVD and MESSI at 40% after recovery; worked out by hand below.
CONTROL = RECORDS + [_record("rte", 1, "control", 0.0, 0.62), _record("rte", 2, "control", 0.0, 0.69)]


def test_recovered_cells_are_measured_against_the_control(tmp_path, monkeypatch):
    from matplotlib.colors import to_rgba

    from messi import io
    from messi.glue.report import against_control

    figures = []
    monkeypatch.setattr(io, "save_png", lambda fig, path: figures.append(fig))
    versus = against_control(paired_drops(CONTROL))
    # recovered minus control, per seed: svd (58 - 62, 66 - 69), messi (61 - 62, 69 - 69)
    assert versus == {("svd 40%", "recovery"): {"rte": pytest.approx({1: -4.0, 2: -3.0})},
                      ("messi 40%", "recovery"): {"rte": pytest.approx({1: -1.0, 2: 0.0})}}
    md = write_report(_write_sweep(tmp_path / "control", CONTROL))[2]
    assert "| task | none | control | svd 40% | messi 40% |" in md  # after recovery
    assert "| rte | 65.0 ± 7.1 | 65.5 ± 4.9 | 62.0 ± 5.7 | 65.0 ± 5.7 |" in md
    assert "| task | none | svd 40% | messi 40% |" in md  # without recovery: the control has no such stage
    # against none, the control is a column like the others: (+2, -1)
    assert "| rte | 2 | +0.50 ± 2.12 | -3.00 ± 1.41 | +0.00 ± 1.41 | +3.00 ± 0.00 |" in md
    assert CONTROL_SECTION in md
    left, right = figures[-1].axes
    points = {ln.get_label(): ln for ln in left.get_lines()}
    control = points["control (uncompressed + the recovery epochs)"]
    assert (list(control.get_xdata()), list(control.get_ydata())) == ([100e-6], [pytest.approx(65.5)])
    assert control.get_marker() == "D" and to_rgba(control.get_color()) == to_rgba("grey")
    assert "control (after recovery)" not in points
    # the uncompressed model's line (black, solid) and the control's (grey, dotted)
    horizontal = [ln for ln in left.get_lines() if ln.get_label().startswith("_")]
    assert [list(ln.get_ydata()) for ln in horizontal] == [[pytest.approx(65.0)] * 2, [pytest.approx(65.5)] * 2]
    assert [(to_rgba(ln.get_color()), ln.get_linestyle()) for ln in horizontal] == [
        (to_rgba("black"), "-"), (to_rgba("grey"), ":")]
    from matplotlib.container import BarContainer

    assert [c.get_label() for c in right.containers if isinstance(c, BarContainer)] == ["svd 40%", "messi 40%"]


CONTROL_SECTION = """
## After recovery, against the control

A recovered model trained the base's epochs plus the recovery epochs; the control trained the same \
base the same extra epochs with nothing compressed. Each cell: the recovered score minus the \
control's, same task and seed, mean ± std over seeds.

| task | seeds | svd 40% | messi 40% |
|---|---|---|---|
| rte | 2 | -3.50 ± 0.71 | -0.50 ± 0.71 |
| **average** | | **-3.50** ± 0.71 | **-0.50** ± 0.71 |

## Sizes
"""


def test_a_task_without_a_control_has_no_cells_against_it():
    from messi.glue.report import against_control

    wnli = [_record("wnli", 1, "none", 0.0, 0.50), _record("wnli", 1, "svd", 0.4, 0.48, 0.40)]
    versus = against_control(paired_drops(CONTROL + wnli))
    assert versus[("svd 40%", "recovery")]["wnli"] == {}
    assert versus[("svd 40%", "recovery")]["rte"] == pytest.approx({1: -4.0, 2: -3.0})


def test_no_control_no_section(tmp_path, monkeypatch):
    from messi import io
    from messi.glue.report import against_control

    monkeypatch.setattr(io, "save_png", lambda fig, path: None)
    assert against_control(paired_drops(RECORDS)) == {}
    assert "against the control" not in write_report(_write_sweep(tmp_path / "plain", RECORDS))[2]
