"""`messi glue` and `messi sweep` end to end on real GLUE rows and the real shipped model (tiny)."""

import json
import os
import subprocess
import sys

import pytest

from messi.glue import sweep as sweep_module
from messi.glue.report import write_report
from messi.glue.sweep import Sweep
from messi.glue.train import TrainConfig

TINY = dict(epochs=1.0, learning_rate=5e-5, batch_size=8, max_seq_length=32, max_train_samples=16,
            max_eval_samples=24, seed=0)


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "messi.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=900)


def test_glue_on_real_rte_rows_writes_metrics(tmp_path):
    out = tmp_path / "rte"
    result = run("glue", "--task", "rte", "--method", "messi", "--ratio", "0.4", "--k", "2",
                 "--max-train-samples", 16, "--max-eval-samples", 24, "--epochs", 1,
                 "--batch-size", 8, "--max-seq-length", 32, "--output-dir", out)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "metrics.json").read_text())
    for key in ("task", "method", "ratio", "k", "rank", "embedding_params", "total_params", "metrics",
                "train_samples", "epochs", "seed", "seconds"):
        assert key in record
    assert record["task"] == "rte" and record["method"] == "messi" and record["k"] == 2
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    assert record["train_samples"] == 16
    assert record["embedding_params"] < 0.61 * 30522 * 384
    assert record["evaluated_on"] == "dev"


def test_glue_holdout_scores_on_held_out_train_rows(tmp_path):
    out = tmp_path / "rte"
    result = run("glue", "--task", "rte", "--holdout", 0.1, "--max-train-samples", 16, "--epochs", 1,
                 "--batch-size", 8, "--max-seq-length", 32, "--output-dir", out)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["evaluated_on"].startswith("train holdout (0.1 of train")
    assert record["eval_samples"] == 249 and record["train_samples"] == 16  # 10% of RTE's 2,490 rows
    assert "scored on train holdout" in " ".join(result.stdout.split())


def test_bad_holdout_is_one_line_exit_2(tmp_path):
    result = run("glue", "--task", "rte", "--holdout", 0.9, "--output-dir", tmp_path / "x")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--holdout must be in (0, 0.5]" in errors[0]
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_missing_task_is_one_line_exit_2(tmp_path):
    result = run("glue", "--task", "mnli", "--output-dir", tmp_path / "x")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "MNLI data is not available" in errors[0]


class Killed(Exception):
    """Stands for a kill in the middle of a cell."""


@pytest.fixture
def trained(monkeypatch) -> list[float]:
    """The epochs of every fine-tuning the sweep runs, in order (it still trains)."""
    epochs_seen = []
    real_fine_tune = sweep_module.fine_tune

    def spy(model, tokenizer, task, train, cfg, epochs=None):
        epochs_seen.append(epochs if epochs is not None else cfg.epochs)
        return real_fine_tune(model, tokenizer, task, train, cfg, epochs=epochs)

    monkeypatch.setattr(sweep_module, "fine_tune", spy)
    return epochs_seen


def test_sweep_resumes_after_interruption(tmp_path, monkeypatch, trained):
    out = tmp_path / "sweep"
    args = dict(tasks=["wnli"], methods=["none", "svd", "messi"], ratios=[0.5], k=2, seeds=[0],
                cfg=TrainConfig(**TINY), recovery_epochs=1.0)
    real_cell = Sweep._run_cell
    calls, kill = [], ["messi"]

    def interrupted(self, task, seed, method, ratio, target):
        calls.append(method)
        if method in kill:
            raise Killed
        return real_cell(self, task, seed, method, ratio, target)

    monkeypatch.setattr(Sweep, "_run_cell", interrupted)
    with pytest.raises(Killed):
        Sweep(out, **args).run()
    base = out / "wnli" / "seed-0" / "base" / "model.safetensors"
    svd = out / "wnli" / "seed-0" / "svd-r0.5" / "metrics.json"
    assert base.is_file() and svd.is_file()
    assert not (out / "wnli" / "seed-0" / "messi-r0.5" / "metrics.json").exists()
    stamps = (base.stat().st_mtime_ns, svd.stat().st_mtime_ns)

    trained.clear()
    calls.clear()
    kill.clear()
    Sweep(out, **args).run()
    assert calls == ["messi"]          # only the unfinished cell ran
    assert len(trained) == 1           # its recovery; the cached base was not retrained
    assert (base.stat().st_mtime_ns, svd.stat().st_mtime_ns) == stamps
    cell = json.loads((out / "wnli" / "seed-0" / "messi-r0.5" / "metrics.json").read_text())
    assert {"metrics", "no_recovery", "reference"} <= set(cell) and cell["no_recovery"]["accuracy"] >= 0

    md_path, png_path, md = write_report(out)
    assert md_path.is_file() and png_path.stat().st_size > 1000
    assert "svd 50%" in md and "messi 50%" in md and "Without recovery" in md


