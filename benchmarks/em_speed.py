"""EM fit speed: messi.ProjectiveClustering against a faithful numpy re-implementation of the
reference algorithm (random equal split, distances through null spaces, fixed steps, numpy).

Prints a table and writes benchmarks/results/em_speed.json. Run alone on a quiet machine:

    python benchmarks/em_speed.py                 # MiniLM 30522x384 real + RoBERTa-shape synthetic
    python benchmarks/em_speed.py --quick         # smaller, to check the script works
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from messi import ProjectiveClustering, rank_for_ratio
from messi.io import write_json


def reference_em(A: np.ndarray, k: int, j: int, steps: int, rng: np.random.Generator) -> float:
    """The reference code's loop: random equal split, then per step for each subspace the
    null space (d x (d-j)) from a full SVD of its rows, distances |a N|^2, argmin. Returns cost."""
    n, d = A.shape
    labels = np.empty(n, dtype=np.int64)
    labels[rng.permutation(n)] = np.arange(n) % k
    nulls = [None] * k
    for _ in range(steps):
        for i in range(k):
            rows = A[labels == i]
            if len(rows) >= d:  # the reference keeps an empty cluster's old basis
                vt = np.linalg.svd(rows, full_matrices=False)[2]  # (d, d) when rows >= d
                nulls[i] = vt[j:].T  # (d, d - j)
        dist = np.stack([np.square(A @ N).sum(1) for N in nulls], axis=1)
        labels = dist.argmin(1)
    return float(dist.min(1).sum())


def time_it(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def matrices(quick: bool, which: str = "default"):
    """(name, matrix) pairs: the real MiniLM table and a documented RoBERTa-shape synthetic one,
    or (``which="mpnet"``) the real all-mpnet-base-v2 table (after `messi fetch-model mpnet`)."""
    from safetensors.torch import load_file

    from messi.models import resolve_model

    if which == "mpnet":
        path = resolve_model("mpnet") / "model.safetensors"
        yield "all-mpnet-base-v2 30527x768 (real)", load_file(str(path))["embeddings.word_embeddings.weight"]
        return
    A = load_file(str(resolve_model("minilm") / "model.safetensors"))["embeddings.word_embeddings.weight"]
    if quick:
        yield "minilm[:5000] (real)", A[:5000]
        return
    yield "all-MiniLM-L6-v2 30522x384 (real)", A
    yield "synthetic 50265x768 (RoBERTa shape)", power_law_table(50265, 768)


def power_law_table(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """A synthetic embedding table (n, d), float32: Gaussian rows with a power-law spectrum like
    real embeddings (singular values ~ i^-0.5) in a random rotation; built in row blocks so that
    no temporary is larger than a block."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
    Q = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    out = torch.empty(n, d)
    for s in range(0, n, 65536):
        out[s : s + 65536] = (torch.randn(min(65536, n - s), d, generator=g) * spectrum) @ Q
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--matrices", choices=("default", "mpnet"), default="default",
                        help="default: MiniLM + RoBERTa-shape synthetic; mpnet: the fetched all-mpnet-base-v2")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON path (default results/em_speed[_mpnet].json)")
    args = parser.parse_args()
    rows = []
    for name, A in matrices(args.quick, args.matrices):
        n, d = A.shape
        svd_s, _ = time_it(lambda: torch.linalg.svdvals(A), args.repeats)
        for k in (3, 5):
            j = rank_for_ratio(n, d, k, 0.4)
            An = A.numpy().astype(np.float32)
            ref_s, ref_cost = time_it(lambda: reference_em(An, k, j, args.steps, np.random.default_rng(0)), 1)
            pc = ProjectiveClustering(k, j, n_init=1, max_iter=args.steps, tol=-1.0, init="random", seed=0)
            ours_s, fitted = time_it(lambda: pc.fit(A), args.repeats)
            ours_step = ours_s / fitted.n_iter_
            ref_step = ref_s / args.steps
            rows.append({"matrix": name, "k": k, "j": j, "steps": args.steps,
                         "reference_s_per_step": ref_step, "messi_s_per_step": ours_step,
                         "speedup": ref_step / ours_step, "reference_cost": ref_cost,
                         "messi_cost": fitted.cost_, "svd_seconds": svd_s,
                         "threads": torch.get_num_threads()})
    table = Table(title="EM step time: reference (numpy, null spaces) vs messi (torch)")
    for col in ("matrix", "k", "j", "ref s/step", "messi s/step", "speedup", "ref cost", "messi cost", "full SVD s"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["matrix"], str(r["k"]), str(r["j"]), f"{r['reference_s_per_step']:.2f}",
                      f"{r['messi_s_per_step']:.3f}", f"{r['speedup']:.1f}x", f"{r['reference_cost']:.4g}",
                      f"{r['messi_cost']:.4g}", f"{r['svd_seconds']:.2f}")
    Console().print(table)
    suffix = "" if args.matrices == "default" else f"_{args.matrices}"
    write_json(args.out or Path(__file__).parent / "results" / f"em_speed{suffix}.json", rows)


if __name__ == "__main__":
    main()
