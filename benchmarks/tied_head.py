"""Masked-LM logits through a tied factored head against the dense head, at 40% and 80%.

A decoder tied to the input embedding computes logits = h @ E.T (n x d per position). With E
factored, SVD computes (h @ V.T) @ U.T and MESSI one (h @ B_i.T) @ U_i.T per cluster, so the
multiply-adds per position fall with the parameters: j*d + n*j (SVD), k*j*d + n*j (MESSI).
Timed side by side (repetitions interleaved, medians, warm-up excluded) on the hidden states
of real SST-2 dev text: the output projection alone, and the whole masked-LM forward.

The model is all-MiniLM-L6-v2's encoder and embedding under a BertForMaskedLM head whose
transform is freshly initialised (the package ships no MLM head): the timing does not depend
on its values. The fits use n_init=1, max_iter=10 (the factor shapes, not their quality,
decide the time).

    python benchmarks/tied_head.py [--batch 8 --length 128 --repeats 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers
from rich.console import Console
from rich.table import Table

import messi
from inference import interleaved_medians, real_batch
from messi.factorize import parameter_count
from messi.io import write_json
from messi.models import resolve_model

RESULTS = Path(__file__).parent / "results"
VARIANTS = (("dense", None, None), ("svd", "svd", 0.4), ("messi k=3", "messi", 0.4),
            ("svd", "svd", 0.8), ("messi k=3", "messi", 0.8))


def masked_lm(method: str | None, ratio: float | None) -> transformers.BertForMaskedLM:
    """The built-in model under a tied masked-LM head, its embedding compressed if asked."""
    transformers.logging.set_verbosity_error()  # the head's fresh weights are expected here
    model = transformers.BertForMaskedLM.from_pretrained(resolve_model("minilm")).eval()
    if method:
        messi.compress(model, method=method, ratio=ratio, k=3, seed=0, n_init=1, max_iter=10)
        assert model.messi_config["tied_output"], "the head must be tied to the factored table"
    return model


def head_macs(model) -> int:
    """Multiply-adds per position of the output projection: one per number of its factors."""
    emb = model.get_input_embeddings()
    n, d = emb.num_embeddings, emb.embedding_dim
    if isinstance(emb, torch.nn.Embedding):
        return n * d
    return parameter_count(n, d, getattr(emb, "n_clusters", 1), emb.rank)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    ids = real_batch(args.batch, args.length, messi.load_tokenizer())
    models = {f"{name} {'' if ratio is None else f'-{ratio:.0%}'}".strip(): masked_lm(method, ratio)
              for name, method, ratio in VARIANTS}
    with torch.inference_mode():
        hidden = models["dense"].cls.predictions.transform(models["dense"].bert(input_ids=ids).last_hidden_state)
        head = interleaved_medians({m: (lambda m=m: models[m].cls.predictions.decoder(hidden)) for m in models}, args.repeats)
        whole = interleaved_medians({m: (lambda m=m: models[m](input_ids=ids).logits) for m in models}, args.repeats)
    rows = {m: {"head_macs_per_position": head_macs(models[m]), "head_ms": 1000 * head[m], "forward_ms": 1000 * whole[m]}
            for m in models}
    base = rows["dense"]
    table = Table(title=f"Tied masked-LM head, {args.batch} x {args.length} positions, "
                        f"{torch.get_num_threads()} CPU threads, all-MiniLM-L6-v2 (30522 x 384)")
    for col in ("head", "MACs/position", "ratio", "head ms", "ratio", "MLM forward ms", "ratio"):
        table.add_column(col)
    for m, r in rows.items():
        table.add_row(m, f"{r['head_macs_per_position']:,}", f"{r['head_macs_per_position'] / base['head_macs_per_position']:.3f}",
                      f"{r['head_ms']:.1f}", f"{r['head_ms'] / base['head_ms']:.3f}",
                      f"{r['forward_ms']:.1f}", f"{r['forward_ms'] / base['forward_ms']:.3f}")
    Console().print(table)
    write_json(RESULTS / "tied_head.json", {"batch": args.batch, "length": args.length,
                                            "threads": torch.get_num_threads(), "heads": rows})


if __name__ == "__main__":
    main()
