"""`Sweep`'s bookkeeping: which finished cells a resumed sweep may keep (no training here)."""

import json

import pytest

from messi import MessiError
from messi.glue.sweep import Sweep
from messi.glue.train import TrainConfig
from messi.io import write_json

CFG = dict(epochs=3.0, learning_rate=1e-4, batch_size=32, max_seq_length=128, max_train_samples=None,
           max_eval_samples=None)


def _finished(out, cell, method, epochs, k=None, seed=0, protocol="paper", **config):
    record = {"task": "wnli", "method": method, "metrics": {"accuracy": 0.5}, "epochs": epochs, "k": k,
              "protocol": protocol, "seed": seed, "config": {**CFG, "seed": seed, **config}}
    write_json(out / "wnli" / f"seed-{seed}" / cell / "metrics.json", record)


def _sweep(out, **kw):
    args = dict(tasks=["wnli"], methods=["none", "svd", "messi"], ratios=[0.5], k=5, seeds=[0],
                cfg=TrainConfig(**{**CFG, "seed": 0}), recovery_epochs=2.0)
    return Sweep(out, **{**args, **kw})


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*_args, **_kw):
        raise AssertionError("a finished cell was run again")
    monkeypatch.setattr(Sweep, "_run_cell", refuse)


def _grid(out, none=None, svd=None, messi=None):
    """A finished none/svd/messi grid at 50%, seed 0; each dict changes what that cell ran with."""
    _finished(out, "none", "none", **{"epochs": 3.0, **(none or {})})
    _finished(out, "svd-r0.5", "svd", **{"epochs": 2.0, **(svd or {})})
    _finished(out, "messi-r0.5", "messi", **{"epochs": 2.0, "k": 5, **(messi or {})})


def test_a_finished_grid_with_the_same_settings_is_kept(tmp_path, no_training):
    _grid(tmp_path)
    assert _sweep(tmp_path).run() == tmp_path


@pytest.mark.parametrize("changes, words", [
    ({"none": {"learning_rate": 2e-5}}, "none was run with --learning-rate 2e-05 and this sweep asks for 0.0001"),
    ({"svd": {"max_train_samples": 20000}}, "svd-r0.5 was run with --max-train-samples 20000 and this sweep asks for None"),
    ({"svd": {"epochs": 0.0}}, "svd-r0.5 was run with --recovery-epochs 0.0 and this sweep asks for 2.0"),
    ({"messi": {"k": 3}}, "messi-r0.5 was run with --k 3 and this sweep asks for 5"),
    ({"messi": {"protocol": "compress-first"}}, "was run with --protocol compress-first"),
])
def test_a_finished_cell_run_with_other_settings_stops_the_sweep(tmp_path, no_training, changes, words):
    """Resuming into a folder of other settings would mix two experiments in one table."""
    _grid(tmp_path, **changes)
    with pytest.raises(MessiError, match="give another --output-dir") as error:
        _sweep(tmp_path).run()
    assert words in str(error.value)


def test_the_base_cell_is_compared_on_training_settings_only(tmp_path, no_training):
    """The reference cell trained the base (--epochs 3), not a recovery: its "epochs" is not a
    recovery setting, and k does not apply to it or to SVD."""
    _grid(tmp_path, svd={"k": 1})
    _sweep(tmp_path, recovery_epochs=2.0).run()
    record = json.loads((tmp_path / "wnli" / "seed-0" / "none" / "metrics.json").read_text())
    assert record["epochs"] == 3.0


def test_compress_first_compares_the_cells_epochs_with_epochs(tmp_path, no_training):
    _finished(tmp_path, "none", "none", 3.0, protocol="compress-first")
    _finished(tmp_path, "svd-r0.5", "svd", 3.0, protocol="compress-first")
    _sweep(tmp_path, methods=["none", "svd"], protocol="compress-first", recovery_epochs=9.0).run()
    _finished(tmp_path, "svd-r0.5", "svd", 1.0, protocol="compress-first")
    with pytest.raises(MessiError, match="svd-r0.5 was run with --epochs 1.0 and this sweep asks for 3.0"):
        _sweep(tmp_path, methods=["none", "svd"], protocol="compress-first").run()


def test_a_record_without_the_settings_is_kept(tmp_path, no_training):
    """Cells written before a setting was recorded are not refused for lacking it."""
    for cell, method in (("none", "none"), ("svd-r0.5", "svd"), ("messi-r0.5", "messi")):
        write_json(tmp_path / "wnli" / "seed-0" / cell / "metrics.json",
                   {"task": "wnli", "method": method, "metrics": {"accuracy": 0.5}})
    _sweep(tmp_path).run()


def test_the_control_is_one_cell_per_task_and_seed(tmp_path):
    sweep = _sweep(tmp_path, methods=["svd", "control", "none"], ratios=[0.4, 0.6], seeds=[0, 1])
    cells = [(seed, method, ratio) for _task, seed, method, ratio in sweep.cells()]
    assert cells == [(s, m, r) for s in (0, 1)
                     for m, r in (("none", 0.0), ("control", 0.0), ("svd", 0.4), ("svd", 0.6))]


@pytest.mark.parametrize("settings", [dict(recovery_epochs=0.0), dict(protocol="compress-first")])
def test_the_control_needs_a_recovery_to_match(tmp_path, settings):
    with pytest.raises(MessiError, match="needs --protocol paper and --recovery-epochs above 0"):
        _sweep(tmp_path, methods=["none", "control"], **settings)


def test_a_control_run_with_other_recovery_epochs_stops_the_sweep(tmp_path, no_training):
    _grid(tmp_path)
    _finished(tmp_path, "control", "control", 2.0)
    _sweep(tmp_path, methods=["none", "control", "svd", "messi"]).run()
    _finished(tmp_path, "control", "control", 1.0)
    with pytest.raises(MessiError, match="control was run with --recovery-epochs 1.0 and this sweep asks for 2.0"):
        _sweep(tmp_path, methods=["none", "control", "svd", "messi"]).run()
