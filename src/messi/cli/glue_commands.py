"""``messi glue``, ``sweep`` and ``report``: wiring only."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .. import checks, distributed
from ..datasets import find_data_dir
from ..errors import MessiError
from ..factorize import check_ratio
from ..glue.report import write_report
from ..glue.run import run_glue
from ..glue.sweep import Sweep
from ..glue.train import PRESETS
from .common import DATA, DEFAULT_K, MODEL_HELP, app, console, friendly


def _glue_found(data_dir) -> bool:
    try:
        find_data_dir(data_dir)
        return True
    except MessiError:
        return False


def _train_config(preset, epochs, learning_rate, batch_size, max_seq_length, max_train_samples,
                  max_eval_samples, seed):
    """A preset's TrainConfig with the flags that were given on top."""
    if preset not in PRESETS:
        raise MessiError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    given = dict(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                 max_seq_length=max_seq_length, max_train_samples=max_train_samples,
                 max_eval_samples=max_eval_samples, seed=seed)
    cfg = dataclasses.replace(PRESETS[preset], **{k: v for k, v in given.items() if v is not None})
    return cfg.validate()


EPOCHS = typer.Option(None, "--epochs", help="Training epochs (hf preset: 3).")
LR = typer.Option(None, "--learning-rate", help="AdamW learning rate, linear decay (hf preset: 2e-5).")
BATCH = typer.Option(None, "--batch-size", help="Per-device train batch size (hf preset: 32).")
MAXLEN = typer.Option(None, "--max-seq-length", help="Truncate inputs to this many tokens (hf preset: 128).")
MAXTRAIN = typer.Option(None, "--max-train-samples", help="Seeded random subset of the train split.")
MAXEVAL = typer.Option(None, "--max-eval-samples", help="Subset of dev (default: all of it).")
PRESET = typer.Option("hf", "--preset", help="hf (run_glue defaults) or cpu (2000 train rows, lr 5e-5).")
STRICT = typer.Option(False, "--strict", help="A row that does not parse is fatal instead of skipped with a warning.")


