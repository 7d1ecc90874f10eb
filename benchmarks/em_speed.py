"""EM fit speed: messi.ProjectiveClustering against a faithful numpy re-implementation of the
reference algorithm (random equal split, distances through null spaces, fixed steps, numpy).

Prints a table and writes benchmarks/results/em_speed.json. Run alone on a quiet machine:

    python benchmarks/em_speed.py                 # MiniLM 30522x384 real + RoBERTa-shape synthetic
    python benchmarks/em_speed.py --quick         # smaller, to check the script works
    python benchmarks/em_speed.py curves          # time to cost: reference vs ours, MiniLM and MPNet

``curves`` records the best cost reached against seconds for the reference with its own defaults
(10 initialisations x 10 steps), our defaults and our fast settings, at k=3 and 40%; writes
results/em_time_to_cost.json and .png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from messi import ProjectiveClustering, rank_for_ratio
from messi.io import write_json


def reference_em(A: np.ndarray, k: int, j: int, steps: int, rng: np.random.Generator, on_step=None) -> float:
    """The reference code's loop: random equal split, then per step for each subspace the
    null space (d x (d-j)) from a full SVD of its rows, distances |a N|^2, argmin. Returns cost;
    ``on_step(cost)`` is called after every step."""
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
        if on_step is not None:
            on_step(float(dist.min(1).sum()))
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


class Curve:
    """Best cost reached so far against seconds since the curve was made: (seconds, cost) points."""

    def __init__(self):
        self.points: list[tuple[float, float]] = []
        self.t0 = time.perf_counter()

    def record(self, cost: float) -> None:
        best = min(cost, self.points[-1][1]) if self.points else cost
        self.points.append((time.perf_counter() - self.t0, best))

    def time_to(self, cost: float) -> float | None:
        """Seconds until the best cost was at most ``cost`` (None: never)."""
        return next((t for t, c in self.points if c <= cost), None)


def messi_curve(A: torch.Tensor, k: int, j: int, **settings) -> Curve:
    """Fit with ``settings`` and record every refit's cost (each is the cost of a real
    factorisation: the refitted bases with the labels they were fitted to)."""
    import messi.clustering as clustering

    refit, curve = clustering._refit, None

    def timed(*args, **kwargs):
        out = refit(*args, **kwargs)
        curve.record(out[1])
        return out

    clustering._refit = timed
    try:
        curve = Curve()
        ProjectiveClustering(k, j, **settings).fit(A)
    finally:
        clustering._refit = refit
    return curve


def reference_curve(A: torch.Tensor, k: int, j: int, inits: int = 10, steps: int = 10) -> Curve:
    """The reference's own defaults: ``inits`` random splits x ``steps`` steps, best kept."""
    An, curve = A.numpy().astype(np.float32), Curve()
    rng = np.random.default_rng(0)
    for _ in range(inits):
        reference_em(An, k, j, steps, rng, on_step=curve.record)
    return curve


CURVE_SETTINGS = {
    "messi defaults": {},  # ProjectiveClustering's: 4 k-means-seeded restarts, <= 50 steps, tol 1e-4
    "messi fast": {"n_init": 1, "tol": 1e-3},
}


def curves() -> None:
    """Time-to-cost curves on MiniLM and (if fetched) MPNet at k=3, 40%: table, JSON and PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = list(matrices(False))[:1]
    try:
        tables += list(matrices(False, "mpnet"))
    except Exception as e:  # MPNet is optional: `messi fetch-model mpnet`
        print(f"MPNet left out ({e})")
    rows, fig = [], plt.figure(figsize=(6 * len(tables), 4.2))
    for p, (name, A) in enumerate(tables):
        n, d = A.shape
        k, j = 3, rank_for_ratio(n, d, 3, 0.4)
        scale = float(A.double().square().sum())
        found = {"reference (10 x 10)": reference_curve(A, k, j)}
        found.update({label: messi_curve(A, k, j, **s) for label, s in CURVE_SETTINGS.items()})
        ref = found["reference (10 x 10)"]
        ref_cost, ref_seconds = ref.points[-1][1], ref.points[-1][0]
        ax = fig.add_subplot(1, len(tables), p + 1)
        for label, curve in found.items():
            t, c = zip(*curve.points)
            ax.step(t, [x / scale for x in c], where="post", label=label)
            reach = curve.time_to(ref_cost)
            rows.append({"matrix": name, "k": k, "j": j, "method": label, "seconds": curve.points[-1][0],
                         "final_cost": curve.points[-1][1], "relative_cost": curve.points[-1][1] / scale,
                         "seconds_to_reference_cost": reach,
                         "speedup_to_reference_cost": None if reach is None else ref_seconds / reach,
                         "points": curve.points})
        ax.set_xscale("log")
        ax.set_xlabel("seconds (2 cores)")
        ax.set_ylabel("best relative cost so far")
        ax.set_title(f"{name}, k=3, j={j}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(Path(__file__).parent / "results" / "em_time_to_cost.png", dpi=120)
    table = Table(title="time to cost: reference (its defaults) vs messi, k=3, 40%")
    for col in ("matrix", "method", "seconds", "relative cost", "s to reference's cost", "speed-up"):
        table.add_column(col)
    for r in rows:
        reach = r["seconds_to_reference_cost"]
        table.add_row(r["matrix"], r["method"], f"{r['seconds']:.2f}", f"{r['relative_cost']:.5f}",
                      "never" if reach is None else f"{reach:.2f}",
                      "-" if reach is None else f"{r['speedup_to_reference_cost']:.1f}x")
    Console().print(table)
    write_json(Path(__file__).parent / "results" / "em_time_to_cost.json", rows)


def main() -> None:
    if sys.argv[1:2] == ["curves"]:
        return curves()
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
            # the same work as the reference: one random split, every step on every row
            pc = ProjectiveClustering(k, j, n_init=1, max_iter=args.steps, tol=-1.0, init="random", seed=0,
                                      init_size=None)
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
