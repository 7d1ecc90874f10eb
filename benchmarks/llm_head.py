"""Gemma 3 270M's tied LM head (262,144 x 640) through factored tables at the same size.

The head computes logits = h @ E.T for every position. SVD: (h @ V.T) @ U.T. MESSI with k
subspaces: the positions projected on the k bases in one product, then either one product per
cluster written into its tokens' columns (many positions), or, up to
``ProjectiveEmbedding.every_cluster_width`` positions x clusters, every token against every
subspace in one product, each keeping its own (decoding one position at a time). Timed side by
side (repetitions interleaved, medians, warm-up excluded) on final hidden states of real text:
the head alone at 1 (a decoding step), 8 and 512 positions, and the whole forward of 512 tokens.
The fits stop after 2 EM steps: the factor shapes, not their quality, decide the time.

    messi fetch-model gemma3-270m
    python benchmarks/llm_head.py [--ratio 0.5 --repeats 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import messi
from inference import interleaved_medians
from messi.io import write_json
from messi.perplexity import held_out_texts, windows

RESULTS = Path(__file__).parent / "results"
MODEL = "gemma3-270m"


def variants(ratio: float) -> dict:
    """name -> model: the original and its table factored at ``ratio`` by SVD and MESSI k=5, 20."""
    models = {"dense": messi.load_pretrained(MODEL).eval()}
    for name, method, k in (("svd", "svd", 1), ("messi k=5", "messi", 5), ("messi k=20", "messi", 20)):
        model = messi.load_pretrained(MODEL).eval()
        messi.compress(model, method=method, ratio=ratio, k=k, n_init=1, max_iter=2)
        models[f"{name} -{ratio:.0%}"] = model
    return models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(2)
    models = variants(args.ratio)
    ids = windows(messi.load_tokenizer(MODEL), held_out_texts(), 512)[0][None]  # timing only: any real text
    rows = {name: {} for name in models}
    with torch.inference_mode():
        hidden = models["dense"].model(input_ids=ids).last_hidden_state[0]
        for positions in (1, 8, 512):
            h = hidden[:positions]
            times = interleaved_medians({m: (lambda m=m: models[m].lm_head(h)) for m in models}, args.repeats)
            for m, t in times.items():
                rows[m][f"head_ms_{positions}"] = 1000 * t
        whole = interleaved_medians({m: (lambda m=m: models[m](input_ids=ids).logits) for m in models},
                                    max(3, args.repeats // 2))
        for m, t in whole.items():
            rows[m]["forward_ms_512"] = 1000 * t
    table = Table(title=f"Gemma 3 270M tied head, table -{args.ratio:.0%}, {torch.get_num_threads()} CPU threads "
                        "(ms, medians; ratio to SVD)")
    cols = ("head_ms_1", "head_ms_8", "head_ms_512", "forward_ms_512")
    table.add_column("head")
    for c in cols:
        table.add_column(c.replace("_ms_", " ms, ").replace("head", "head").replace("forward", "forward") + " pos.")
    svd = rows[f"svd -{args.ratio:.0%}"]
    for m, r in rows.items():
        table.add_row(m, *(f"{r[c]:.1f} ({r[c] / svd[c]:.2f})" for c in cols))
    Console().print(table)
    write_json(RESULTS / "llm_head.json", {"ratio": args.ratio, "threads": torch.get_num_threads(), "heads": rows})


if __name__ == "__main__":
    main()
