"""What every ``messi`` command shares: the app, the console, one-line errors, the info table."""

from __future__ import annotations

import errno
import functools
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import MessiError
from ..folder import embedding_info
from ..models import DEFAULT_MODEL

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


#: Errors of the file system that a user fixes (space, quota, size limit, permissions, names),
#: shown as one line; any other OSError is a bug and keeps its traceback.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.ENAMETOOLONG}


def friendly(command):
    """Turn MessiError into one line and exit 2, a full disk or a file-size limit met while
    writing into one line and exit 2 (the atomic writes left earlier outputs as they were), and
    Ctrl-C into exit 130, never a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MessiError as e:
            fail(str(e))
        except OSError as e:
            if e.errno not in _WRITE_ERRORS:
                raise
            where = f" {e.filename}" if e.filename else ""
            fail(f"{e.strerror}:{where or ' (a file of this run)'}; nothing half-written was kept and earlier "
                 "outputs are intact. Free space, raise the limit, fix the permissions or choose another folder, "
                 "then run again")
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
        ("model bytes before / after", f"{_fmt(info.get('model_bytes_before'), ',')} / "
                                       f"{_fmt(info.get('model_bytes_after'), ',')}"),
    ]
    if emb:
        rows += [
            ("embedding method / k / rank j", f"{emb.get('method')} / {emb.get('k')} / {emb.get('rank')}"),
            ("embedding params before", _fmt(emb.get("embedding_params_before"), ",")),
            ("embedding params after", _fmt(emb.get("embedding_params_after"), ",")),
            ("embedding bytes before / after", f"{_fmt(emb.get('embedding_bytes_before'), ',')} / "
                                               f"{_fmt(emb.get('embedding_bytes_after'), ',')}"),
            ("embedding storage", "float" if emb.get("bits") is None else
             f"{emb['bits']}-bit coordinates (groups of {emb.get('group_size') or 'a row'}), fp16 bases"),
            ("cluster-id bytes (buffer)", _fmt(emb.get("label_bytes", 0), ",")),
            ("rows kept exact (most used tokens)", _fmt(emb.get("exact_rows", 0), ",")),
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



DATA: Optional[Path] = typer.Option(None, "--data-dir", help="GLUE folder; default $MESSI_GLUE_DIR, then ../shared/data/glue.")
