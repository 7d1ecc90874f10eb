"""The STS study behind `messi demo`: real pairs, resumable cells, report tables that match the records."""

import json

import pytest

from messi.evaluate import sts_pairs
from messi.sts_study import Setting, Study, table, write_report


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("study")


def test_cells_are_scored_once_and_resumed(study_dir, monkeypatch):
    pairs = sts_pairs("dev", limit=30)
    settings = [Setting("svd", 0.5), Setting("svd", 0.5, 1, ("glue:wnli",)),
                Setting("svd", 0.5, 1, ("glue:wnli",), output_texts=32)]
    study = Study(None, pairs, study_dir / "sts.json")
    records = study.run(settings, progress=False)
    ref = study.uncompressed()
    assert ref["pairs"] == 30 and records[0]["pairs"] == 30
    assert records[1]["calibration"] == ["glue:wnli"] and records[1]["weighted_rel_error"] is not None
    assert records[0]["rank"] == records[1]["rank"] and records[0]["compression"] >= 0.5
    assert records[1]["output_rel_error"] is None and 0 < records[2]["output_rel_error"] < 1
    assert records[2]["rel_error"] != records[1]["rel_error"]
    # a new Study on the same file computes nothing again
    calls = []
    monkeypatch.setattr(Study, "_cell", lambda self, s: calls.append(s))
    again = Study(None, pairs, study_dir / "sts.json").run(settings, progress=False)
    assert calls == [] and again == records
    saved = json.loads((study_dir / "sts.json").read_text())
    assert {c["key"] for c in saved["cells"]} == {"none"} | {s.key for s in settings}

    md_path, png_path, md = write_report(again, ref, study_dir, "test")
    assert png_path.stat().st_size > 1000
    for r in again:  # every cell printed is the record's number and its change against none
        assert f"{r['spearman']:.2f} ({r['spearman'] - ref['spearman']:+.2f})" in md
    assert "| SVD calibrated |" in md and "| SVD |" in md and "| SVD calibrated, output-aware |" in md and "50%" in md


def test_setting_keys_stay_those_of_earlier_results_files():
    """Results files written before output_texts existed resume: their keys are unchanged."""
    assert Setting("svd", 0.6).key == "svd|k1|r0.6|plain"
    assert Setting("messi", 0.8, 5, ("glue:cola",)).key == "messi|k5|r0.8|glue:cola@a10,p1"
    assert Setting("messi", 0.8, 5, ("glue:cola",), output_texts=4000).key == "messi|k5|r0.8|glue:cola@a10,p1|out4000"
    assert Setting("messi", 0.8, 5, seed=3).key == "messi|k5|r0.8|plain|seed3"


def test_a_setting_seed_overrides_the_studys(study_dir, monkeypatch):
    import importlib

    seeds = []

    def no_fit(model, config, calibration=None, **kwargs):
        seeds.append(config.seed)
        raise RuntimeError("stop before fitting")

    monkeypatch.setattr(importlib.import_module("messi.sts_study"), "compress", no_fit)
    study = Study(None, sts_pairs("dev", limit=10), study_dir / "seeds.json", seed=7)
    for setting in (Setting("messi", 0.5, 2), Setting("messi", 0.5, 2, seed=3), Setting("messi", 0.5, 2, seed=0)):
        with pytest.raises(RuntimeError, match="stop before fitting"):
            study._cell(setting)
    assert seeds == [7, 3, 0]


def test_output_metric_needs_calibration_text(study_dir):
    from messi import MessiError

    study = Study(None, sts_pairs("dev", limit=10), study_dir / "other.json")
    with pytest.raises(MessiError, match="output_texts needs calibration sources"):
        study.run([Setting("svd", 0.5, output_texts=8)], progress=False)


def test_table_layout_by_hand():
    ref = {"spearman": 80.0}
    recs = [{"method": "svd", "ratio": 0.4, "k": 1, "calibration": [], "spearman": 79.5},
            {"method": "messi", "ratio": 0.4, "k": 5, "calibration": ["x"], "spearman": 80.25},
            {"method": "svd", "ratio": 0.8, "k": 1, "calibration": [], "spearman": 70.0}]
    assert table(recs, ref).splitlines() == [
        "| method | 40% | 80% |",
        "|---|---|---|",
        "| SVD | 79.50 (-0.50) | 70.00 (-10.00) |",
        "| MESSI k=5 calibrated | 80.25 (+0.25) |  |",
    ]


def test_demo_without_data_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from messi.cli import app

    result = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path / "nowhere"), "--output-dir",
                                      str(tmp_path / "d")])
    assert result.exit_code == 2 and "GLUE data folder not found" in result.output
    assert not (tmp_path / "d").exists()


def test_bytes_cells_rtn_and_size_and_their_table(study_dir):
    from messi.sts_study import bytes_table

    study = Study(None, sts_pairs("dev", limit=30), study_dir / "bytes.json", n_init=1, max_iter=5)
    int4 = study.rtn(4, 128)
    assert int4["bytes"] == 30522 * (192 + 3 * 2) and int4["table_bytes"] == 30522 * 384 * 4
    (sized,) = study.run([Setting("messi", 0.5, 2, size=0.03)], progress=False)
    assert sized["bytes"] <= 0.03 * sized["table_bytes"] and sized["stored_bits"] in (8, 4)
    assert Setting("messi", 0.5, 2, size=0.03).key.endswith("|size0.03")
    assert Setting("messi", 0.5, 2).key == "messi|k2|r0.5|plain"  # keys of older files unchanged
    md = bytes_table([("int4", int4), ("messi", sized)], study.uncompressed())
    ref = study.uncompressed()["spearman"]
    assert f"| int4 | {100 * int4['bytes'] / int4['table_bytes']:.2f}% | {int4['spearman']:.2f} " \
           f"({int4['spearman'] - ref:+.2f}) |" in md.splitlines()
    assert study.rtn(4, 128) is study.results["rtn|b4|g128"]  # cached
