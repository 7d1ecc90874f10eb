"""Inference cost of compressed models: forward latency and memory of the original, SVD and
MESSI (k=3) models at 40%, at batch 1 x 128 and 32 x 128 tokens, as ratios to the original.

Latencies are medians over repetitions, the three models interleaved in every repetition so
that they see the same machine. Peak memory is the resident set of a fresh process that loads
one model from disk (the compressed ones saved and reloaded with messi.load) and runs one
32 x 128 forward. Runs on CUDA when present (--device cuda).

    python benchmarks/inference.py
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import messi
from messi.io import write_json

RESULTS = Path(__file__).parent / "results"
SHAPES = ((1, 128), (32, 128))


def build(method: str):
    model = messi.load_pretrained()
    if method != "original":
        messi.compress(model, method=method, ratio=0.4, k=3, seed=0, n_init=1, max_iter=10)
    return model.eval()


def real_batch(batch: int, length: int, tokenizer) -> torch.Tensor:
    """Token ids of real GLUE SST-2 sentences, packed to ``length`` (no padding)."""
    from messi.datasets import read_split

    ids = []
    for e in read_split("sst2", "dev"):
        ids += tokenizer(e.text_a, add_special_tokens=False)["input_ids"]
        if len(ids) >= batch * length:
            break
    return torch.tensor(ids[: batch * length]).reshape(batch, length)


def interleaved_medians(calls: dict, repeats: int, warmup: int = 2, sync=None) -> dict[str, float]:
    """Median seconds of every call (name: callable), the calls interleaved in each repetition so
    that they see the same machine; the first ``warmup`` repetitions are not counted. ``sync``
    (e.g. torch.cuda.synchronize) runs before and after each call."""
    times = {name: [] for name in calls}
    for rep in range(warmup + repeats):
        for name, call in calls.items():
            if sync:
                sync()
            start = time.perf_counter()
            call()
            if sync:
                sync()
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def worker(source: str, device: str) -> None:
    """Load one model (built-in, or a saved messi folder), run one 32 x 128 forward, print the
    peak memory as JSON."""
    model = messi.load_pretrained(None if source == "original" else source).eval().to(device)
    ids = real_batch(32, 128, messi.load_tokenizer()).to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        model(input_ids=ids)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_bytes": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.device)
    methods = ("original", "svd", "messi")
    models = {m: build(m).to(args.device) for m in methods}
    tok = messi.load_tokenizer()
    rows = {m: {"weight_bytes": weight_bytes(models[m])} for m in methods}
    sync = torch.cuda.synchronize if args.device == "cuda" else None
    for batch, length in SHAPES:
        ids = real_batch(batch, length, tok).to(args.device)
        with torch.inference_mode():
            medians = interleaved_medians({m: (lambda m=m: models[m](input_ids=ids)) for m in methods},
                                          args.repeats, warmup=3, sync=sync)
        for m in methods:
            rows[m][f"ms_{batch}x{length}"] = 1000 * medians[m]
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            source = m
            if m != "original":
                source = str(Path(tmp) / m)
                messi.save(models[m].cpu(), source)
            out = subprocess.run([sys.executable, __file__, "--worker", source, "--device", args.device],
                                 capture_output=True, text=True, check=True)
            rows[m]["peak_bytes"] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    base = rows["original"]
    table = Table(title=f"Inference on {args.device} ({torch.get_num_threads()} threads), all-MiniLM-L6-v2, -40% embedding")
    for col in ("model", "1x128 ms", "ratio", "32x128 ms", "ratio", "weights MB", "ratio", "peak MB", "ratio"):
        table.add_column(col)
    for m in methods:
        r = rows[m]
        table.add_row(m, f"{r['ms_1x128']:.1f}", f"{r['ms_1x128'] / base['ms_1x128']:.3f}",
                      f"{r['ms_32x128']:.0f}", f"{r['ms_32x128'] / base['ms_32x128']:.3f}",
                      f"{r['weight_bytes'] / 2**20:.1f}", f"{r['weight_bytes'] / base['weight_bytes']:.3f}",
                      f"{r['peak_bytes'] / 2**20:.0f}", f"{r['peak_bytes'] / base['peak_bytes']:.3f}")
    Console().print(table)
    write_json(RESULTS / "inference.json", {"device": args.device, "threads": torch.get_num_threads(), "models": rows})


if __name__ == "__main__":
    main()
