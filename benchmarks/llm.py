"""Gemma 3 270M: held-out perplexity against embedding compression (the tied 262,144 x 640 table).

    messi fetch-model gemma3-270m
    python benchmarks/llm.py [--ratios 0.5,0.8] [--max-tokens 8192]   # resumable: results/llm.json + PNG
    python benchmarks/llm.py --heal-steps 50,100,200                  # + healing of MESSI calibrated
    python benchmarks/llm.py --bytes                                  # + the table in bytes vs RTN
    python benchmarks/llm.py --best                                   # + the default fit (k=20, exact rows)
    python benchmarks/llm.py --all-ratios 0.2,0.3,0.5 [--all-method svd] # + `--target all` (share of all parameters)

Cells: SVD and MESSI k=5 at each ratio, plain and calibrated (rows weighted by (count + alpha)
** 1 over the SST-2, CoLA, MRPC and RTE *train* texts; the fit under the head-side metric E[h h^T]
of the final hidden states on 1,000 of those texts, as `messi compress --calibration` does for a
tied causal LM). Scored by `messi.perplexity` on the first ``--max-tokens`` held-out tokens (RTE
dev + QNLI dev: no calibration text), next-token accuracy beside it; fit seconds and the
process's peak RSS after each fit.

With ``--heal-steps``, the calibrated MESSI model at each ratio is healed (``messi.heal``: KL to the
original's next-token distributions on the same calibration texts, windows of 128, the bases
trained, AdamW at ``--heal-lr``) and scored after each number of steps, with the CPU seconds of
healing so far (checkpoints in runs/heal-checkpoints: a killed run resumes).

With ``--bytes``, the table in bytes (a share of its fp32 bytes; the GGUF it came from stored it as
Q8_0, 26.6%): round-to-nearest quantization of the whole tied table (int8 per row, 4/3/2 bits in
groups of 32, fp16 scales) against calibrated MESSI k=5 at ``--sizes`` (``messi compress --size``:
rank and 8 or 4 bits chosen by the fit's error).

With ``--all-ratios``, ``--target all`` at those shares of every targeted parameter (the tied table
and the 126 Linear layers of the 18 blocks, the global allocation, MESSI with k <= 3:
CompressionConfig's default), calibrated as `messi compress
--target all` is (row weights, the Linear layers' input moments and sensitivities on 256 calibration
texts, the table under the head metric): the share of ALL parameters removed is recorded beside it.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import messi
from cells import Cells
from messi import CalibrationData, CompressionConfig
from messi.calibration import DEFAULT_SOURCES, calibrate, calibration_batches, output_metric, prepare, read_all
from messi.config import CalibrationSettings
from messi.families import CausalLM, family_of
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
    p.add_argument("--heal-steps", default="", help="e.g. 50,100,200: heal MESSI calibrated, score at each")
    p.add_argument("--heal-lr", type=float, default=3e-5)
    p.add_argument("--heal-train", default="bases")
    p.add_argument("--bytes", action="store_true", help="also RTN of the table vs MESSI --size, in bytes")
    p.add_argument("--best", action="store_true", help="also the default fit of a causal LM's table (k=20, exact rows)")
    p.add_argument("--sizes", default="0.15,0.1,0.06")
    p.add_argument("--all-ratios", default="", help="e.g. 0.2,0.3,0.5: --target all at these ratios")
    p.add_argument("--all-method", default="messi")
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

        def best(ratio=ratio):  # what `messi compress --model gemma3-270m --ratio R` does
            model = messi.load_pretrained(MODEL)
            family = family_of(model)
            exact = family.default_exact_rows(model.get_input_embeddings().num_embeddings, ratio)
            cal = calibration(model)
            start = time.perf_counter()
            messi.compress(model, CompressionConfig(method="messi", ratio=ratio, k=family.embedding_k,
                                                    exact_rows=exact), cal, verbose=True)
            info = model.messi_config
            return {"method": f"messi k={family.embedding_k} + {exact:,} exact rows (the default)", "ratio": ratio,
                    "calibrated": True, "rank": info["rank"], "fit_seconds": time.perf_counter() - start,
                    "peak_rss_gb": peak_rss_gb(), "table_bytes": info["embedding_bytes_before"],
                    "bytes_after": info["embedding_bytes_after"], "rel_error": info["rel_error"],
                    "output_rel_error": info.get("output_rel_error"), **score(model)}

        if args.best:
            # the defaults in the key: a cached cell of older defaults is not shown as today's
            run(f"best|{ratio}|k{CausalLM.embedding_k} exact {CausalLM.embedding_exact_share:g}|cal a{args.alpha:g}|"
                f"{args.max_tokens}", best)
        if args.heal_steps:
            heal_cells(run, ratio, args, calibration, score)
    for ratio in (map(float, args.all_ratios.split(",")) if args.all_ratios else ()):
        run(f"all|{args.all_method}|{ratio}|{args.max_tokens}", lambda ratio=ratio: whole_model(ratio, args, tok, score))
    if args.bytes:
        bytes_cells(run, args, calibration, score)
        show_bytes(console, results, args.max_tokens)
    show(console, results, args.max_tokens)


def whole_model(ratio: float, args, tok, score) -> dict:
    """`messi compress --model gemma3-270m --target all --ratio R --method M --k 3`, scored (k is
    CompressionConfig's default, 3; the CLI's is 5)."""
    model = messi.load_pretrained(MODEL)
    start = time.perf_counter()
    cal = prepare(model, tok, CalibrationSettings(list(DEFAULT_SOURCES), alpha=args.alpha), target="all", progress=True)
    messi.compress(model, CompressionConfig(method=args.all_method, ratio=ratio, target="all"), cal, verbose=True)
    info = model.messi_config
    return {"method": args.all_method, "target": "all", "ratio": ratio, "calibrated": True,
            "table_rank": info.get("embedding", {}).get("rank"), "seconds": time.perf_counter() - start,
            "model_compression": info["model_compression"], "params_after": info["model_params_after"],
            "peak_rss_gb": peak_rss_gb(), **score(model)}


RTN = [(8, None), (4, 32), (3, 32), (2, 32)]


def bytes_cells(run, args, calibration, score) -> None:
    """Perplexity against the tied table's stored bytes: RTN of the table, MESSI at --sizes."""
    from messi.quantize import quantized_bytes, round_trip

    for bits, group in RTN:
        def rtn(bits=bits, group=group):
            model = messi.load_pretrained(MODEL)
            emb = model.get_input_embeddings()  # the head is tied to it: both see the quantized table
            n, d = emb.weight.shape
            with torch.no_grad():
                emb.weight.copy_(round_trip(emb.weight, bits, group))
            return {"kind": "RTN", "bits": bits, "group_size": group, "bytes": quantized_bytes(n, d, bits, group),
                    "table_bytes": n * d * 4, **score(model)}

        run(f"bytes|rtn|{bits}|{group}|{args.max_tokens}", rtn)
    for size in map(float, args.sizes.split(",")):
        def fit(size=size):
            model = messi.load_pretrained(MODEL)
            messi.compress(model, CompressionConfig(method="messi", k=5, size=size), calibration(model), verbose=True)
            info, layer = model.messi_config, model.get_input_embeddings()
            return {"kind": "MESSI k=5 calibrated", "size": size, "rank": info["rank"], "bits": info.get("bits"),
                    "group_size": info.get("group_size"), "bytes": layer.storage_bytes(),
                    "table_bytes": info["embedding_bytes_before"], **score(model)}

        run(f"bytes|messi|{size}|{args.max_tokens}", fit)


