"""Compressed folders on disk: ``save`` writes one, ``load`` rebuilds the model from it.

A compressed folder is an ordinary Hugging Face folder (config.json, model.safetensors,
tokenizer files, a sentence-transformers source's pooling files) plus ``messi.json``, which
holds the ``CompressionConfig`` and says how to rebuild every factored layer. Weights are read
and written with safetensors, settings with JSON: no pickle, no remote code. The fitting code
never imports this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import transformers
from accelerate import init_empty_weights
from safetensors import SafetensorError
from torch import nn

from .config import CompressionConfig
from .errors import MessiError
from .folder import (
    CONFIG_NAME,
    FILES_KEY,
    SELF_KEY,
    WEIGHTS_NAME,
    check_config,
    check_replaceable,
    check_weights,
    check_weights_digest,
    embedding_info,
    read_info,
    with_manifest,
)
from .hf_config import MessiConfig
from .io import atomic_dir, check_writable_target, write_json
from .layers import FactorizedEmbedding, ProjectiveEmbedding, _LowRankEmbedding
from .stfolder import copy_sentence_transformers_files
from .storage import CoordinateStorage
from .targets import distinct_state, empty_linear, input_embedding, install_embedding, install_linear
from .tensorfile import load_tensors, save_aligned


def _save_weights(model: nn.Module, file: Path) -> None:
    """Write the state dict with safetensors; a tensor shared under several names (tied
    weights) is stored once and the other names go in the metadata as aliases."""
    tensors, aliases = distinct_state(model)
    tensors = {name: t.detach().contiguous() for name, t in tensors.items()}
    save_aligned(tensors, file, metadata={"format": "pt", "aliases": json.dumps(aliases)})


def _load_weights(model: nn.Module, file: Path, info: dict, mmap: bool) -> None:
    """Load what ``_save_weights`` wrote, strictly: every name of the model must be there and
    no other (so no parameter is left on the meta device).

    The file's tensors become the model's (``assign``: parameters built on the meta device are
    never materialised first), mapped from the file where it is aligned (``tensorfile``), and
    names saved as aliases of one tensor are tied again. The sha256 that messi.json (``info``)
    records is checked against the bytes the tensors were made from (mapped: ``check_weights``
    hashed the file).
    """
    state, metadata, read_digest = load_tensors(file, mmap=mmap)
    if read_digest is not None:
        check_weights_digest(info, file, read_digest)
    aliases = json.loads(metadata.get("aliases", "{}"))
    for name, target in aliases.items():
        state[name] = state[target]
    model.load_state_dict(state, strict=True, assign=True)
    for name, target in aliases.items():  # one tensor under several names: one object again
        owner, _, attr = name.rpartition(".")
        t_owner, _, t_attr = target.rpartition(".")
        setattr(model.get_submodule(owner), attr, getattr(model.get_submodule(t_owner), t_attr))


def save(model: nn.Module, path: str | os.PathLike, tokenizer=None, extra: dict | None = None,
         source: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write a compressed ``model`` to the folder ``path``, atomically.

    The folder gets config.json (a ``MessiConfig`` holding the model's own config, so that
    ``transformers.AutoModel.from_pretrained(path)`` works once messi is imported),
    model.safetensors, messi.json and, if given, the tokenizer's files. If ``source`` is a
    sentence-transformers folder, its pooling and normalisation settings (modules.json and the
    module folders) are kept, so that ``SentenceTransformer(path)`` encodes as the original did.
    ``extra`` adds keys to messi.json (e.g. where the model came from). messi.json records the
    sha256 of every file it holds and its own (a manifest), which ``load`` checks.

    An existing ``path`` is refused unless ``overwrite``, and even then only a folder that holds
    exactly the files messi wrote there is replaced (never the home folder, a root, the current
    folder or its parents), once the new one is complete. A folder that appears
    at ``path`` while saving is never replaced.
    """
    info = getattr(model, "messi_config", None)
    if info is None:
        raise MessiError("this model was not compressed with messi.compress; nothing to save")
    path = check_writable_target(path, replace=overwrite, is_ours=check_replaceable)
    # a model loaded from a folder carries that folder's manifest and checksum: made anew here
    info = {k: v for k, v in info.items() if k not in ("weights_sha256", FILES_KEY, SELF_KEY)}
    with atomic_dir(path, replace=overwrite) as tmp:
        MessiConfig(base_config=model.config.to_dict()).save_pretrained(tmp)
        _save_weights(model, tmp / WEIGHTS_NAME)
        if source is not None:
            copy_sentence_transformers_files(Path(source), tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / CONFIG_NAME, with_manifest({**info, **(extra or {})}, tmp))
    return path


def _model_class(name: str):
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise MessiError(f"model class {name!r} is not a transformers model class; "
                         "upgrade transformers or re-run `messi compress`")
    return cls


