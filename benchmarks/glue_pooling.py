"""Does the classifier head's pooling explain the weak CoLA / RTE bases?

all-MiniLM-L6-v2 was trained to be read by mean pooling over the attention mask, and its
checkpoint has no pooler; `messi glue` puts Hugging Face's usual head on it: a new dense+tanh
pooler over the [CLS] vector, then a linear classifier. This benchmark trains both heads with
the same settings, rows and seed and scores them on rows held out of the train split (the rows
`messi glue --holdout` uses), never on dev:

- ``cls``: the head `messi glue` trains (the same run as `messi glue --holdout`);
- ``mean``: the pooler replaced by the mean of the last hidden states over the attention mask
  (what sentence-transformers reads), then the same linear classifier.

    python benchmarks/glue_pooling.py --task cola --learning-rate 5e-5 --epochs 6
    python benchmarks/glue_pooling.py --task rte --learning-rate 5e-5 --epochs 3 --max-seq-length 256

Resumable: a finished arm's OUT/<task>/<pooling>.json is not run again. Writes OUT/pooling.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from messi import MessiError
from messi.datasets import get_task, read_split
from messi.glue.metrics import glue_score
from messi.glue.train import (
    TrainConfig,
    check_holdout,
    evaluate,
    evaluated_on,
    fine_tune,
    load_classifier,
    tokenizer_for,
    train_and_eval_rows,
)
from messi.io import write_json, write_text

POOLINGS = ("cls", "mean")


class MaskedMeanPooler(nn.Module):
    """Stands in for a BERT pooler: (batch, seq, hidden) -> (batch, hidden), the mean of the
    hidden states over the attention mask that ``watch`` captures from the encoder's call
    (a BERT pooler is handed the hidden states only)."""

    def __init__(self):
        super().__init__()
        self._mask: torch.Tensor | None = None

    def watch(self, encoder: nn.Module) -> None:
        """Capture ``attention_mask`` (batch, seq) of every call of ``encoder``."""
        def capture(_module, args, kwargs):
            self._mask = kwargs.get("attention_mask")
        encoder.register_forward_pre_hook(capture, with_kwargs=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = hidden.new_ones(hidden.shape[:2]) if self._mask is None else self._mask
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def with_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """``model`` (a BERT-style sequence classifier) reading its input the ``pooling`` way."""
    if pooling == "mean":
        if getattr(model.base_model, "pooler", None) is None:
            raise MessiError(f"{type(model).__name__} has no pooler to replace; mean pooling is "
                             "implemented for BERT-style classifiers")
        pooler = MaskedMeanPooler()
        pooler.watch(model.base_model)
        model.base_model.pooler = pooler
    return model


def run_arm(args, pooling: str, path: Path) -> dict:
    """Train and score one head; its record is written to ``path``."""
    task = get_task(args.task)
    cfg = TrainConfig(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                      max_seq_length=args.max_seq_length, seed=args.seed).validate()
    tokenizer = tokenizer_for(args.model)
    train, held = train_and_eval_rows(read_split(task, "train"), read_split(task, "dev"), cfg, args.holdout)
    start = time.perf_counter()
    model = with_pooling(load_classifier(args.model, task, cfg.seed), pooling)
    fine_tune(model, tokenizer, task, train, cfg)
    metrics = evaluate(model, tokenizer, task, held, cfg)
    record = {"task": task.name, "pooling": pooling, "metrics": metrics, "score": glue_score(metrics),
              "evaluated_on": evaluated_on(args.holdout), "train_samples": len(train),
              "eval_samples": len(held), "config": dataclasses.asdict(cfg), "seconds": time.perf_counter() - start}
    write_json(path, record)
    return record


def table(records: list[dict]) -> str:
    """Markdown table of the finished arms."""
    lines = ["| task | head pooling | held-out score | minutes |", "|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['pooling']} | {r['score']:.2f} | {r['seconds'] / 60:.1f} |" for r in records]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--model", default=None, help="built-in name or folder (default: minilm)")
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--holdout", type=float, default=0.15)
    p.add_argument("--poolings", default=",".join(POOLINGS), help="heads to train, of: cls, mean")
    p.add_argument("--output-dir", type=Path, default=Path("runs/glue_pooling"))
    args = p.parse_args(argv)
    try:
        check_holdout(args.holdout)
        get_task(args.task)
        poolings = [x.strip() for x in args.poolings.split(",") if x.strip()]
        bad = [x for x in poolings if x not in POOLINGS]
        if bad or not poolings:
            raise MessiError(f"--poolings takes {', '.join(POOLINGS)}, got {args.poolings!r}")
        for pooling in poolings:
            path = args.output_dir / args.task / f"{pooling}.json"
            if not path.is_file():
                run_arm(args, pooling, path)
    except MessiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    records = [json.loads(p.read_text()) for p in sorted(args.output_dir.glob("*/*.json"))]
    write_text(args.output_dir / "pooling.md", "# Classifier head pooling, scored on held-out train rows\n\n"
               + table(records))
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
