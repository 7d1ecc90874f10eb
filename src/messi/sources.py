"""Calibration text from where users keep it: ``glue:TASK`` (a GLUE task's train texts), a
``.txt`` file (one text per line), a ``.jsonl`` file (text in ``text_column``) or a ``.csv`` /
``.tsv`` file with a header row (text in ``text_column``)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from .datasets import get_task, read_split
from .errors import MessiError


def _read_glue(task_name: str, data_dir) -> list[str]:
    task = get_task(task_name)
    texts = []
    for ex in read_split(task, "train", data_dir):
        texts.append(ex.text_a)
        if ex.text_b is not None:
            texts.append(ex.text_b)
    return texts


def _read_table(path: Path, column: str) -> list[str]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise MessiError(f"{path} has no column {column!r} (columns: {', '.join(reader.fieldnames or [])}); "
                             "pass --text-column with one of them")
        return [row[column] for row in reader if row.get(column)]


def _read_jsonl(path: Path, column: str) -> list[str]:
    texts = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MessiError(f"{path}:{line_no}: not valid JSON ({e.msg}); one JSON object per line") from e
            if not isinstance(obj, dict) or column not in obj:
                raise MessiError(f"{path}:{line_no}: no {column!r} field; pass --text-column with the text's key")
            if not isinstance(obj[column], str):
                raise MessiError(f"{path}:{line_no}: field {column!r} is not a string")
            texts.append(obj[column])
    return texts


def read_texts(source: str, data_dir=None, text_column: str = "text") -> list[str]:
    """The texts of one calibration source (see the module docstring); MessiError if it is
    missing, unreadable or empty."""
    if source.startswith("glue:"):
        texts = _read_glue(source[len("glue:"):], data_dir)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            raise MessiError(f"calibration source {path} is a folder; give a text/.jsonl/.csv file in it or glue:TASK")
        if path.exists() and not path.is_file():
            raise MessiError(f"calibration source {path} is not a regular file (a pipe or a device); "
                             "give a text/.jsonl/.csv file or glue:TASK")
        if not path.is_file():
            raise MessiError(f"calibration file {path} does not exist; give a text/.jsonl/.csv file or glue:TASK")
        suffix = path.suffix.lower()
        try:
            if suffix == ".jsonl":
                texts = _read_jsonl(path, text_column)
            elif suffix in (".csv", ".tsv"):
                texts = _read_table(path, text_column)
            else:
                texts = path.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as e:
            raise MessiError(f"{path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from e
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise MessiError(f"calibration source {source} has no text; give a file with one text per line or glue:TASK")
    longest = max(range(len(texts)), key=lambda i: len(texts[i]))
    if len(texts[longest]) > MAX_TEXT_CHARS:
        # the tokenizer's memory grows many times faster than the text's: refuse, do not truncate silently
        raise MessiError(f"calibration source {source}: text {longest + 1} has {len(texts[longest]):,} characters, "
                         f"over the {MAX_TEXT_CHARS:,} one text may have; split it into lines (one text per line)")
    return texts


#: The longest calibration text accepted: far beyond what a model reads (512 tokens is about
#: 3,000 characters), far below what makes the tokenizer run out of memory (100 MB took 14 GB).
MAX_TEXT_CHARS = 1_000_000


def read_all(sources: list[str], data_dir=None, text_column: str = "text") -> list[str]:
    """The texts of every source, in order (``read_texts`` of each)."""
    return [t for source in sources for t in read_texts(source, data_dir, text_column)]
