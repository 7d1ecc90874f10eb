"""`messi glue` and `messi sweep` under torchrun with two CPU processes (gloo), on real RTE rows.

What must hold: the clustering runs on the main process only, all processes train one model
together, only the main process prints and writes, and the metrics written equal a
single-process evaluation of the same trained weights on the same dev rows.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from messi.datasets import get_task, read_split
from messi.glue.train import TrainConfig, evaluate, load_classifier, subsample, tokenizer_for

#: all 277 RTE dev rows: several eval batches per process, the last one uneven (padded
#: duplicates that must not be counted)
SMALL = ["--max-train-samples", "32", "--epochs", "1", "--batch-size", "8", "--max-seq-length", "64"]


def torchrun(tmp_path: Path, *args) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``messi ARGS`` on two processes; returns the run and each rank's (stdout, stderr)."""
    logs = tmp_path / "logs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--log-dir", str(logs), "--redirects", "3", "-m", "messi.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)
    ranks = {}
    for rank in (0, 1):
        out = sorted(logs.glob(f"**/attempt_0/{rank}/stdout.log"))[-1]
        ranks[rank] = (out.read_text(), (out.parent / "stderr.log").read_text())
    return done, ranks


def evaluate_alone(model_dir: Path, record: dict) -> dict:
    """The record's task metrics for ``model_dir``, in this one process, on the same dev rows."""
    task, cfg = get_task(record["task"]), TrainConfig(**record["config"])
    dev = subsample(read_split(task, "dev"), cfg.max_eval_samples, cfg.seed)
    return evaluate(load_classifier(model_dir, task), tokenizer_for(model_dir), task, dev, cfg)


def test_glue_under_torchrun_compresses_once_prints_once_and_matches_one_process(tmp_path):
    out = tmp_path / "out"
    done, ranks = torchrun(tmp_path, "glue", "--task", "rte", "--method", "messi", "--ratio", "0.8", "--k", "2",
                           *SMALL, "--output-dir", out, "--save-model")
    assert done.returncode == 0, (done.stderr + ranks[0][1] + ranks[1][1])[-3000:]
    (main_out, main_err), (other_out, other_err) = ranks[0], ranks[1]
    assert main_out.count("rte / messi") == 1 and "rte / messi" not in other_out
    assert "projective clustering" in main_err and "projective clustering" not in other_err
    # data-parallel: 32 rows / (8 per batch x 2 processes) = 2 steps; a process training alone takes 4
    assert re.search(r"\| 2/2 \[", main_err) and not re.search(r"\| 4/4 \[", main_err + other_err)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model"]  # nothing else, no temp files
    record = json.loads((out / "metrics.json").read_text())
    assert record["eval_samples"] == 277 and record["k"] == 2
    assert evaluate_alone(out / "model", record) == record["metrics"]


def test_sweep_under_torchrun_writes_once_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--tasks", "rte", "--methods", "svd", "--ratios", "0.6", "--seeds", "7",
            "--recovery-epochs", "0", *SMALL, "--output-dir", out]
    done, ranks = torchrun(tmp_path, *args)
    assert done.returncode == 0, (done.stderr + ranks[0][1] + ranks[1][1])[-3000:]
    assert ranks[0][0].count("wrote ") == 1 and "wrote " not in ranks[1][0]
    seed_dir = out / "rte" / "seed-7"
    assert sorted(p.name for p in seed_dir.iterdir()) == ["base", "none", "svd-r0.6"]
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "report.png", "rte"]
    reference = json.loads((seed_dir / "none" / "metrics.json").read_text())
    assert reference["train_samples"] == 32 and reference["eval_samples"] == 277
    assert evaluate_alone(seed_dir / "base", reference) == reference["metrics"]
    cell = json.loads((seed_dir / "svd-r0.6" / "metrics.json").read_text())
    assert cell["metrics"] == cell["no_recovery"] and cell["reference"] == reference["metrics"]

    stamps = {p: p.stat().st_mtime_ns for p in seed_dir.rglob("metrics.json")}
    done, ranks = torchrun(tmp_path / "again", *args)  # everything is done: nothing is redone
    assert done.returncode == 0, (done.stderr + ranks[0][1])[-3000:]
    assert {p: p.stat().st_mtime_ns for p in seed_dir.rglob("metrics.json")} == stamps
    assert ranks[0][0].count("wrote ") == 1 and "wrote " not in ranks[1][0]


def test_the_control_trains_data_parallel_under_torchrun(tmp_path):
    """The sweep's control cell (the base trained --recovery-epochs, uncompressed) trains one
    model on both processes and is written once, by the main process."""
    out = tmp_path / "sweep"
    done, ranks = torchrun(tmp_path, "sweep", "--tasks", "rte", "--methods", "control", "--seeds", "7",
                           "--recovery-epochs", "1", *SMALL, "--output-dir", out)
    assert done.returncode == 0, (done.stderr + ranks[0][1] + ranks[1][1])[-3000:]
    seed_dir = out / "rte" / "seed-7"
    assert sorted(p.name for p in seed_dir.iterdir()) == ["base", "control", "none"]
    control = json.loads((seed_dir / "control" / "metrics.json").read_text())
    assert control["method"] == "control" and control["epochs"] == 1.0 and control["eval_samples"] == 277
    # the base and the control each: 32 rows / (8 per batch x 2 processes) = 2 steps, never 4
    main_err, other_err = ranks[0][1], ranks[1][1]
    assert len(re.findall(r"\| 2/2 \[", main_err)) >= 2 and not re.search(r"\| 4/4 \[", main_err + other_err)
    assert ranks[0][0].count("wrote ") == 1 and "wrote " not in ranks[1][0]