def show_bytes(console, results: dict, max_tokens: int) -> None:
    base = results[f"uncompressed|{max_tokens}"]
    table = Table(title="Gemma 3 270M's tied table in bytes (share of fp32), held-out perplexity")
    for col in ("table stored as", "bytes", "perplexity", "change"):
        table.add_column(col)
    rows = [r for k, r in results.items() if k.startswith("bytes|") and k.endswith(f"|{max_tokens}")]
    for r in sorted(rows, key=lambda r: -r["bytes"]):
        what = (f"RTN int{r['bits']}, " + ("one scale per row" if r["group_size"] is None else f"groups of {r['group_size']}")
                if r["kind"] == "RTN" else f"MESSI k=5 calibrated --size {r['size']} (rank {r['rank']}, {r['bits']}-bit)")
        table.add_row(what, f"{100 * r['bytes'] / r['table_bytes']:.1f}%", f"{r['perplexity']:.2f}",
                      f"{100 * (r['perplexity'] / base['perplexity'] - 1):+.1f}%")
    console.print(table)


def heal_cells(run, ratio: float, args, calibration, score) -> None:
    """Heal the calibrated MESSI model at ``ratio``; one cell per number of steps."""
    from messi.heal import HealConfig, heal

    state = {}
    checkpoint = Path("runs/heal-checkpoints") / f"messi-{ratio}-{args.heal_train}-{args.heal_lr:g}"
    for steps in map(int, args.heal_steps.split(",")):
        key = f"messi|{ratio}|cal a{args.alpha:g}|heal {args.heal_train} lr {args.heal_lr:g}|{steps}|{args.max_tokens}"

        def cell(steps=steps):
            if "student" not in state:
                state["teacher"] = messi.load_pretrained(MODEL)
                student = messi.load_pretrained(MODEL)
                messi.compress(student, CompressionConfig(method="messi", ratio=ratio, k=5), calibration(student))
                state["student"], state["cpu"] = student, 0.0
            cpu = time.process_time()
            record = heal(state["student"], state["teacher"], messi.load_tokenizer(MODEL),
                          read_all(list(DEFAULT_SOURCES)),
                          HealConfig(steps=steps, learning_rate=args.heal_lr, train=args.heal_train,
                                     checkpoint_every=10), checkpoint=checkpoint)
            state["cpu"] += time.process_time() - cpu
            losses = record["losses"]
            return {"method": "messi", "ratio": ratio, "calibrated": True, "heal_steps": steps,
                    "heal_train": args.heal_train, "heal_lr": args.heal_lr, "heal_seconds": record["seconds"],
                    "heal_cpu_seconds_this_process": state["cpu"], "heal_loss_last20": sum(losses[-20:]) / len(losses[-20:]),
                    "peak_rss_gb": peak_rss_gb(), **score(state["student"])}

        run(key, cell)


