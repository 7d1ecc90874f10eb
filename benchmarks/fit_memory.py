"""Peak memory of fitting Gemma 3 270M's tied 262,144 x 640 table (671 MB in fp32).

Each fit runs in a fresh process (peak RSS is a high-water mark, so one process per cell):
the model is loaded and calibrated as `messi compress --calibration` does (rows weighted by
frequency over the SST-2, CoLA, MRPC and RTE train texts, the head-side metric E[h h^T] on
1,000 of them), the peak RSS is read, then the table is fitted and installed and the peak read
again. The difference is what the fit itself holds at its peak, reported as a multiple of the
table's bytes. The fits stop after ``--max-iter`` EM steps: memory does not grow with steps.

    messi fetch-model gemma3-270m
    python benchmarks/fit_memory.py [--methods svd,messi --k 5,20 --ratio 0.5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
MODEL = "gemma3-270m"


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(method: str, k: int, ratio: float, max_iter: int) -> None:
    """One fit in this process; prints its numbers as one JSON line."""
    import torch

    import messi
    from messi import CalibrationSettings, CompressionConfig
    from messi.calibration import DEFAULT_SOURCES, prepare

    torch.set_num_threads(2)
    model = messi.load_pretrained(MODEL)
    config = CompressionConfig(method=method, ratio=ratio, k=k, n_init=1, max_iter=max_iter)
    data = prepare(model, messi.load_tokenizer(MODEL), CalibrationSettings(tuple(DEFAULT_SOURCES)))
    table = model.get_input_embeddings().weight
    before = peak_rss_bytes()
    start = time.perf_counter()
    messi.compress(model, config, data)
    print(json.dumps({"method": method, "k": k if method == "messi" else 1, "ratio": ratio,
                      "table_bytes": table.numel() * table.element_size(), "peak_before_fit": before,
                      "peak_after_fit": peak_rss_bytes(), "fit_seconds": time.perf_counter() - start}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default="svd,messi")
    p.add_argument("--k", default="5,20", help="MESSI's k values")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--max-iter", type=int, default=3)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.ratio, args.max_iter)
    cells = [("svd", 1)] * ("svd" in args.methods) + [("messi", int(k)) for k in args.k.split(",") if "messi" in args.methods]
    rows = []
    for method, k in cells:
        out = subprocess.run([sys.executable, __file__, "--child", method, str(k), "--ratio", str(args.ratio),
                              "--max-iter", str(args.max_iter)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = Table(title=f"peak RSS of fitting {MODEL}'s table at -{args.ratio:.0%} (fresh process each)")
    for col in ("method", "k", "table MB", "peak before fit GB", "peak after fit GB", "fit adds GB", "x table"):
        table.add_column(col, justify="right")
    for r in rows:
        added = r["peak_after_fit"] - r["peak_before_fit"]
        table.add_row(r["method"], str(r["k"]), f"{r['table_bytes'] / 1e6:.0f}", f"{r['peak_before_fit'] / 1e9:.2f}",
                      f"{r['peak_after_fit'] / 1e9:.2f}", f"{added / 1e9:.2f}", f"{added / r['table_bytes']:.2f}")
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    from messi.io import write_json
    write_json(RESULTS / "fit_memory.json", {"ratio": args.ratio, "max_iter": args.max_iter, "rows": rows})


if __name__ == "__main__":
    main()
