"""Quality against bytes: plain quantization of the embedding table against calibrated SVD / MESSI
with float, int8 and 4-bit factors, on zero-shot STS-B dev (all-MiniLM-L6-v2).

    python benchmarks/bytes.py            # resumable; prints the table, writes results/bytes.json + .png

Bytes are those the embedding stores, as a fraction of its fp32 table (30522 x 384 x 4 bytes):
- torchao 0.18.0's `IntxWeightOnlyConfig` on the embedding (int8 per row, int4 in groups), bytes
  as its tensor holds them, when torchao is installed (`pip install 'messi[bench]'`);
- RTN: the full table quantized round-to-nearest, symmetric, fp16 scales (one per row, or per
  group of G numbers), dequantized for the forward pass (what int8 / GGUF / torchao weight-only
  schemes store);
- SVD / MESSI k=5, calibrated as `messi compress --calibration` does by default (rows weighted by
  (count + 10) ** 1 over the SST-2, CoLA, MRPC and RTE train texts, output-aware metric from 4,000
  of them; no STS-B text), at -82% parameters with coordinates stored in float16, int8 per row or
  4 bits in groups of at most 32 (bases fp16: `messi compress --bits`), and at 1.5-5% of the
  table's bytes with `messi compress --size` choosing the rank and 8 or 4 bits.
Every score is Spearman x 100 on the 1,500 STS-B dev pairs; nothing here was chosen on them.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cells import Cells
from messi import CalibrationData, CompressionConfig, compress, load_pretrained, load_tokenizer, resolve_model
from messi.calibration import DEFAULT_SOURCES, calibrate, calibration_batches, output_metric, read_all
from messi.evaluate import read_pooling, sts_pairs, sts_score
from messi.io import save_png
from messi.quantize import quantized_bytes, round_trip

RESULTS = Path(__file__).parent / "results"
RTN = [(8, None), (4, 128), (4, 32), (3, 32), (2, 32), (2, 16)]
RATIO = 0.82  # about "-80%": the parameter ratio the README's STS table reports
SIZES = (0.05, 0.04, 0.03, 0.025, 0.02, 0.015)
K = 5


def rtn_cell(model, tok, pooling, pairs, bits, group) -> dict:
    m = copy.deepcopy(model)
    emb = m.get_input_embeddings()
    n, d = emb.weight.shape
    with torch.no_grad():
        emb.weight.copy_(round_trip(emb.weight, bits, group))
    score = sts_score(m, tok, pooling, pairs)["spearman"]
    return {"kind": "RTN", "bits": bits, "group_size": group, "bytes": quantized_bytes(n, d, bits, group),
            "table_bytes": n * d * 4, "spearman": score}


def torchao_cell(model, tok, pooling, pairs, bits, group) -> dict:
    """torchao's weight-only quantization of the embedding (``IntxWeightOnlyConfig``), bytes as
    its tensor holds them (on CPU its int4 data is kept unpacked, one byte a value)."""
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    m = copy.deepcopy(model)
    emb = m.get_input_embeddings()
    n, d = emb.weight.shape
    config = IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"),
                                  granularity=PerAxis(0) if group is None else PerGroup(group))
    quantize_(m, config, filter_fn=lambda module, fqn: module is emb)
    w = emb.weight
    stored = sum(getattr(w, name).numel() * getattr(w, name).element_size() for name in w.tensor_data_names)
    score = sts_score(m, tok, pooling, pairs)["spearman"]
    return {"kind": "torchao", "bits": bits, "group_size": group, "bytes": stored, "table_bytes": n * d * 4,
            "spearman": score}


def factor_cell(model, tok, pooling, pairs, data, method, storage, ratio=None, size=None) -> dict:
    m = copy.deepcopy(model)
    bits = storage if isinstance(storage, int) else None
    cfg = CompressionConfig(method=method, k=K, ratio=ratio or 0.5, size=size, bits=bits)
    start = time.perf_counter()
    compress(m, cfg, data)
    seconds = time.perf_counter() - start
    layer, info = m.get_input_embeddings(), m.messi_config
    if storage == "fp16":  # coordinates and bases rounded to float16, counted as stored so
        layer.to(torch.float16)
        stored = layer.storage_bytes()
        layer.to(torch.float32)
    else:
        stored = layer.storage_bytes()
    score = sts_score(m, tok, pooling, pairs)["spearman"]
    return {"kind": f"{method.upper() if method == 'svd' else 'MESSI k=5'}+cal", "storage": str(storage),
            "ratio": ratio, "size": size, "rank": info["rank"], "bits": info.get("bits"),
            "group_size": info.get("group_size"), "bytes": stored, "table_bytes": info["embedding_bytes_before"],
            "output_rel_error": info.get("output_rel_error"), "fit_seconds": seconds, "spearman": score}


def main() -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None, help="built-in name or folder (default the built-in all-MiniLM-L6-v2)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="--size points, comma-separated")
    p.add_argument("--quick", action="store_true", help="only RTN int4/int2 and the --size cells (paper-scale model)")
    args = p.parse_args()
    console = Console()
    out = RESULTS / ("bytes.json" if args.model is None else f"bytes_{Path(args.model).name}.json")
    cells = Cells(out, console)
    results = cells.results
    model, tok, folder = load_pretrained(args.model), load_tokenizer(args.model), resolve_model(args.model)
    pooling, pairs = read_pooling(folder), sts_pairs("dev")

    run = cells.run

    base = run("uncompressed", lambda: {"kind": "fp32", "bytes": 1, "table_bytes": 1,
                                        "spearman": sts_score(model, tok, pooling, pairs)["spearman"]})
    for bits, group in (((4, 128), (2, 32)) if args.quick else RTN):
        run(f"rtn|{bits}|{group}", lambda b=bits, g=group: rtn_cell(model, tok, pooling, pairs, b, g))
    try:  # torchao 0.18.0 (pip install 'messi[bench]'), if it is installed
        if args.quick:
            raise ImportError("left out with --quick")
        import torchao  # noqa: F401
        for bits, group in ((8, None), (4, 32), (4, 128)):
            run(f"torchao|{bits}|{group}", lambda b=bits, g=group: torchao_cell(model, tok, pooling, pairs, b, g))
    except ImportError:
        console.print("torchao is not installed: its rows are left out (pip install 'messi[bench]')", markup=False)
    texts = read_all(list(DEFAULT_SOURCES))
    cal = calibrate(tok, list(DEFAULT_SOURCES), model.get_input_embeddings().num_embeddings, texts=texts)
    metric, cal.output_metric = output_metric(model, calibration_batches(tok, texts, max_texts=4000), pooling,
                                              progress=True)
    data = CalibrationData(row_weights=cal.weights, embedding_metric=metric, record=cal.record())
    for method in ("svd", "messi"):
        for storage in (() if args.quick else ("fp16", 8, 4)):
            run(f"{method}|{storage}|{RATIO}", lambda m=method, s=storage: factor_cell(
                model, tok, pooling, pairs, data, m, s, ratio=RATIO))
        for size in map(float, args.sizes.split(",")):
            run(f"{method}|size|{size}", lambda m=method, s=size: factor_cell(model, tok, pooling, pairs, data, m,
                                                                             "auto", size=s))
    print_table(console, results, base["spearman"])
    plot(results, base["spearman"], out.with_suffix(".png"))


def rows(results: dict) -> list[dict]:
    return sorted((r for k, r in results.items() if k != "uncompressed"), key=lambda r: r["bytes"] / r["table_bytes"])


def label(r: dict) -> str:
    if r["kind"] in ("RTN", "torchao"):
        return f"{r['kind']} int{r['bits']}, " + ("one scale per row" if r["group_size"] is None else f"groups of {r['group_size']}")
    storage = {"fp16": "fp16 factors", "8": "int8 coords", "4": "4-bit coords (g32)"}.get(r["storage"], "")
    if r.get("size"):
        return f"{r['kind']} --size {r['size']} ({r['bits']}-bit coords, rank {r['rank']})"
    return f"{r['kind']} -{r['ratio']:.0%} params, {storage}, rank {r['rank']}"


def print_table(console, results: dict, base: float) -> None:
    table = Table(title=f"embedding: zero-shot STS-B dev vs bytes (uncompressed {base:.2f})")
    for col in ("table stored as", "bytes (% of fp32 table)", "STS-B", "change"):
        table.add_column(col)
    for r in rows(results):
        table.add_row(label(r), f"{100 * r['bytes'] / r['table_bytes']:.2f}%", f"{r['spearman']:.2f}",
                      f"{r['spearman'] - base:+.2f}")
    console.print(table)


def plot(results: dict, base: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    series = {}
    for r in rows(results):
        name = "RTN (whole table)" if r["kind"] == "RTN" else "torchao weight-only" if r["kind"] == "torchao" else (
            f"{r['kind']} --size" if r.get("size") else f"{r['kind']}, {r['storage']}")
        series.setdefault(name, []).append((100 * r["bytes"] / r["table_bytes"], r["spearman"]))
    for name, points in series.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, "o-" if len(points) > 1 else "D", label=name)
    ax.axhline(base, color="grey", ls=":", label=f"fp32 table ({base:.2f})")
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes, % of the fp32 table (log)")
    ax.set_ylabel("zero-shot STS-B dev Spearman x 100")
    ax.legend(fontsize=7)
    save_png(fig, path)


if __name__ == "__main__":
    main()
