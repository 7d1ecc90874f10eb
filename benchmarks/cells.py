"""Resumable benchmark cells: each result is computed once and kept in a JSON file at once, so a
killed benchmark restarts where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

from messi.io import write_json


class Cells:
    """``run(key, fn)``: the stored result of ``key``, else ``fn()`` stored (atomically) under it."""

    def __init__(self, path: Path, console):
        self.path, self.console = Path(path), console
        self.results: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, key: str, fn):
        if key not in self.results:
            self.console.print(f"[bold]{key}[/bold]")
            self.results[key] = fn()
            write_json(self.path, self.results)
        return self.results[key]
