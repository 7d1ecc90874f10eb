"""The messi.json of a compressed folder: its schema, its checks, and the weights' checksum.

``load`` and ``messi info`` trust nothing in a folder: every field is checked for type and
range, against the other fields, against config.json and against the tensor shapes in the
safetensors header (read without loading a tensor), before anything large is allocated; the
sha256 that ``save`` recorded must match model.safetensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from pathlib import Path

from .config import METHODS, ORIENTATIONS, TARGETS
from .errors import MessiError
from .quantize import packed_width

CONFIG_NAME = "messi.json"
WEIGHTS_NAME = "model.safetensors"
DTYPES = ("float32", "float16", "bfloat16", "float64")
#: Largest vocabulary accepted from a file (2^31 rows: far above any real tokenizer).
MAX_ROWS = 2**31


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _int(info: dict, key: str, low: int, high: int, file: Path) -> int:
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise MessiError(f"{file}: {key} must be an integer in [{low}, {high}], got {value!r}; "
                         "the folder is damaged, re-run `messi compress`")
    return int(value)


def _number(info: dict, key: str, file: Path) -> None:
    value = info.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise MessiError(f"{file}: {key} must be a number, got {value!r}; re-run `messi compress`")


def _validate_embedding(info: dict, file: Path) -> None:
    """The fields that describe a factored embedding (the whole of messi.json for target
    "embedding", its "embedding" entry otherwise)."""
    if not isinstance(info, dict):
        raise MessiError(f"{file}: embedding must be a JSON object, got {type(info).__name__}; re-run `messi compress`")
    method = info.get("method")
    if method not in METHODS:
        raise MessiError(f"{file}: method must be one of {', '.join(METHODS)}, got {method!r}")
    n = _int(info, "num_embeddings", 1, MAX_ROWS, file)
    d = _int(info, "embedding_dim", 2, 1 << 20, file)
    k = _int(info, "k", 1, n, file)
    if method == "svd" and k != 1:
        raise MessiError(f"{file}: method svd has k = 1, got k = {k}")
    _int(info, "rank", 1, d - 1, file)
    pad = info.get("padding_idx")
    if pad is not None:
        _int(info, "padding_idx", 0, n - 1, file)
    if "exact_rows" in info:
        _int(info, "exact_rows", 0, n - 1, file)
    _validate_storage(info, file)
    scale = info.get("embed_scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale < 1e6):
        raise MessiError(f"{file}: embed_scale must be a positive number, got {scale!r}; re-run `messi compress`")
    if not isinstance(info.get("tied_output", False), bool):
        raise MessiError(f"{file}: tied_output must be true or false, got {info.get('tied_output')!r}")
    for key in ("compression", "rel_error", "weighted_rel_error"):
        _number(info, key, file)


def _validate_storage(info: dict, file: Path) -> None:
    """bits / group_size of a factored layer's coordinates (absent: floats)."""
    bits = info.get("bits")
    if bits is not None and (isinstance(bits, bool) or bits not in (8, 4)):
        raise MessiError(f"{file}: bits must be 8, 4 or absent, got {bits!r}; the folder is damaged, re-run `messi compress`")
    if info.get("group_size") is not None:
        if bits is None:
            raise MessiError(f"{file}: group_size is given without bits; the folder is damaged, re-run `messi compress`")
        _int(info, "group_size", 1, 1 << 20, file)


