"""Fault injection: kill -9 at random moments and concurrent writers never leave a broken or
half-written output, and the next run cleans up after the dead one."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import messi

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "messi.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def strays(folder, name):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_during_compress_leaves_nothing_broken(tmp_path, seed):
    out = tmp_path / "out"
    proc = start("compress", "--method", "svd", "--ratio", "0.5", out)
    time.sleep(random.Random(seed).uniform(2.0, 9.0))  # somewhere in loading, fitting or saving
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists():  # the rename happened: the folder must be complete
        assert messi.load(out) is not None
    # the next run (to the same place with --overwrite, or a fresh one) works and cleans up
    rerun = start("compress", "--method", "svd", "--ratio", "0.5", "--overwrite", out)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()
    assert messi.load(out) is not None
    assert strays(tmp_path, "out") == []


def test_two_writers_to_one_folder(tmp_path):
    out = tmp_path / "out"
    a = start("compress", "--method", "svd", "--ratio", "0.5", out)
    b = start("compress", "--method", "svd", "--ratio", "0.6", out)
    codes = sorted([a.wait(timeout=600), b.wait(timeout=600)])
    errors = a.stderr.read() + b.stderr.read()
    assert codes == [0, 2], errors  # one wins; the other says so and writes nothing
    assert "appeared" in errors or "already exists" in errors
    info = messi.read_info(out)
    assert info["ratio"] in (0.5, 0.6)
    assert messi.load(out) is not None
    assert strays(tmp_path, "out") == []


def test_kill_9_during_sweep_then_resume(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--output-dir", out, "--tasks", "wnli", "--methods", "none,svd", "--ratios", "0.5",
            "--seeds", "0", "--epochs", "1", "--batch-size", "8", "--max-seq-length", "32",
            "--max-train-samples", "16", "--max-eval-samples", "16", "--recovery-epochs", "1"]
    proc = start(*args)
    time.sleep(random.Random(7).uniform(8.0, 20.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = start(*args)
    assert rerun.wait(timeout=900) == 0, rerun.stderr.read()[-2000:]
    cell = out / "wnli" / "seed-0" / "svd-r0.5" / "metrics.json"
    assert json.loads(cell.read_text())["method"] == "svd"
    leftovers = [p for p in out.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]
    assert leftovers == []