@app.command()
@friendly
def glue(
    task: str = typer.Option(..., "--task", help="cola, sst2, mrpc, stsb, rte, wnli, qnli, mnli or qqp."),
    output_dir: Path = typer.Option(..., "--output-dir", help="Where metrics.json goes."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    method: str = typer.Option("none", "--method", help="none, svd or messi: compress before fine-tuning."),
    ratio: float = typer.Option(0.4, "--ratio", help="Embedding compression for svd/messi."),
    k: int = typer.Option(DEFAULT_K, "--k", help="Subspaces for messi."),
    epochs: Optional[float] = EPOCHS, learning_rate: Optional[float] = LR, batch_size: Optional[int] = BATCH,
    max_seq_length: Optional[int] = MAXLEN, max_train_samples: Optional[int] = MAXTRAIN,
    max_eval_samples: Optional[int] = MAXEVAL,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of data order, head init and clustering (default 42)."),
    preset: str = PRESET, data_dir: Optional[Path] = DATA, strict: bool = STRICT,
    save_model: bool = typer.Option(False, "--save-model", help="Also save the fine-tuned model to OUTPUT_DIR/model "
                                    "(a messi folder when compressed; `messi glue --model OUTPUT_DIR/model` reuses it)."),
    holdout: Optional[float] = typer.Option(None, "--holdout", help="Hold this fraction of train out of training "
                                            "and score on it instead of dev (the same rows whatever --seed): "
                                            "choose settings there, report on dev."),
):
    """Fine-tune a (compressed) model on a GLUE task and evaluate it on dev.

    Runs unchanged under `torchrun` / `accelerate launch`: one process compresses, all train
    together, one prints and writes."""
    cfg = _train_config(preset, epochs, learning_rate, batch_size, max_seq_length, max_train_samples,
                        max_eval_samples, seed)
    record = run_glue(task, output_dir, model, method, ratio, k, cfg, data_dir, strict, save_model, holdout)
    if not distributed.is_main():
        return
    table = Table(title=f"{record['task']} / {record['method']}, scored on {record['evaluated_on']}")
    for key in ("ratio", "embedding_params", "total_params", "train_samples", "seconds"):
        table.add_row(key, f"{record[key]:.4g}" if isinstance(record[key], float) else f"{record[key]:,}")
    for key, value in record["metrics"].items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(f"wrote {output_dir / 'metrics.json'}" + (f" and {output_dir / 'model'}" if save_model else ""))


def _split(text: str, cast=str) -> list:
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MessiError(f"cannot read the list {text!r}; give comma-separated values like 0.4,0.6") from None


def _run_sweep(output_dir, tasks, methods, ratios, k, seeds, model, cfg, recovery_epochs, protocol,
               data_dir, strict):
    Sweep(output_dir, tasks, methods, ratios, k, seeds, model, cfg, recovery_epochs, protocol,
          data_dir, strict).run()
    if not distributed.is_main():
        return
    md_path, png_path, md = write_report(output_dir)
    console.print(md)
    console.print(f"wrote {md_path} and {png_path}")


@app.command()
@friendly
def sweep(
    output_dir: Path = typer.Option(..., "--output-dir", help="Sweep folder (resumes if it exists)."),
    tasks: str = typer.Option("cola,sst2,mrpc,stsb,rte,wnli", "--tasks", help="Comma-separated GLUE tasks."),
    methods: str = typer.Option("none,svd,messi", "--methods",
                                help="Comma-separated: none, control, svd, messi, svd+cal, messi+cal, svd+cal+out, "
                                     "messi+cal+out (+cal: rows weighted by the task's own train text; +out: also "
                                     "fitted under the model's output metric on its train inputs; control: the base "
                                     "trained the recovery epochs uncompressed, the yardstick of recovered cells)."),
    ratios: str = typer.Option("0.4,0.6", "--ratios", help="Comma-separated embedding compression ratios."),
    k: int = typer.Option(DEFAULT_K, "--k", help="Subspaces for messi."),
    seeds: str = typer.Option("42", "--seeds", help="Comma-separated seeds."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    protocol: str = typer.Option("paper", "--protocol",
                                 help="paper: fine-tune, compress, evaluate, recover; compress-first: compress, then fine-tune."),
    recovery_epochs: float = typer.Option(2.0, "--recovery-epochs", help="Fine-tuning epochs after compression (paper: 2; 0: evaluate the compressed model only)."),
    epochs: Optional[float] = EPOCHS, learning_rate: Optional[float] = LR, batch_size: Optional[int] = BATCH,
    max_seq_length: Optional[int] = MAXLEN, max_train_samples: Optional[int] = MAXTRAIN,
    max_eval_samples: Optional[int] = MAXEVAL, preset: str = PRESET,
    data_dir: Optional[Path] = DATA, strict: bool = STRICT,
):
    """Run the paper's protocol over tasks x methods x ratios x seeds; resumable; writes a report."""
    ratio_list = [check_ratio(r) for r in _split(ratios, float)]
    seed_list = [checks.seed("--seeds", s) for s in _split(seeds, int)]
    task_list, method_list = _split(tasks), _split(methods)
    for name, values in (("--tasks", task_list), ("--methods", method_list), ("--seeds", seed_list),
                         ("--ratios", ratio_list)):
        if not values:
            raise MessiError(f"{name} is empty; give at least one value (comma-separated)")
    checks.real("--recovery-epochs", recovery_epochs, 0, 1e6)
    checks.integer("--k", k, 1)
    cfg = _train_config(preset, epochs, learning_rate, batch_size, max_seq_length, max_train_samples,
                        max_eval_samples, None)
    _run_sweep(output_dir, task_list, method_list, ratio_list, k, seed_list, model, cfg,
               recovery_epochs, protocol, data_dir, strict)


@app.command()
@friendly
def report(sweep_dir: Path = typer.Argument(..., help="A folder written by `messi sweep`.")):
    """Write SWEEP/report.md and SWEEP/report.png from a sweep's metrics.json files."""
    md_path, png_path, md = write_report(sweep_dir)
    console.print(md)
    console.print(f"wrote {md_path} and {png_path}")
