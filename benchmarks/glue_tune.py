"""Choose each task's fine-tuning settings on rows held out of its train split, never on dev.

Every (task, learning rate, epochs, sequence length, seed) cell fine-tunes the uncompressed
model on the train split minus a fixed held-out fraction (`messi glue --holdout`) and scores
on that fraction. The setting with the best mean score over seeds is chosen per task; the
bases one reports are then trained on the whole train split with it and scored on dev.

    python benchmarks/glue_tune.py --tasks cola,rte --learning-rates 5e-5,1e-4,2e-4 --epochs 3,6

Resumable: a cell with a metrics.json is not run again; the table covers every cell in the
folder, earlier grids' too. Writes OUT/tune.md (table + choice).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from messi import MessiError
from messi.datasets import get_task
from messi.glue.metrics import glue_score
from messi.glue.run import run_glue
from messi.glue.train import TrainConfig, check_holdout, evaluated_on
from messi.io import write_text

console = Console()


def floats(text: str) -> list[float]:
    """"5e-5,1e-4" -> [5e-05, 0.0001]."""
    return [float(x) for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    """"42,43" -> [42, 43]."""
    return [int(x) for x in text.split(",") if x.strip()]


def setting_name(lr: float, epochs: float, length: int) -> str:
    """The folder of one setting, e.g. lr-5e-05_ep-6_len-128."""
    return f"lr-{lr:g}_ep-{epochs:g}_len-{length}"


def grid(args) -> list[tuple[str, TrainConfig]]:
    """(task, settings) of every cell, each setting checked as `messi glue` checks it."""
    return [(task, TrainConfig(epochs=epochs, learning_rate=lr, batch_size=args.batch_size,
                               max_seq_length=length, seed=seed).validate())
            for task, lr, epochs, length, seed in itertools.product(
                args.tasks, args.learning_rates, args.epochs, args.max_seq_lengths, args.seeds)]


def run_grid(args, cells: list[tuple[str, TrainConfig]]) -> None:
    """Run every cell that has no metrics.json yet."""
    for i, (task, cfg) in enumerate(cells, 1):
        out = (args.output_dir / task / setting_name(cfg.learning_rate, cfg.epochs, cfg.max_seq_length)
               / f"seed-{cfg.seed}")
        if not (out / "metrics.json").is_file():
            console.print(f"[{i}/{len(cells)}] {task} lr {cfg.learning_rate:g} epochs {cfg.epochs:g} "
                          f"length {cfg.max_seq_length} seed {cfg.seed}")
            run_glue(task, out, args.model, "none", cfg=cfg, holdout=args.holdout)


def collect(output_dir: Path, holdout: float) -> dict:
    """scores[task][(lr, epochs, length)] -> (holdout GLUE scores over seeds, seconds over seeds),
    from every cell in ``output_dir`` scored on the same held-out rows (earlier grids included)."""
    scores: dict = {}
    for path in sorted(output_dir.glob("*/*/seed-*/metrics.json")):
        record = json.loads(path.read_text())
        if record.get("evaluated_on") != evaluated_on(holdout):
            continue
        cfg = record["config"]
        cell = scores.setdefault(record["task"], {}).setdefault(
            (cfg["learning_rate"], cfg["epochs"], cfg["max_seq_length"]), ([], []))
        cell[0].append(glue_score(record["metrics"]))
        cell[1].append(record["seconds"])
    return scores


def report(scores: dict, args) -> str:
    """A markdown table per task, best setting first marked; prints a rich table too."""
    lines = [f"# Fine-tuning settings chosen on {args.holdout:g} of each train split (held out; dev untouched)",
             "", f"Every cell in {args.output_dir}; batch {args.batch_size}; model {args.model or 'minilm'}; "
             "score: the task's GLUE metrics' mean in %, on the held-out rows.",
             "", "| task | learning rate | epochs | length | seeds | holdout score (mean ± std) | minutes | chosen |",
             "|---|---|---|---|---|---|---|---|"]
    table = Table(title="GLUE settings on held-out train rows")
    for col in ("task", "lr", "epochs", "length", "seeds", "holdout score", "minutes", "chosen"):
        table.add_column(col)
    for task, cells in scores.items():
        best = max(cells, key=lambda s: statistics.mean(cells[s][0]))
        for (lr, epochs, length), (values, seconds) in sorted(cells.items()):
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            row = [task, f"{lr:g}", f"{epochs:g}", str(length), str(len(values)), f"{statistics.mean(values):.2f} ± {spread:.2f}",
                   f"{statistics.mean(seconds) / 60:.1f}", "**yes**" if (lr, epochs, length) == best else ""]
            lines.append("| " + " | ".join(row) + " |")
            table.add_row(*[c.replace("**", "") for c in row])
    console.print(table)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=lambda t: t.split(","), default=["cola", "rte"])
    parser.add_argument("--learning-rates", type=floats, default=[5e-5, 1e-4, 2e-4])
    parser.add_argument("--epochs", type=floats, default=[3.0, 6.0])
    parser.add_argument("--max-seq-lengths", type=ints, default=[128])
    parser.add_argument("--seeds", type=ints, default=[42])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--holdout", type=float, default=0.15)
    parser.add_argument("--model", default=None)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/glue_tune"))
    args = parser.parse_args()
    try:
        # every task and setting is checked before the first hour of training
        for task in args.tasks:
            get_task(task)
        check_holdout(args.holdout)
        run_grid(args, grid(args))
    except MessiError as e:
        Console(stderr=True, soft_wrap=True).print(f"error: {e}", style="red", highlight=False)
        raise SystemExit(2) from None
    text = report(collect(args.output_dir, args.holdout), args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_text(args.output_dir / "tune.md", text)
    console.print(f"wrote {args.output_dir / 'tune.md'}")


if __name__ == "__main__":
    main()
