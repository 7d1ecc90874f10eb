"""Tied output heads: time of the masked-LM logits with the dense table against the SVD and
MESSI tables it is tied to, at 40% and 80% embedding compression.

A masked-LM head multiplies every hidden state by the whole (n, d) embedding table: with
n = 30,522 that product dominates a small model's forward. Tied to a factored table it becomes
``(hidden @ basis.T) @ coords.T`` (SVD) or one such pair per subspace (MESSI), so its FLOPs fall
with the parameters. Hidden states are 32 x 128 tokens of all-MiniLM-L6-v2 (d = 384); the
repetitions interleave the heads so that they share the machine's state; medians are reported.

    python benchmarks/tied_head.py            # writes benchmarks/results/tied_head.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import transformers
from rich.console import Console
from rich.table import Table

import messi
from messi.io import write_json
from messi.models import resolve_model

RESULTS = Path(__file__).parent / "results"


def masked_lm() -> transformers.PreTrainedModel:
    """all-MiniLM-L6-v2 with a masked-LM head tied to its word embedding (the head's own small
    layers are new: their values do not change the time)."""
    path = resolve_model("minilm")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    model = transformers.BertForMaskedLM.from_pretrained(path, config=config, local_files_only=True,
                                                         trust_remote_code=False)
    return model.eval()


def head_flops(tokens: int, n: int, d: int, k: int, j: int | None) -> int:
    """Multiply-adds x 2 of the logits for ``tokens`` hidden states."""
    if j is None:
        return 2 * tokens * n * d
    return 2 * tokens * (k * j * d + j * n)


def time_heads(heads: dict, hidden: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per call of each head, the heads interleaved in every repetition."""
    times = {name: [] for name in heads}
    with torch.inference_mode():
        for head in heads.values():  # warm-up
            head(hidden)
        for _ in range(repeats):
            for name, head in heads.items():
                start = time.perf_counter()
                head(hidden)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    dense = masked_lm()
    n, d = dense.get_input_embeddings().weight.shape
    hidden = torch.randn(32 * 128, d)
    heads, shapes = {"dense": dense.get_output_embeddings()}, {"dense": (1, None)}
    for ratio in (0.4, 0.8):
        for method in ("svd", "messi"):
            model = messi.compress(masked_lm(), method=method, ratio=ratio, k=args.k, seed=0, n_init=1, max_iter=10)
            name = f"{method} {ratio:.0%}"
            heads[name] = model.get_output_embeddings()
            shapes[name] = (model.messi_config["k"], model.messi_config["rank"])
    seconds = time_heads(heads, hidden, args.repeats)
    rows = []
    for name, (k, j) in shapes.items():
        rows.append({"head": name, "k": k, "rank": j, "ms": 1000 * seconds[name],
                     "vs_dense": seconds[name] / seconds["dense"],
                     "gflops": head_flops(hidden.shape[0], n, d, k, j) / 1e9,
                     "flops_vs_dense": head_flops(hidden.shape[0], n, d, k, j) / head_flops(hidden.shape[0], n, d, 1, None)})
    table = Table(title=f"Masked-LM logits, {hidden.shape[0]} tokens x d={d} -> n={n:,} "
                        f"({torch.get_num_threads()} threads, median of {args.repeats})")
    for col in ("head", "k", "rank j", "ms", "vs dense", "GFLOP", "FLOPs vs dense"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["head"], str(r["k"]), "—" if r["rank"] is None else str(r["rank"]), f"{r['ms']:.1f}",
                      f"{r['vs_dense']:.2f}", f"{r['gflops']:.1f}", f"{r['flops_vs_dense']:.2f}")
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "tied_head.json", {"tokens": hidden.shape[0], "n": n, "d": d, "threads": torch.get_num_threads(),
                                            "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
