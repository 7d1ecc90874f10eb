"""Peak memory of loading a model: the original against its compressed folders.

Each load runs in a fresh process (compressed folders twice: read into memory the model owns,
messi.load's default, and mapped with ``mmap=True``) (peak RSS from getrusage, after the load and again after one
batch through the model), side by side in one run:

    python benchmarks/load_memory.py                 # all-MiniLM-L6-v2
    python benchmarks/load_memory.py --model mpnet   # after `messi fetch-model mpnet`

Writes benchmarks/results/load_memory[_mpnet].json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"

CHILD = """
import json, resource, sys, time
import torch, messi
start = time.perf_counter()
if sys.argv[1] == "original":
    model = messi.load_pretrained(sys.argv[2])
else:  # "messi": read into memory the model owns (the default); "mmap": mapped copy-on-write
    model = messi.load(sys.argv[2], mmap=sys.argv[1] == "mmap")
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
params = sum(p.numel() for p in model.parameters())
# then one batch (8 x 128 token ids, seeded): what a model that is used holds
ids = torch.randint(1000, model.config.vocab_size, (8, 128), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    model(input_ids=ids, attention_mask=torch.ones_like(ids))
print(json.dumps({"peak_rss_mb": peak, "seconds": seconds, "params": params,
                  "peak_rss_after_batch_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BASELINE = """
import json, resource
import torch, transformers, messi
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(kind: str, ref: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, ref], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    # The parent stays light (no torch): a forked child starts with its parent's resident pages,
    # so a heavy parent would inflate every child's peak RSS.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--ratios", default="0.4,0.8")
    args = parser.parse_args()
    rows = []
    base = json.loads(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True,
                                     check=True).stdout.strip().splitlines()[-1])
    rows.append({"model": "python + torch + transformers imported", **base, "seconds": 0.0, "params": 0,
                 "peak_rss_after_batch_mb": base["peak_rss_mb"]})
    rows.append({"model": f"original ({args.model})", **measure("original", args.model)})
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in [float(r) for r in args.ratios.split(",")]:
            for method in ("svd", "messi"):
                folder = Path(tmp) / f"{method}{ratio}"
                subprocess.run([sys.executable, "-m", "messi.cli", "compress", "--model", args.model, "--method",
                                method, "--ratio", str(ratio), "--k", "5", "--n-init", "1", "--max-iter", "5",
                                str(folder)], capture_output=True, check=True)
                rows.append({"model": f"{method} {ratio:.0%}", **measure("messi", str(folder))})
                rows.append({"model": f"{method} {ratio:.0%}, mmap=True", **measure("mmap", str(folder))})
    table = Table(title=f"peak RSS of loading ({args.model})")
    for col in ("model", "params", "peak RSS MB (load)", "vs original", "peak RSS MB (+ one batch)",
                "vs original", "load s"):
        table.add_column(col)
    orig, orig_batch = rows[1]["peak_rss_mb"], rows[1]["peak_rss_after_batch_mb"]
    for r in rows:
        table.add_row(r["model"], f"{r['params']:,}", f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] / orig:.3f}",
                      f"{r['peak_rss_after_batch_mb']:.0f}", f"{r['peak_rss_after_batch_mb'] / orig_batch:.3f}",
                      f"{r['seconds']:.2f}")
    Console().print(table)
    suffix = "" if args.model == "minilm" else f"_{args.model}"
    (RESULTS / f"load_memory{suffix}.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