def _validate_linear(entry, file: Path) -> str:
    """One entry of ``linear_layers``; returns its module name."""
    if not isinstance(entry, dict):
        raise MessiError(f"{file}: every linear_layers entry must be a JSON object, got {entry!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not all(p.isidentifier() or p.isdigit() for p in name.split(".")):
        raise MessiError(f"{file}: a linear layer's name must be a module path like encoder.layer.0.output.dense, "
                         f"got {name!r}; the folder is damaged, re-run `messi compress`")
    inp = _int(entry, "in_features", 1, 1 << 20, file)
    out = _int(entry, "out_features", 1, 1 << 20, file)
    if not isinstance(entry.get("bias"), bool):
        raise MessiError(f"{file}: {name}: bias must be true or false, got {entry.get('bias')!r}")
    method = entry.get("method")
    if method not in (*METHODS, "dense"):
        raise MessiError(f"{file}: {name}: method must be svd, messi or dense, got {method!r}")
    if method != "dense":
        _int(entry, "rank", 1, max(1, min(inp, out) - 1), file)
        k = _int(entry, "k", 1, max(inp, out), file)
        if method == "svd" and k != 1:
            raise MessiError(f"{file}: {name}: method svd has k = 1, got k = {k}")
        if entry.get("orientation") not in ORIENTATIONS:
            raise MessiError(f"{file}: {name}: orientation must be rows or columns, got {entry.get('orientation')!r}")
        _validate_storage(entry, file)
    _number(entry, "rel_error", file)
    return name


def embedding_info(info: dict) -> dict | None:
    """The part of messi.json that describes the factored embedding (None if it was not
    compressed): the whole of it for target "embedding", its "embedding" entry otherwise."""
    return info if info.get("target", "embedding") == "embedding" else info.get("embedding")


def validate_info(info, file: Path) -> dict:
    """Check messi.json's fields (types, ranges, consistency); returns ``info`` or MessiError."""
    if not isinstance(info, dict):
        raise MessiError(f"{file} must hold a JSON object, got {type(info).__name__}; re-run `messi compress`")
    target = info.get("target", "embedding")
    if target not in TARGETS:
        raise MessiError(f"{file}: target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "embedding":
        _validate_embedding(info, file)
    else:
        if info.get("method") not in METHODS:
            raise MessiError(f"{file}: method must be one of {', '.join(METHODS)}, got {info.get('method')!r}")
        if target == "linear" and "embedding" in info:
            raise MessiError(f"{file}: target linear has no embedding entry; the folder is damaged, re-run `messi compress`")
        if info.get("embedding") is not None:
            _validate_embedding(info["embedding"], file)
        layers = info.get("linear_layers")
        if not isinstance(layers, list):
            raise MessiError(f"{file}: linear_layers must be a list for target {target}; re-run `messi compress`")
        names = [_validate_linear(entry, file) for entry in layers]
        if len(set(names)) != len(names):
            raise MessiError(f"{file}: a linear layer is listed twice; the folder is damaged, re-run `messi compress`")
    if not isinstance(info.get("model_class"), str) or not info["model_class"].isidentifier():
        raise MessiError(f"{file}: model_class must be a class name, got {info.get('model_class')!r}")
    if info.get("dtype", "float32") not in DTYPES:
        raise MessiError(f"{file}: dtype must be one of {', '.join(DTYPES)}, got {info.get('dtype')!r}")
    digest = info.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                   and all(c in "0123456789abcdef" for c in digest)):
        raise MessiError(f"{file}: weights_sha256 must be 64 hex digits, got {digest!r}")
    for key in ("ratio", "compression", "fit_seconds", "model_compression"):
        _number(info, key, file)
    return info


def read_info(path: str | Path) -> dict:
    """The checked messi.json of a compressed folder, or MessiError saying what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise MessiError(f"{path} does not exist or is not a folder; give a folder written by `messi compress`")
    file = path / CONFIG_NAME
    if not file.is_file():
        raise MessiError(f"{path} has no {CONFIG_NAME}: not a messi folder; create one with `messi compress`")
    if file.stat().st_size > MAX_INFO_BYTES:
        raise MessiError(f"{file} is {file.stat().st_size:,} bytes, far more than messi writes; re-run `messi compress`")
    try:
        info = json.loads(file.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MessiError(f"{file} is corrupt ({type(e).__name__}: {str(e)[:200]}); re-run `messi compress`") from e
    return validate_info(info, file)


#: Largest messi.json read (a whole-model record of a big LLM is well under a megabyte).
MAX_INFO_BYTES = 32 << 20


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


#: messi.json keys of the manifest: every other file's sha256, and messi.json's own.
FILES_KEY, SELF_KEY = "files", "messi_json_sha256"


def _folder_paths(path: Path) -> dict[str, Path]:
    """Every regular file under ``path`` but messi.json, by relative POSIX path."""
    return {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.relative_to(path).as_posix() != CONFIG_NAME}


def folder_files(path: Path) -> dict[str, str]:
    """sha256 of every regular file under ``path`` but messi.json, by relative POSIX path."""
    return {name: sha256_file(p) for name, p in _folder_paths(path).items()}


def info_digest(info: dict) -> str:
    """sha256 of messi.json's content, canonical (sorted keys, no spaces), without its own digest."""
    data = {k: v for k, v in info.items() if k != SELF_KEY}
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()


def with_manifest(info: dict, path: Path) -> dict:
    """``info`` plus the manifest of the folder ``path`` as it is now (``save`` calls it last);
    ``weights_sha256``, unless given, is the manifest's own digest of model.safetensors (each file
    hashed once)."""
    files = folder_files(path)
    weights = {"weights_sha256": files[WEIGHTS_NAME]} if WEIGHTS_NAME in files else {}
    info = {**weights, **info, FILES_KEY: files}
    return {**info, SELF_KEY: info_digest(info)}


def verify_manifest(info: dict, path: Path, skip: tuple[str, ...] = (WEIGHTS_NAME,)) -> bool:
    """Every file the manifest lists is there with its sha256, and messi.json is unedited;
    MessiError naming the first file that is not. False for a folder written before manifests
    (nothing to verify beyond the weights' checksum). ``skip``: files checked elsewhere."""
    files = info.get(FILES_KEY)
    if files is None:
        return False
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise MessiError(f"{path}/{CONFIG_NAME}: its file list is damaged; re-run `messi compress`")
    if info.get(SELF_KEY) != info_digest(info):
        raise MessiError(f"{path}/{CONFIG_NAME} was edited after `messi compress` wrote it (its sha256 does not "
                         "match); restore it or re-run `messi compress`")
    for name, digest in files.items():
        file = path / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise MessiError(f"{path}/{CONFIG_NAME} lists the file {name!r} outside the folder; re-run `messi compress`")
        if name in skip:
            continue
        if not file.is_file():
            raise MessiError(f"{file} is missing (messi.json lists it); copy the whole folder or re-run `messi compress`")
        if sha256_file(file) != digest:
            raise MessiError(f"{file} was changed after `messi compress` wrote it (sha256 differs); restore it or "
                             "re-run `messi compress`")
    return True


def check_replaceable(path: Path) -> bool:
    """For ``--overwrite``: the folder holds exactly the files messi wrote (its manifest and
    messi.json); MessiError naming the first other file, or saying it has no manifest."""
    if not (path / CONFIG_NAME).is_file():
        raise MessiError(f"{path} was not written by messi (no messi.json); --overwrite refuses to delete it. "
                         "Choose another folder")
    info = read_info(path)
    files = info.get(FILES_KEY)
    if not isinstance(files, dict):
        raise MessiError(f"{path} was written by an older messi without a file list; --overwrite cannot tell "
                         "your files from its own. Delete it yourself or choose another folder")
    present = set(_folder_paths(path)) | {CONFIG_NAME}  # names only: nothing needs hashing here
    others = sorted(present - set(files) - {CONFIG_NAME}) + sorted(
        p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_symlink())
    if others:
        raise MessiError(f"{path} holds {others[0]!r}, which messi did not write; --overwrite refuses to delete it. "
                         "Move it out or choose another folder")
    return True


def check_config(info: dict, config, path: Path) -> None:
    """config.json must describe the same table as messi.json (vocabulary size)."""
    emb = embedding_info(info)
    vocab = getattr(config, "vocab_size", None)
    if emb is not None and vocab is not None and vocab != emb["num_embeddings"]:
        raise MessiError(f"{path}: config.json has vocab_size {vocab} but messi.json says {emb['num_embeddings']} "
                         "rows; the folder was edited or mixed up, re-run `messi compress`")


def check_weights(info: dict, path: Path, verify_checksum: bool = True, hash_weights: bool = True) -> None:
    """The factored tensors in model.safetensors must have the shapes messi.json gives (read from
    the header only), the manifest's other files must be unchanged, and (``hash_weights``) the
    file's sha256 must be the one ``save`` recorded; a loader that hashes the bytes it reads
    passes False and checks them itself."""
    from safetensors import SafetensorError, safe_open

    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise MessiError(f"{path} has no {WEIGHTS_NAME}; the folder is incomplete, re-run `messi compress`")
    if verify_checksum:
        verify_manifest(info, path)
    if verify_checksum and hash_weights:
        check_weights_digest(info, weights, sha256_file(weights))
    expected = _expected_shapes(info)
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise MessiError(f"{weights} is not a readable safetensors file ({e}); re-run `messi compress`") from e
    linear_names = tuple(e["name"] + "." for e in info.get("linear_layers", []))
    # the embedding's module path differs between architectures: its tensors are found by their
    # last name among those that belong to no factored Linear layer
    by_suffix = {name.rsplit(".", 1)[-1]: shape for name, shape in shapes.items() if not name.startswith(linear_names)}
    for name, shape in expected.items():
        found = shapes.get(name) if "." in name else by_suffix.get(name)
        if found != shape:
            raise MessiError(f"{weights}: the factored tensor {name!r} has shape {found}, messi.json "
                             f"says {shape}; the folder is damaged, re-run `messi compress`")


def check_weights_digest(info: dict, weights: Path, digest: str) -> None:
    """MessiError if ``digest`` (the sha256 of the bytes read from ``weights``) is not the one
    messi.json records; nothing to check for a folder that records none."""
    recorded = info.get("weights_sha256")
    if recorded is not None and digest != recorded:
        raise MessiError(f"{weights} does not match the sha256 in messi.json: the file is damaged or was "
                         "changed; re-run `messi compress` or restore it")


def _coordinate_shapes(name: str, m: int, j: int, entry: dict) -> dict[str, list[int]]:
    """The stored coordinates (m, j): floats, or integers and their fp16 scales (quantize.py)."""
    bits, group = entry.get("bits"), entry.get("group_size")
    if bits is None:
        return {name: [m, j]}
    return {f"{name}_q": [m, packed_width(j, bits, group)], f"{name}_scale": [m, math.ceil(j / min(group or j, j))]}


def _expected_shapes(info: dict) -> dict[str, list[int]]:
    """Factored tensor -> shape: the embedding's by last name, Linear layers' by full name."""
    expected = {}
    emb = embedding_info(info)
    if emb is not None:
        n, d, j, k = emb["num_embeddings"], emb["embedding_dim"], emb["rank"], emb["k"]
        expected.update(_coordinate_shapes("coords", n - (emb.get("exact_rows") or 0), j, emb))
        expected.update({"basis": [j, d]} if emb["method"] == "svd" else {"bases": [k, j, d], "labels": [n]})
        if emb.get("exact_rows"):
            m = emb["exact_rows"]
            expected.update({"exact_values": [m, d], "exact_ids": [m], "exact_slot": [n]})
    for e in info.get("linear_layers", []):
        name, inp, out, j = e["name"], e["in_features"], e["out_features"], e["rank"]
        if e["method"] == "svd":
            expected.update({f"{name}.down": [j, inp], **_coordinate_shapes(f"{name}.up", out, j, e)})
        elif e["method"] == "messi":
            m, p = (out, inp) if e["orientation"] == "rows" else (inp, out)
            expected.update({**_coordinate_shapes(f"{name}.coords", m, j, e), f"{name}.bases": [e["k"], j, p],
                             f"{name}.labels": [m]})
    return expected