def empty_layer(info: dict) -> _LowRankEmbedding:
    """The factored embedding that messi.json's ``info`` (or its embedding entry) describes,
    its weights still zero (to be filled by loading or by receiving them from another process);
    with quantized storage when ``info`` has bits."""
    n, d, j, pad = info["num_embeddings"], info["embedding_dim"], info["rank"], info.get("padding_idx")
    layer = FactorizedEmbedding(n, d, j, pad) if info["method"] == "svd" else ProjectiveEmbedding(n, d, j, info["k"], pad)
    if info.get("exact_rows"):  # first: they drop their coordinates, which quantize_ then stores
        layer.keep_exact_(torch.arange(info["exact_rows"]), torch.zeros(info["exact_rows"], d))
    if info.get("bits") is not None:
        layer.quantize_(info["bits"], info.get("group_size"))
    layer.embed_scale = info.get("embed_scale")
    return layer


def _install_structure(model: nn.Module, info: dict) -> None:
    """Swap in every factored layer messi.json's ``info`` describes, with zero factors in the
    dtype and device of the module it replaces (the meta device while loading)."""
    emb_info = embedding_info(info)
    if emb_info is not None:
        w = input_embedding(model).weight
        with torch.device(w.device):  # on the meta device, the zeros are never allocated
            layer = empty_layer(emb_info).to(dtype=w.dtype)
        install_embedding(model, layer, emb_info.get("tied_output", False))
    for entry in info.get("linear_layers", []):
        if entry["method"] != "dense":
            w = model.get_submodule(entry["name"]).weight
            with torch.device(w.device):
                layer = empty_linear(entry).to(dtype=w.dtype)
            install_linear(model, entry["name"], layer)


def install_empty(model: nn.Module, info: dict) -> nn.Module:
    """Give an uncompressed ``model`` the structure ``compress`` gave another copy of it (whose
    ``messi_config`` is ``info``), with zero factors in the model's dtype and device, so that the
    compressed weights can then be copied in (e.g. broadcast from the process that compressed)."""
    _install_structure(model, info)
    model.messi_config = info
    return model


def load(path: str | os.PathLike, device: str | torch.device | None = None, mmap: bool = False) -> nn.Module:
    """Rebuild a model saved by ``save``: same class, factored layers, saved weights; eval mode.

    Reads only JSON and safetensors, and checks both first (``folder.py``): field types and
    ranges, config.json against messi.json, tensor shapes, the weights' sha256. Gives exactly
    the outputs the saved model gave, in the saved precision.

    By default the weights file is read once into memory the model owns, and its sha256 is
    checked on those very bytes: rewriting or truncating the file later never changes or kills
    the model. ``mmap=True`` maps it copy-on-write instead (only the pages a forward pass touches
    become resident; docs/benchmarks.md measures both), for files that stay unchanged while the
    model lives.
    """
    path = Path(path)
    info = read_info(path)
    check_weights(info, path, verify_checksum=True, hash_weights=mmap)
    weights = path / WEIGHTS_NAME
    if not (path / "config.json").is_file():  # not a pipe or a device: reading one would hang
        raise MessiError(f"{path}/config.json is missing or not a regular file; re-run `messi compress`")
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        if isinstance(config, MessiConfig):
            config = config.to_base()
    except (OSError, ValueError) as e:
        raise MessiError(f"{path}/config.json is missing or corrupt ({e}); re-run `messi compress`") from e
    check_config(info, config, path)
    # parameters on the meta device: the full (n, d) table is never allocated, only what the
    # file holds is (buffers such as position ids are built for real)
    with init_empty_weights(include_buffers=False):
        model = _model_class(info["model_class"])(config)
    tied = (embedding_info(info) or {}).get("tied_output", False)
    if tied and getattr(model, "get_output_embeddings", lambda: None)() is None:
        raise MessiError(f"{path}/messi.json says the output head is tied, but {info['model_class']} has no "
                         "output head; the folder is damaged, re-run `messi compress`")
    missing = [e["name"] for e in info.get("linear_layers", []) if not _has_linear(model, e["name"])]
    if missing:
        raise MessiError(f"{path}/messi.json names the layer {missing[0]}, which {info['model_class']} does not "
                         "have as an nn.Linear; the folder is damaged, re-run `messi compress`")
    _install_structure(model, info)  # its empty factors on the meta device too
    model.to(getattr(torch, info.get("dtype", "float32")))  # the saved precision: identical outputs
    try:
        _load_weights(model, weights, info, mmap)
    except (SafetensorError, RuntimeError, OSError, KeyError, json.JSONDecodeError) as e:
        # torch puts the reason on the lines after "Error(s) in loading state_dict for X:": keep them, on one line
        reason = " ".join(str(e).split())[:300]
        raise MessiError(f"{weights} is corrupt or does not match messi.json ({reason}); "
                         "re-run `messi compress`") from e
    for module in model.modules():  # buffers not in the file (built on the meta device) made real
        if isinstance(module, CoordinateStorage):
            module.materialize_anchor()
    model.messi_config = info
    model.compression_config = CompressionConfig.from_info(info)
    model.eval()
    return model.to(device) if device is not None else model


def _has_linear(model: nn.Module, name: str) -> bool:
    try:
        return isinstance(model.get_submodule(name), nn.Linear)
    except AttributeError:
        return False


def is_messi_folder(path) -> bool:
    """Whether ``path`` is a folder written by ``save`` (it holds messi.json)."""
    return path is not None and (Path(path) / CONFIG_NAME).is_file()