def test_recovery_epochs_are_the_ones_trained(tmp_path, trained):
    """Recovery trains --recovery-epochs (here 2), not the base's epochs (1); calibrated MESSI
    uses the task's own train text."""
    out = tmp_path / "sweep"
    Sweep(out, ["wnli"], ["none", "messi+cal"], [0.5], 2, [0], cfg=TrainConfig(**TINY), recovery_epochs=2.0).run()
    assert trained == [1.0, 2.0]  # the base, then the recovery
    cell = json.loads((out / "wnli" / "seed-0" / "messi+cal-r0.5" / "metrics.json").read_text())
    assert cell["epochs"] == 2.0 and cell["method"] == "messi+cal"
    assert cell["calibration"]["sources"] == ["glue:wnli"] and cell["calibration"]["texts"] == 2 * 635


def test_the_control_trains_the_base_the_recovery_epochs_uncompressed(tmp_path, monkeypatch, trained):
    """"control": the cached base, fine-tuned --recovery-epochs (2) with nothing compressed, on
    the same path as a recovered cell; its record is the yardstick the report subtracts."""
    def refuse(*_a, **_kw):
        raise AssertionError("the control compressed something")

    monkeypatch.setattr(sweep_module, "compress", refuse)
    out = tmp_path / "sweep"
    Sweep(out, ["wnli"], ["none", "control"], [0.5], 2, [0], cfg=TrainConfig(**TINY), recovery_epochs=2.0).run()
    assert trained == [1.0, 2.0]  # the base, then the control's extra epochs
    folder = out / "wnli" / "seed-0"
    control, none = (json.loads((folder / c / "metrics.json").read_text()) for c in ("control", "none"))
    assert control["method"] == "control" and control["epochs"] == 2.0 and control["no_recovery"] is None
    assert control["embedding_params"] == none["embedding_params"] and control["compression"] == 0.0
    assert 0.0 <= control["metrics"]["accuracy"] <= 1.0
    assert "against the control" not in write_report(out)[2]  # nothing compressed to set against it


def test_output_aware_cells_measure_the_classifiers_metric_on_its_pair_inputs(tmp_path, monkeypatch):
    """"svd+cal+out": row weights from the task's train text, and the output metric of the
    fine-tuned classifier's logits on its train inputs, read as pairs (WNLI: 635 pairs)."""
    seen = []
    real = sweep_module.calibration_batches

    def spy(tokenizer, texts, **kw):
        seen.append(texts)
        return real(tokenizer, texts, **kw)

    monkeypatch.setattr(sweep_module, "calibration_batches", spy)
    out = tmp_path / "out"
    Sweep(out, ["wnli"], ["none", "svd+cal+out"], [0.5, 0.6], 2, [0], cfg=TrainConfig(**TINY),
          recovery_epochs=0.0).run()
    cell = json.loads((out / "wnli" / "seed-0" / "svd+cal+out-r0.5" / "metrics.json").read_text())
    assert cell["method"] == "svd+cal+out"
    assert cell["calibration"]["output_metric"]["texts"] == 635
    assert cell["calibration"]["output_metric"]["output"] == "task head logits"
    # measured once for the two cells of the same base
    assert len(seen) == 1 and len(seen[0]) == 635 and all(isinstance(t, tuple) and len(t) == 2 for t in seen[0])
    other = json.loads((out / "wnli" / "seed-0" / "svd+cal+out-r0.6" / "metrics.json").read_text())
    assert other["calibration"]["output_metric"] == cell["calibration"]["output_metric"]


def test_compress_first_protocol_end_to_end(tmp_path):
    out = tmp_path / "cf"
    Sweep(out, ["wnli"], ["none", "svd"], [0.5], 2, [0], cfg=TrainConfig(**TINY), recovery_epochs=1.0,
          protocol="compress-first").run()
    cell = json.loads((out / "wnli" / "seed-0" / "svd-r0.5" / "metrics.json").read_text())
    assert cell["protocol"] == "compress-first" and cell["no_recovery"] is None
    assert cell["epochs"] == 1.0 and 0 <= cell["metrics"]["accuracy"] <= 1
    assert cell["embedding_params"] < 0.51 * 30522 * 384


def test_fine_tuning_a_saved_compressed_folder(tmp_path):
    import torch

    import messi
    from messi.glue.run import run_glue

    folder = messi.save(messi.compress(messi.load_pretrained(), method="svd", ratio=0.5), tmp_path / "svd",
                        tokenizer=messi.load_tokenizer())
    before = messi.load(folder).get_input_embeddings().coords.detach().clone()
    record = run_glue("wnli", tmp_path / "run", str(folder), "none", cfg=TrainConfig(**TINY))
    assert record["embedding_params"] == 30522 * record["rank"] + record["rank"] * 384
    assert record["method"] == "svd" and 0 <= record["metrics"]["accuracy"] <= 1
    # the folder itself is untouched by training
    assert torch.equal(messi.load(folder).get_input_embeddings().coords, before)
