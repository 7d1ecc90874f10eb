"""Reconstruction quality against compression: SVD and MESSI k=2..8 on a real embedding table,
plus the default `messi compress` point and the robust losses at 40%.

Prints a table, writes benchmarks/results/quality_curve.json and quality_curve.png.

    python benchmarks/quality_curve.py                  # all-MiniLM-L6-v2, 20%..80%
    python benchmarks/quality_curve.py --model mpnet    # after `messi fetch-model mpnet`
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from messi import ProjectiveClustering, rank_for_ratio
from messi.clustering import assign
from messi.io import save_png, write_json
from messi.models import resolve_model

RESULTS = Path(__file__).parent / "results"


def load_table(model: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(resolve_model(model) / "model.safetensors"), framework="pt") as f:
        name = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))
        return f.get_tensor(name)


def squared_rel_error(A, bases, labels) -> tuple[float, float]:
    """|A - A'|^2 / |A|^2 of projecting each row on its cluster's subspace, and the 99th
    percentile of the rows' relative squared error (the outlier end)."""
    sq = A.double().square().sum(1)
    kept = torch.zeros_like(sq)
    for i in range(bases.shape[0]):
        rows = labels == i
        kept[rows] = (A[rows].double() @ bases[i].double().T).square().sum(1)
    resid = (sq - kept).clamp(min=0)
    return float(resid.sum() / sq.sum()), float(torch.quantile((resid / sq.clamp(min=1e-12)).float(), 0.99))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--ks", default="2,3,4,5,6,8")
    p.add_argument("--ratios", default="0.2,0.3,0.4,0.5,0.6,0.7,0.8")
    p.add_argument("--n-init", type=int, default=2)
    args = p.parse_args()
    A = load_table(args.model)
    n, d = A.shape
    total = float(A.double().square().sum())
    s2 = torch.linalg.svdvals(A.double()).square()
    rows = []
    ratios = [float(r) for r in args.ratios.split(",")]
    for ratio in ratios:
        j = rank_for_ratio(n, d, 1, ratio)
        rows.append(dict(method="svd", k=1, ratio=ratio, rank=j, rel_error=float(s2[j:].sum()) / total))
        for k in map(int, args.ks.split(",")):
            j = rank_for_ratio(n, d, k, ratio)
            start = time.perf_counter()
            pc = ProjectiveClustering(k, j, n_init=args.n_init, max_iter=50, seed=0).fit(A)
            rows.append(dict(method="messi", k=k, ratio=ratio, rank=j, rel_error=pc.cost_ / total,
                             seconds=time.perf_counter() - start))
    # the default `messi compress` settings, and the robust losses, at 40% with k=3
    j = rank_for_ratio(n, d, 3, 0.4)
    for loss in ("l2", "l1", "huber"):
        start = time.perf_counter()
        pc = ProjectiveClustering(3, j, seed=0, loss=loss).fit(A)
        seconds = time.perf_counter() - start
        labels = assign(A, pc.bases_)[0] if loss != "l2" else pc.labels_
        rel, p99 = squared_rel_error(A, pc.bases_, labels)
        rows.append(dict(method=f"messi default ({loss})", k=3, ratio=0.4, rank=j, rel_error=rel,
                         row_p99=p99, seconds=seconds))
    svd40 = next(r for r in rows if r["method"] == "svd" and r["ratio"] == 0.4)
    top = torch.linalg.svd(A.double(), full_matrices=False)[2][: svd40["rank"]]
    svd40["row_p99"] = squared_rel_error(A, top[None], torch.zeros(n, dtype=torch.long))[1]

    table = Table(title=f"Relative squared error |A-A'|^2/|A|^2, {args.model} {n}x{d}")
    for col in ("method", "k", "ratio", "rank", "rel_error", "/ SVD", "row p99", "seconds"):
        table.add_column(col)
    svd_at = {r["ratio"]: r["rel_error"] for r in rows if r["method"] == "svd"}
    for r in rows:
        table.add_row(r["method"], str(r["k"]), f"{r['ratio']:.1f}", str(r["rank"]), f"{r['rel_error']:.4f}",
                      f"{r['rel_error'] / svd_at[r['ratio']]:.3f}", f"{r['row_p99']:.3f}" if "row_p99" in r else "",
                      f"{r['seconds']:.1f}" if "seconds" in r else "")
    Console().print(table)
    write_json(RESULTS / "quality_curve.json", {"model": args.model, "shape": [n, d], "rows": rows})
    plot(rows, ratios, RESULTS / "quality_curve.png", f"{args.model} {n}x{d}")


def plot(rows, ratios, path, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = {}
    for r in rows:
        if r["method"] in ("svd", "messi"):
            curves.setdefault("SVD" if r["method"] == "svd" else f"MESSI k={r['k']}", []).append((r["ratio"], r["rel_error"]))
    for label, pts in curves.items():
        ax.plot(*zip(*sorted(pts)), "-o" if label == "SVD" else "-", lw=2.5 if label == "SVD" else 1.2,
                color="black" if label == "SVD" else None, label=label, ms=4)
    default = next(r for r in rows if r["method"] == "messi default (l2)")
    ax.plot(default["ratio"], default["rel_error"], "r*", ms=12, label="messi compress default (k=3)")
    ax.set_xlabel("embedding compression (1 - new/old parameters)")
    ax.set_ylabel("relative squared error")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)


if __name__ == "__main__":
    main()
