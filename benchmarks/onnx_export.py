"""onnxruntime: file size and latency of the original, SVD and MESSI all-MiniLM-L6-v2 exports.

    python benchmarks/onnx_export.py        # prints the table; writes results/onnx_export.json

Models: the original (exported with the same exporter), the embedding -80% (SVD, MESSI k=5), the
whole model -50% (embedding + every encoder Linear, SVD and MESSI with the global allocation),
and the embedding -80% with 4-bit coordinates; all calibrated as `messi compress` does by default.
Latency: median of interleaved runs (every model in turn, so load changes hit all alike) at
batch x tokens 1 x 128 and 32 x 128, onnxruntime CPU, 2 intra-op threads. STS-B dev Spearman of
each export is computed by scripts/onnx_sts.py (onnxruntime, numpy and tokenizers only) and set
beside `messi eval-sts` of its folder.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: `messi compress` flags (None: the original)
    "original": None,
    "SVD emb -80%": ["--method", "svd", "--ratio", "0.8", "--calibration", "glue:sst2", "--calibration", "glue:cola",
                     "--calibration", "glue:mrpc", "--calibration", "glue:rte"],
    "MESSI emb -80%": ["--method", "messi", "--ratio", "0.8", "--calibration", "glue:sst2", "--calibration",
                       "glue:cola", "--calibration", "glue:mrpc", "--calibration", "glue:rte"],
    "MESSI emb -80%, 4-bit": ["--method", "messi", "--ratio", "0.8", "--bits", "4", "--calibration", "glue:sst2",
                              "--calibration", "glue:cola", "--calibration", "glue:mrpc", "--calibration", "glue:rte"],
    "SVD all -50%": ["--method", "svd", "--target", "all", "--ratio", "0.5"],
    "MESSI all -50%": ["--method", "messi", "--target", "all", "--ratio", "0.5"],
}


def messi_cli(*args) -> str:
    run = subprocess.run([sys.executable, "-m", "messi.cli", *map(str, args)], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr[-3000:])
    return run.stdout


def export_original(out: Path) -> None:
    """The uncompressed built-in model through the same exporter (for the size and speed baseline)."""
    import messi
    from messi.export import _export_graph, _sample_texts

    out.mkdir(parents=True, exist_ok=True)
    model, tok = messi.load_pretrained(), messi.load_tokenizer()
    _export_graph(model, tok, out / "model.onnx", _sample_texts())


def latencies(files: dict[str, Path], shapes, repeats: int = 15) -> dict:
    import onnxruntime as ort

    sessions = {}
    for name, file in files.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
        sessions[name] = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out = {}
    for batch, length in shapes:
        ids = rng.integers(1000, 29000, size=(batch, length), dtype=np.int64)
        feeds = {}
        for name, s in sessions.items():
            wanted = {i.name for i in s.get_inputs()}
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            feeds[name] = {k: v for k, v in feed.items() if k in wanted}
        times = {name: [] for name in sessions}
        for _ in range(3):  # warm-up
            for name, s in sessions.items():
                s.run(None, feeds[name])
        for _ in range(repeats):
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feeds[name])
                times[name].append(time.perf_counter() - start)
        out[f"{batch}x{length}"] = {name: statistics.median(t) for name, t in times.items()}
    return out


def main() -> None:
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="messi_onnx_bench."))
    files, records = {}, {}
    for name, flags in MODELS.items():
        console.print(f"[bold]{name}[/bold]")
        if flags is None:
            export_original(work / "original")
            files[name] = work / "original" / "model.onnx"
            records[name] = {"onnx_bytes": files[name].stat().st_size}
            continue
        folder = work / name.replace(" ", "_").replace(",", "").replace("%", "")
        messi_cli("compress", *flags, folder)
        messi_cli("export", folder, "--output", f"{folder}_onnx")
        info = json.loads(Path(f"{folder}_onnx/messi_onnx.json").read_text())
        files[name] = Path(f"{folder}_onnx/model.onnx")
        onnx_sts = json.loads(subprocess.run([sys.executable, str(ROOT / "scripts" / "onnx_sts.py"), f"{folder}_onnx"],
                                             capture_output=True, text=True, check=True).stdout)
        torch_sts = json.loads(messi_cli("eval-sts", folder, "--json"))
        records[name] = {"onnx_bytes": info["onnx_bytes"], "max_abs_diff": info["check"]["max_abs_diff"],
                         "onnx_spearman": onnx_sts["spearman"], "torch_spearman": torch_sts["spearman"],
                         "safetensors_bytes": (folder / "model.safetensors").stat().st_size}
    times = latencies(files, [(1, 128), (32, 128)])
    base = records["original"]["onnx_bytes"]
    table = Table(title="all-MiniLM-L6-v2 in onnxruntime (CPU, 2 threads; ratios against the original, same run)")
    for col in ("model", "model.onnx MB", "x original", "1x128 ms", "x", "32x128 ms", "x", "STS-B onnx / torch",
                "max |diff|"):
        table.add_column(col)
    for name, r in records.items():
        t1, t32 = times["1x128"][name], times["32x128"][name]
        r.update({"latency_1x128_s": t1, "latency_32x128_s": t32})
        sts = f"{r['onnx_spearman']:.2f} / {r['torch_spearman']:.2f}" if "onnx_spearman" in r else "—"
        table.add_row(name, f"{r['onnx_bytes'] / 1e6:.1f}", f"{r['onnx_bytes'] / base:.2f}",
                      f"{1e3 * t1:.1f}", f"{t1 / times['1x128']['original']:.2f}",
                      f"{1e3 * t32:.0f}", f"{t32 / times['32x128']['original']:.2f}", sts,
                      f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "—")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx_export.json").write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
