"""Large vocabularies: the default `messi compress` fit (compress()'s defaults, read from its
signature: today MESSI k=3, -40%, 4 restarts on a 32,768-row sample, up to 50 steps, tol 1e-4)
on tables of today's large-vocabulary shapes, with seconds, EM steps (on all rows, and on the
restarts' sample; the refinement's first assignment counts as one on all rows), peak resident
memory and the error against SVD at the same size.

Shapes: 151,936 x 896 (Qwen2.5-0.5B's embedding) and 262,144 x 640 (Gemma 3 270M's). No such
model ships offline here, so the tables are synthetic and documented: Gaussian rows with a
power-law spectrum (singular values ~ i^-0.5) in a random rotation, seed 0
(em_speed.power_law_table). Each shape runs in its own fresh process, so that its peak RSS is
its own.

    python benchmarks/scale.py                    # both shapes, about 3 minutes on 2 cores
    python benchmarks/scale.py --shapes 20000x256 # any shapes, to try the script
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import messi
import messi.clustering
from em_speed import power_law_table
from messi import rank_for_ratio
from messi.factorize import messi_factorize, relative_error, svd_factorize
from messi.io import write_json

RESULTS = Path(__file__).parent / "results"
SHAPES = ("151936x896", "262144x640")


def count_em_steps(n: int) -> list[int]:
    """Wrap the assignment, called once per EM step, with counters: [steps on all ``n`` rows,
    steps on the restarts' sample]. Returns the counters."""
    calls = [0, 0]
    assign = messi.clustering.assign

    def counted(X, *args, **kwargs):
        calls[0 if X.shape[0] == n else 1] += 1
        return assign(X, *args, **kwargs)

    messi.clustering.assign = counted
    return calls


def compress_defaults() -> dict:
    """messi.compress's own defaults (k, ratio and the clustering settings), read from its signature."""
    params = inspect.signature(messi.compress).parameters
    return {name: params[name].default for name in ("k", "ratio", "seed", "n_init", "max_iter", "tol", "init_size")}


def worker(shape: str) -> dict:
    """Fit one table with the compress defaults in this process; what it cost, as a dict."""
    n, d = (int(x) for x in shape.split("x"))
    A = power_law_table(n, d)
    settings = compress_defaults()
    k, ratio = settings.pop("k"), settings.pop("ratio")
    j = rank_for_ratio(n, d, k, ratio)
    steps = count_em_steps(n)
    start = time.perf_counter()
    factors = messi_factorize(A, k, j, **settings)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    err = relative_error(A, factors.reconstruct())
    svd_j = rank_for_ratio(n, d, 1, ratio)
    svd_err = relative_error(A, svd_factorize(A, svd_j).reconstruct())
    return {"shape": shape, "k": k, "ratio": ratio, "rank": j, "seconds": seconds, "em_steps": steps[0],
            "sample_em_steps": steps[1], "init_size": settings["init_size"], "peak_rss_bytes": peak,
            "table_bytes": A.numel() * A.element_size(), "rel_error": err, "svd_rank": svd_j,
            "svd_rel_error": svd_err, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated NxD shapes")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    rows = []
    for shape in args.shapes.split(","):
        out = subprocess.run([sys.executable, __file__, "--worker", shape], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{shape}: the worker failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = Table(title=f"Default MESSI fit (k={rows[0]['k']}, -{rows[0]['ratio']:.0%}) on large synthetic tables, {rows[0]['threads']} CPU threads")
    for col in ("table", "j", "fit s", "EM steps (all rows)", "EM steps (sample)", "table MB", "peak RSS MB",
                "MESSI/SVD error"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["shape"], str(r["rank"]), f"{r['seconds']:.1f}", str(r["em_steps"]),
                      f"{r['sample_em_steps']} x {r['init_size']} rows", f"{r['table_bytes'] / 2**20:.0f}",
                      f"{r['peak_rss_bytes'] / 2**20:.0f}", f"{r['rel_error'] / r['svd_rel_error']:.3f}")
    Console().print(table)
    write_json(RESULTS / "scale.json", rows)


if __name__ == "__main__":
    main()
