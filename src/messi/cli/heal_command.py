"""``messi heal``: wiring only (``heal.py`` holds the distillation)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .. import distributed
from ..calibration import DEFAULT_SOURCES
from ..errors import MessiError
from ..folder import check_replaceable, read_info
from ..heal import HealConfig
from ..heal import heal as run_heal
from ..io import check_writable_target
from ..models import load_pretrained, load_tokenizer
from ..persist import load, save
from ..sources import read_all
from .common import DATA, app, console, friendly


@app.command()
@friendly
def heal(
    directory: Path = typer.Argument(..., help="A compressed causal LM (a folder `messi compress` wrote)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the healed model here (refused if it exists, "
                                          "unless --overwrite); default: replace DIRECTORY once healing is done."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if messi wrote it."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="The original model (folder or built-in name); "
                                          "default: the source_model messi.json records."),
    calibration: Optional[list[str]] = typer.Option(
        None, "--calibration", help="Text to distil on (repeatable): a .txt/.jsonl/.csv file or glue:TASK; default "
        "the GLUE train texts of SST-2, CoLA, MRPC and RTE (never eval-ppl's held-out text)."),
    text_column: str = typer.Option("text", "--text-column", help="Column/key of the text in .jsonl/.csv files."),
    steps: int = typer.Option(HealConfig.steps, "--steps", help="Optimizer steps (a rerun with more steps resumes)."),
    learning_rate: float = typer.Option(HealConfig.learning_rate, "--learning-rate", help="AdamW learning rate."),
    window: int = typer.Option(HealConfig.window, "--window", help="Tokens per window (BOS first)."),
    batch_size: int = typer.Option(HealConfig.batch_size, "--batch-size", help="Windows per step and process."),
    seed: int = typer.Option(HealConfig.seed, "--seed", help="Seed of the windows' order."),
    checkpoint_every: int = typer.Option(HealConfig.checkpoint_every, "--checkpoint-every",
                                         help="Steps between checkpoints (a killed run resumes from the last)."),
    train: str = typer.Option(HealConfig.train, "--train", help="bases: the subspaces' bases only (few numbers, "
                              "every row moves with its subspace); all: the per-row coordinates too."),
    data_dir: Optional[Path] = DATA,
):
    """Distil the original's next-token distributions into a compressed LM's factors (only they
    train): a short healing on calibration text, with progress and resume; runs unchanged under
    torchrun / accelerate launch (one writer)."""
    config = HealConfig(steps, learning_rate, window, batch_size, seed, checkpoint_every, train)
    distributed.init()
    target = output or directory
    info = read_info(directory)
    distributed.main_checks(lambda: check_writable_target(target, replace=overwrite or output is None,
                                                          is_ours=check_replaceable))
    source = teacher or info.get("source_model")
    if source is None:
        raise MessiError(f"{directory}/messi.json does not say which model it was compressed from; pass --teacher")
    sources = list(calibration or DEFAULT_SOURCES)
    texts = read_all(sources, data_dir, text_column)
    student, tokenizer = load(directory), load_tokenizer(directory)
    original = load_pretrained(source)
    checkpoint = target.parent / f".{target.name}.heal-checkpoint"
    record = run_heal(student, original, tokenizer, texts, config, checkpoint=checkpoint)
    if not distributed.is_main():
        return
    record = {**record, "teacher": str(source), "calibration": sources}
    save(student, target, tokenizer=tokenizer, extra={"healing": record}, overwrite=True)
    shutil.rmtree(checkpoint, ignore_errors=True)
    table = Table(title=f"healed: {target}", show_header=False)
    losses = record["losses"]
    for key, value in (("steps (resumed from)", f"{len(losses)} ({record['resumed_from_step']})"),
                       ("distillation loss, first -> last 10 steps",
                        f"{sum(losses[:10]) / len(losses[:10]):.4f} -> {sum(losses[-10:]) / len(losses[-10:]):.4f}"),
                       ("tokens seen", f"{record['tokens_seen']:,}"), ("seconds", f"{record['seconds']:.0f}"),
                       ("trained", f"{len(record['trained'])} factor tensors")):
        table.add_row(key, value)
    console.print(table)
    console.print(f"score it: messi eval-ppl {target}")
