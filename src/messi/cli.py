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
from .models import DEFAULT_MODEL

app = typer.Typer(help="Compress the embedding layer of Hugging Face models with projective clustering (MESSI).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()
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
            fail("interrupted; nothing was written", 130)
    return wrapper


def info_table(info: dict, title: str) -> Table:
    """A two-column table of the numbers people compare."""
    table = Table(title=title, show_header=False)
    rows = [
        ("method", info["method"]), ("k (subspaces)", info["k"]), ("rank j", info["rank"]),
        ("target ratio", f"{info['ratio']:.3f}"), ("compression", f"{info['compression']:.4f}"),
        ("embedding params before", f"{info['embedding_params_before']:,}"),
        ("embedding params after", f"{info['embedding_params_after']:,}"),
        ("cluster-id bytes (buffer)", f"{info.get('label_bytes', 0):,}"),
        ("rel_error |A-A'|^2/|A|^2", f"{info['rel_error']:.5f}"),
        ("fit seconds", f"{info.get('fit_seconds', float('nan')):.1f}"),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    return table


@app.command()
@friendly
def compress(
    out_dir: Path = typer.Argument(..., help="Folder to write (refused if it exists, unless --overwrite)."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    method: str = typer.Option("messi", "--method", help="svd (one subspace) or messi (k subspaces)."),
    ratio: float = typer.Option(0.4, "--ratio", help="Target embedding compression, 1 - new/old parameters, in (0, 1)."),
    k: int = typer.Option(3, "--k", help="Number of subspaces (messi)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Subspace dimension j; default: the largest reaching --ratio."),
    seed: int = typer.Option(0, "--seed", help="Seed of the clustering."),
    n_init: int = typer.Option(4, "--n-init", help="Clustering restarts; the lowest cost wins."),
    max_iter: int = typer.Option(50, "--max-iter", help="Most EM steps per restart."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR if it exists."),
):
    """Compress a model's input embedding and write an HF folder plus messi.json."""
    from .compress import compress as compress_model, load_pretrained, load_tokenizer, save
    from .factorize import METHODS, check_ratio

    if out_dir.exists() and not overwrite:
        raise MessiError(f"{out_dir} already exists; choose another folder or pass --overwrite")
    if method not in METHODS:
        raise MessiError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    check_ratio(ratio)
    if k < 1:
        raise MessiError(f"--k must be >= 1, got {k}")
    if rank is not None and rank < 1:
        raise MessiError(f"--rank must be >= 1, got {rank}")
    net = load_pretrained(model)
    tokenizer = load_tokenizer(model)
    compress_model(net, method=method, ratio=ratio, k=k, rank=rank, seed=seed, n_init=n_init,
                 max_iter=max_iter, verbose=True)
    save(net, out_dir, tokenizer=tokenizer, extra={"source_model": str(model or DEFAULT_MODEL)})
    console.print(info_table(net.messi_config, f"{out_dir}"))


@app.command()
@friendly
def info(
    directory: Path = typer.Argument(..., help="A folder written by `messi compress`."),
    as_json: bool = typer.Option(False, "--json", help="Print messi.json as JSON."),
):
    """Show how a compressed folder was made: method, k, rank, compression, rel_error."""
    from .compress import read_info

    data = read_info(directory)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        console.print(info_table(data, str(directory)))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