def show_whole_model(console, rows: list, base: dict) -> None:
    table = Table(title="Gemma 3 270M, --target all (the table and every block's Linear layer, one budget)")
    for col in ("targeted -", "all parameters -", "method", "table rank", "perplexity", "change", "next-token acc.",
                "s (calibration + fit)", "peak RSS GB"):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: (r["ratio"], r["method"])):
        table.add_row(f"{r['ratio']:.0%}", f"{r['model_compression']:.1%}", r["method"], str(r["table_rank"]),
                      f"{r['perplexity']:.2f}", f"{100 * (r['perplexity'] / base['perplexity'] - 1):+.1f}%",
                      f"{100 * r['next_token_accuracy']:.2f}%", f"{r['seconds']:.0f}", f"{r['peak_rss_gb']:.1f}")
    console.print(table)


def show(console, results: dict, max_tokens: int) -> None:
    base = results[f"uncompressed|{max_tokens}"]
    table = Table(title=f"Gemma 3 270M, held-out perplexity (first {base['tokens']:,} tokens; uncompressed "
                        f"{base['perplexity']:.2f})")
    for col in ("embedding", "method", "rank", "perplexity", "change", "next-token acc.", "fit s", "peak RSS GB"):
        table.add_column(col)
    rows = [r for k, r in results.items() if not k.startswith(("uncompressed", "bytes|", "all|"))
            and k.endswith(f"|{max_tokens}") and "heal_steps" not in r]
    whole = [r for k, r in results.items() if k.startswith("all|") and k.endswith(f"|{max_tokens}")]
    healed = [r for k, r in results.items() if k.endswith(f"|{max_tokens}") and "heal_steps" in r]
    for r in sorted(rows, key=lambda r: (r["ratio"], r["method"], r["calibrated"])):
        table.add_row(f"-{r['ratio']:.0%}", f"{r['method']}{' calibrated' if r['calibrated'] else ''}", str(r["rank"]),
                      f"{r['perplexity']:.2f}", f"{100 * (r['perplexity'] / base['perplexity'] - 1):+.1f}%",
                      f"{100 * r['next_token_accuracy']:.2f}%", f"{r['fit_seconds']:.0f}", f"{r['peak_rss_gb']:.1f}")
    console.print(table)
    if whole:
        show_whole_model(console, whole, base)
    if healed:
        heal_table = Table(title="MESSI k=5 calibrated, then healed (bases trained; KL to the original on calibration text)")
        for col in ("embedding", "steps", "lr", "perplexity", "change", "next-token acc.", "heal s (wall)",
                    "loss, last 20 steps"):
            heal_table.add_column(col)
        for r in sorted(healed, key=lambda r: (r["ratio"], r["heal_lr"], r["heal_steps"])):
            heal_table.add_row(f"-{r['ratio']:.0%}", str(r["heal_steps"]), f"{r['heal_lr']:g}", f"{r['perplexity']:.2f}",
                               f"{100 * (r['perplexity'] / base['perplexity'] - 1):+.1f}%",
                               f"{100 * r['next_token_accuracy']:.2f}%", f"{r['heal_seconds']:.0f}",
                               f"{r['heal_loss_last20']:.4f}")
        console.print(heal_table)
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
    for steps in sorted({r["heal_steps"] for r in healed}):
        pts = sorted((r["ratio"], r["perplexity"]) for r in healed if r["heal_steps"] == steps)
        ax.plot(*zip(*pts), "s--", label=f"MESSI calibrated + {steps} healing steps")
    ax.axhline(base["perplexity"], color="grey", ls=":", label="uncompressed")
    ax.set_yscale("log")
    ax.set_xlabel("embedding compression (parameters)")
    ax.set_ylabel("held-out perplexity (log)")
    ax.legend(fontsize=8)
    save_png(fig, RESULTS / "llm.png")


if __name__ == "__main__":
    main()
