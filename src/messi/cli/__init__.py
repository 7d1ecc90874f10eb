"""The ``messi`` command line. Wiring only: every command calls the library.

``common`` holds the app and what commands share; ``model_commands`` (compress, info, eval-sts,
demo, fetch-model), ``heal_command`` (heal) and ``glue_commands`` (glue, sweep, report) add their commands to it.
"""

from __future__ import annotations

from . import glue_commands, heal_command, model_commands  # noqa: F401  (importing them registers the commands)
from .common import app, console
from .model_commands import default_output_texts

__all__ = ["app", "console", "default_output_texts", "main"]


def main() -> None:  # pragma: no cover - console entry point
    """The ``messi`` console script."""
    app()
