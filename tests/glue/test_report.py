"""The report's arithmetic on hand-made records (the real sweep is in test_glue_end_to_end)."""

import pytest

from messi.glue.report import paired_drops, write_report


def _record(task, seed, method, ratio, acc, acc_no_recovery=None):
    r = {"task": task, "seed": seed, "method": method, "ratio": ratio,
         "embedding_params": {"none": 100, "svd": 60, "messi": 61}[method],
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
