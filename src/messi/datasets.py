"""Readers for the GLUE task files (tab-separated, no quoting) and where to find them."""

from __future__ import annotations

import csv
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import MessiError

ENV_VAR = "MESSI_GLUE_DIR"


@dataclass(frozen=True)
class Task:
    """How one GLUE task's files are laid out and scored."""

    name: str
    folder: str
    text_a: int
    text_b: int | None
    label: int
    header: bool
    labels: tuple[str, ...] | None  # class names in label-id order; None for regression
    metrics: tuple[str, ...]
    dev_file: str = "dev.tsv"
    columns: int | None = None  # columns a row has (checked with --strict); None: not fixed

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


TASKS = {t.name: t for t in [
    Task("cola", "CoLA", 3, None, 1, False, ("0", "1"), ("matthews",), columns=4),
    Task("sst2", "SST-2", 0, None, 1, True, ("0", "1"), ("accuracy",), columns=2),
    Task("mrpc", "MRPC", 3, 4, 0, True, ("0", "1"), ("f1", "accuracy"), columns=5),
    Task("stsb", "STS-B", 7, 8, 9, True, None, ("pearson", "spearman"), columns=10),
    Task("rte", "RTE", 1, 2, 3, True, ("entailment", "not_entailment"), ("accuracy",), columns=4),
    Task("wnli", "WNLI", 1, 2, 3, True, ("0", "1"), ("accuracy",), columns=4),
    Task("qnli", "QNLI", 1, 2, 3, True, ("entailment", "not_entailment"), ("accuracy",), columns=4),
    Task("mnli", "MNLI", 8, 9, -1, True, ("contradiction", "entailment", "neutral"), ("accuracy",),
         dev_file="dev_matched.tsv"),
    Task("qqp", "QQP", 3, 4, 5, True, ("0", "1"), ("f1", "accuracy")),
]}


@dataclass
class Example:
    """One row: the text(s) and the label (class id, or a float score for regression)."""

    text_a: str
    text_b: str | None
    label: float | int


def get_task(name: str) -> Task:
    """The Task called ``name`` (case-insensitive; 'sst-2' and 'sts-b' work too)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise MessiError(f"unknown GLUE task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[key]


def find_data_dir(option: str | os.PathLike | None = None) -> Path:
    """GLUE folder: ``option``, else $MESSI_GLUE_DIR, else ../shared/data/glue beside the repo."""
    if option is not None:
        candidates = [Path(option)]
    elif os.environ.get(ENV_VAR):
        candidates = [Path(os.environ[ENV_VAR])]
    else:
        repo = Path(__file__).resolve().parents[2]
        candidates = [repo.parent / "shared" / "data" / "glue", Path.cwd().parent / "shared" / "data" / "glue"]
    for c in candidates:
        if c.is_dir():
            return c
    raise MessiError(f"GLUE data folder not found (looked in {', '.join(map(str, candidates))}); "
                     f"pass --data-dir or set {ENV_VAR}")


def task_file(task: Task, split: str, data_dir: Path) -> Path:
    """Path of a split's file, or MessiError naming the task and the missing file."""
    path = data_dir / task.folder / (task.dev_file if split == "dev" else f"{split}.tsv")
    if not path.is_file():
        raise MessiError(f"{task.folder} data is not available: {path} is missing "
                         f"(this copy of GLUE has: {', '.join(available_tasks(data_dir)) or 'nothing'})")
    return path


def available_tasks(data_dir: Path) -> list[str]:
    """Tasks whose train and dev files are both present."""
    return [t.name for t in TASKS.values()
            if (data_dir / t.folder / "train.tsv").is_file() and (data_dir / t.folder / t.dev_file).is_file()]


class Rows(list):
    """The examples of a split; ``skipped`` counts rows left out because they did not parse."""

    skipped: int = 0


def _lines(path: Path, strict: bool, bad: list[str]):
    """(line number, decoded line) of a UTF-8 file; a line that is not UTF-8 is reported."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                problem = f"{path}:{number}: not UTF-8 (byte {e.start})"
                if strict:
                    raise MessiError(problem + "; convert the file to UTF-8 or drop --strict") from e
                bad.append(problem)


def read_split(task: Task | str, split: str, data_dir: str | os.PathLike | None = None,
               strict: bool = False) -> Rows:
    """All rows of ``split`` ("train" or "dev") of ``task``.

    A row that does not parse (not UTF-8, too few or, with ``strict``, too many columns, an
    unknown label) is reported as ``FILE:LINE: problem`` in a warning and left out (counted in
    ``Rows.skipped``), or raises MessiError when ``strict``. A split with no usable row raises.
    """
    task = get_task(task) if isinstance(task, str) else task
    path = task_file(task, split, find_data_dir(data_dir))
    label_ids = None if task.labels is None else {name: i for i, name in enumerate(task.labels)}
    examples, bad = Rows(), []
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # GLUE fields can be long; never crash on one
    for line, text in _lines(path, strict, bad):
        if task.header and line == 1:
            continue
        # a carriage return alone inside a row is whitespace in a sentence, not a row's end
        # (csv would refuse it as a line break inside an unquoted field)
        row = next(csv.reader([text.replace("\r", " ")], delimiter="\t", quoting=csv.QUOTE_NONE), [])
        try:
            if strict and task.columns is not None and len(row) != task.columns:
                raise ValueError(f"{len(row)} columns, expected {task.columns}")
            examples.append(_parse(task, row, label_ids))
        except (IndexError, KeyError, ValueError) as e:
            problem = f"{path}:{line}: cannot parse row ({type(e).__name__}: {e})"
            if strict:
                raise MessiError(problem + "; fix the file or drop --strict") from e
            bad.append(problem)
    for problem in bad:
        warnings.warn(problem + "; row skipped", stacklevel=2)
    examples.skipped = len(bad)
    if not examples:
        raise MessiError(f"{path} has no usable row ({len(bad)} skipped); check the file")
    return examples


def _parse(task: Task, row: list[str], label_ids: dict | None) -> Example:
    text_b = row[task.text_b] if task.text_b is not None else None
    raw = row[task.label].strip()
    label = float(raw) if label_ids is None else label_ids[raw]
    return Example(row[task.text_a], text_b, label)
