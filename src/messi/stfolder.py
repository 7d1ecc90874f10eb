"""The sentence-transformers files of a model folder (module list, pooling, normalisation):
recognised, and copied beside a compressed encoder so that ``SentenceTransformer(OUT)`` pools as
the original did."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import MessiError


def is_sentence_transformers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sentence-transformers model folder (it has modules.json)."""
    return (Path(path) / "modules.json").is_file()


#: sentence-transformers files that describe pooling and normalisation (not the encoder).
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def copy_sentence_transformers_files(source: Path, target: Path) -> bool:
    """Copy a sentence-transformers folder's module list and module settings (pooling,
    normalisation, ...) from ``source`` to ``target``; the encoder (module path "") is the
    folder itself. Returns whether ``source`` was a sentence-transformers folder.

    Only module classes of sentence-transformers itself are accepted, so that loading the
    target never needs ``trust_remote_code``.
    """
    if not is_sentence_transformers_folder(source):
        return False
    try:
        modules = json.loads((source / "modules.json").read_text(encoding="utf-8"))
        entries = [(str(m["path"]), str(m["type"])) for m in modules]
    except (ValueError, KeyError, TypeError) as e:
        raise MessiError(f"{source}/modules.json is not a valid sentence-transformers module list ({e})") from e
    for sub, kind in entries:
        if not kind.startswith("sentence_transformers."):
            raise MessiError(f"{source}/modules.json names the module class {kind!r}, which is not part of "
                             "sentence-transformers; messi does not copy custom code")
        if kind.endswith(".Transformer") and sub:
            raise MessiError(f"{source}/modules.json keeps the encoder in {sub!r}; point --model at that folder")
        folder = source / sub
        if sub and folder.is_dir() and folder.resolve().is_relative_to(source.resolve()):
            shutil.copytree(folder, target / sub, dirs_exist_ok=True)
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    return True
