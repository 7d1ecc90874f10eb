"""Gemma 3 270M: held-out perplexity against embedding compression (the tied 262,144 x 640 table).

    messi fetch-model gemma3-270m
    python benchmarks/llm.py [--ratios 0.5,0.8] [--max-tokens 8192]   # resumable: results/llm.json + PNG

Cells: SVD and MESSI k=5 at each ratio, plain and calibrated (rows weighted by (count + alpha)
** 1 over the SST-2, CoLA, MRPC and RTE *train* texts; the fit under the head-side metric E[h h^T]
of the final hidden states on 1,000 of those texts, as `messi compress --calibration` does for a
tied causal LM). Scored by `messi.perplexity` on the first ``--max-tokens`` held-out tokens (RTE
dev + QNLI dev: no calibration text), next-token accuracy beside it; fit seconds and the
process's peak RSS after each fit.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import messi
from cells import Cells
from messi import CalibrationData, CompressionConfig
from messi.calibration import DEFAULT_SOURCES, calibrate, calibration_batches, output_metric, read_all
from messi.io import save_png
from messi.perplexity import held_out_texts, perplexity

RESULTS = Path(__file__).parent / "results"
MODEL = "gemma3-270m"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ratios", default="0.5,0.8")
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--methods", default="svd,messi")
    args = p.parse_args()
    console, out = Console(), RESULTS / "llm.json"
    cells = Cells(out, console)
    results = cells.results
    tok, texts = messi.load_tokenizer(MODEL), held_out_texts()

    def score(model) -> dict:
        return perplexity(model, tok, texts, max_tokens=args.max_tokens, progress=True)

    run = cells.run

    run(f"uncompressed|{args.max_tokens}", lambda: score(messi.load_pretrained(MODEL)))
    data = None

    def calibration(model):
        nonlocal data
        if data is None:
            cal_texts = read_all(list(DEFAULT_SOURCES))
            cal = calibrate(tok, list(DEFAULT_SOURCES), model.get_input_embeddings().num_embeddings,
                            texts=cal_texts, alpha=args.alpha)
            metric, cal.output_metric = output_metric(model, calibration_batches(tok, cal_texts, max_texts=1000),
                                                      progress=True)
            data = CalibrationData(row_weights=cal.weights, embedding_metric=metric, record=cal.record())
        return data

    for ratio in map(float, args.ratios.split(",")):
        for method in args.methods.split(","):
            for calibrated in (False, True):
                key = f"{method}|{ratio}|{'cal a' + format(args.alpha, 'g') if calibrated else 'plain'}|{args.max_tokens}"

                def cell(method=method, ratio=ratio, calibrated=calibrated):
                    model = messi.load_pretrained(MODEL)
                    cal = calibration(model) if calibrated else None
                    start = time.perf_counter()
                    messi.compress(model, CompressionConfig(method=method, ratio=ratio, k=5), cal, verbose=True)
                    seconds = time.perf_counter() - start
                    info = model.messi_config
                    return {"method": method, "ratio": ratio, "calibrated": calibrated, "rank": info["rank"],
                            "fit_seconds": seconds, "peak_rss_gb": peak_rss_gb(),
                            "table_bytes": info["embedding_bytes_before"], "bytes_after": info["embedding_bytes_after"],
                            "rel_error": info["rel_error"], "output_rel_error": info.get("output_rel_error"),
                            **score(model)}

                run(key, cell)
    show(console, results, args.max_tokens)


def show(console, results: dict, max_tokens: int) -> None:
    base = results[f"uncompressed|{max_tokens}"]
    table = Table(title=f"Gemma 3 270M, held-out perplexity (first {base['tokens']:,} tokens; uncompressed "
                        f"{base['perplexity']:.2f})")
    for col in ("embedding", "method", "rank", "perplexity", "change", "next-token acc.", "fit s", "peak RSS GB"):
        table.add_column(col)
    rows = [r for k, r in results.items() if not k.startswith("uncompressed") and k.endswith(f"|{max_tokens}")]
    for r in sorted(rows, key=lambda r: (r["ratio"], r["method"], r["calibrated"])):
        table.add_row(f"-{r['ratio']:.0%}", f"{r['method']}{' calibrated' if r['calibrated'] else ''}", str(r["rank"]),
                      f"{r['perplexity']:.2f}", f"{100 * (r['perplexity'] / base['perplexity'] - 1):+.1f}%",
                      f"{100 * r['next_token_accuracy']:.2f}%", f"{r['fit_seconds']:.0f}", f"{r['peak_rss_gb']:.1f}")
    console.print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method in ("svd", "messi"):
        for cal in (False, True):
            pts = sorted((r["ratio"], r["perplexity"]) for r in rows if r["method"] == method and r["calibrated"] == cal)
            if pts:
                ax.plot(*zip(*pts), "o-", label=f"{method.upper() if method == 'svd' else 'MESSI k=5'}"
                                                f"{' calibrated' if cal else ''}")
    ax.axhline(base["perplexity"], color="grey", ls=":", label="uncompressed")
    ax.set_yscale("log")
    ax.set_xlabel("embedding compression (parameters)")
    ax.set_ylabel("held-out perplexity (log)")
    ax.legend(fontsize=8)
    save_png(fig, RESULTS / "llm.png")


if __name__ == "__main__":
    main()
