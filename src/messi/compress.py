"""Swap a Hugging Face model's input embedding for an SVD or MESSI layer; save and load it.

A compressed folder is an ordinary Hugging Face folder (config.json, model.safetensors,
tokenizer files) plus ``messi.json``, which says how to rebuild the factored layers. Weights
are read and written with safetensors, settings with JSON: no pickle, no remote code.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from . import __version__
from . import checks
from .errors import MessiError
from .clustering import check_sample_weight
from .factorize import (METHODS, check_rank, check_ratio, compression, messi_factorize, parameter_count,
                        rank_for_ratio, relative_error, svd_factorize)
from .auto import MessiConfig
from .folder import CONFIG_NAME, WEIGHTS_NAME, check_config, check_weights, read_info, sha256_file
from .io import atomic_dir, check_writable_target, write_json
from .layers import FactorizedEmbedding, ProjectiveEmbedding, TiedOutputEmbedding, _LowRankEmbedding
from .models import copy_sentence_transformers_files, load_hf_model, resolve_model



def _input_embedding(model: nn.Module) -> nn.Embedding:
    getter = getattr(model, "get_input_embeddings", None)
    emb = getter() if getter else None
    if isinstance(emb, _LowRankEmbedding):
        raise MessiError("this model's embedding is already compressed; start from the original model")
    if not isinstance(emb, nn.Embedding):
        raise MessiError(
            f"{type(model).__name__} has no input embedding (get_input_embeddings() gave "
            f"{type(emb).__name__}); pass a Hugging Face text model"
        )
    return emb


def _is_tied(model: nn.Module, emb: nn.Embedding) -> bool:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    w = getattr(out, "weight", None)
    return isinstance(w, torch.Tensor) and w.data_ptr() == emb.weight.data_ptr()


def _install(model: nn.Module, layer: _LowRankEmbedding, tied: bool) -> None:
    """Put ``layer`` in as the input embedding (and as the tied output projection)."""
    if tied:
        old = model.get_output_embeddings()
        model.set_output_embeddings(TiedOutputEmbedding(layer, getattr(old, "bias", None)))
        model.config.tie_word_embeddings = False  # stop transformers re-tying to a `weight`
    model.set_input_embeddings(layer)


def compress(model: nn.Module, method: str = "messi", ratio: float = 0.4, k: int = 3,
             rank: int | None = None, seed: int = 0, n_init: int = 4, max_iter: int = 50,
             tol: float = 1e-4, loss: str = "l2", verbose: bool = False, row_weights=None,
             calibration: dict | None = None) -> nn.Module:
    """Replace ``model.get_input_embeddings()`` by an SVD or MESSI layer, in place.

    Parameters
    ----------
    model : a Hugging Face ``PreTrainedModel`` (BERT, DistilBERT, RoBERTa, MPNet, ...).
    method : "messi" (k subspaces) or "svd" (one subspace).
    ratio : target compression of the embedding, 1 - new/old parameters, in (0, 1).
    k : number of subspaces for MESSI (ignored for SVD).
    rank : dimension j of the subspaces; None picks the largest j reaching ``ratio``.
    seed, n_init, max_iter, tol, loss : settings of the projective clustering (loss: "l2",
        "l1" or "huber", see ``ProjectiveClustering``).
    row_weights : optional tensor (n,) of non-negative weights, one per embedding row (e.g.
        ``messi.calibrate(...).weights``): the fit minimises the weighted error. Rows of weight
        0 are still represented (projected on their closest subspace).
    calibration : optional dict recorded in messi.json under "calibration" (where the weights
        came from; ``Calibration.record()``).

    Returns the same model; ``model.messi_config`` holds what ``save`` writes to messi.json.
    A tied output projection (masked-LM heads) is switched to the factored table too.
    """
    if method not in METHODS:
        raise MessiError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    ratio = check_ratio(ratio)
    k = 1 if method == "svd" else checks.integer("k", k, 1)
    seed = checks.seed("seed", seed)
    n_init, max_iter = checks.integer("n_init", n_init, 1), checks.integer("max_iter", max_iter, 1)
    emb = _input_embedding(model)
    A = emb.weight.detach()
    n, d = A.shape
    rank = rank_for_ratio(n, d, k, ratio) if rank is None else check_rank(rank, d)
    tied = _is_tied(model, emb)
    weights = check_sample_weight(row_weights, n)
    start = time.perf_counter()
    if method == "svd":
        layer = FactorizedEmbedding.from_factors(svd_factorize(A, rank, weights), emb.padding_idx,
                                                 _padding_row(A, emb.padding_idx))
    else:
        factors = messi_factorize(A, k, rank, seed=seed, n_init=n_init, max_iter=max_iter,
                                  tol=tol, loss=loss, verbose=verbose, sample_weight=weights)
        layer = ProjectiveEmbedding.from_factors(factors, emb.padding_idx,
                                                 _padding_row(A, emb.padding_idx))
    seconds = time.perf_counter() - start
    layer = layer.to(device=A.device, dtype=A.dtype)
    with torch.no_grad():
        approx = layer.weight
        rel = relative_error(A, approx)
        weighted_rel = None if weights is None else relative_error(A, approx, weights)
    _install(model, layer, tied)
    model.messi_config = {
        "method": method, "k": k, "rank": rank, "ratio": ratio,
        "compression": compression(n, d, k, rank),
        "seed": seed, "n_init": n_init, "max_iter": max_iter, "tol": tol,
        "loss": loss if method == "messi" else "l2",
        "num_embeddings": n, "embedding_dim": d, "padding_idx": emb.padding_idx,
        "embedding_params_before": n * d,
        "embedding_params_after": parameter_count(n, d, k, rank),
        "label_bytes": getattr(layer, "label_bytes", 0),
        "rel_error": rel, "tied_output": tied, "fit_seconds": seconds,
        "model_class": type(model).__name__, "dtype": _dtype_name(_model_dtype(model)),
        "messi_version": __version__,
    }
    if weights is not None:
        model.messi_config["weighted_rel_error"] = weighted_rel
        model.messi_config["calibration"] = calibration or {"sources": ["row_weights given to compress()"]}
    if hasattr(model, "messi_load_report"):  # which class was loaded from the source, and why
        model.messi_config["source_load"] = model.messi_load_report
    return model


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype most of the model's parameters have (what ``load`` restores)."""
    sizes: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
    return max(sizes, key=sizes.get) if sizes else torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _padding_row(A: torch.Tensor, padding_idx: int | None):
    return None if padding_idx is None else A[padding_idx]


def _save_weights(model: nn.Module, file: Path) -> None:
    """Write the state dict with safetensors; a tensor shared under several names (tied
    weights) is stored once and the other names go in the metadata as aliases."""
    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t.detach().contiguous()
    save_file(tensors, str(file), metadata={"format": "pt", "aliases": json.dumps(aliases)})


def _load_weights(model: nn.Module, file: Path) -> None:
    """Load what ``_save_weights`` wrote, strictly: every name of the model must be there and
    no other (so no parameter is left on the meta device).

    The file's tensors become the model's (``assign``: parameters built on the meta device are
    never materialised first), and names saved as aliases of one tensor are tied again.
    """
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        # each tensor copied into its own fresh allocation, one at a time: tensors handed out by
        # the reader can sit at unaligned addresses, where CPU kernels round differently and the
        # outputs would differ in the last bit from those of the model that was saved
        state = {name: f.get_tensor(name).clone() for name in f.keys()}
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
    sha256 of model.safetensors, which ``load`` checks.

    An existing ``path`` is refused unless ``overwrite``, and even then only a folder that messi
    wrote (it has messi.json) is replaced, once the new one is complete. A folder that appears
    at ``path`` while saving is never replaced.
    """
    info = getattr(model, "messi_config", None)
    if info is None:
        raise MessiError("this model was not compressed with messi.compress; nothing to save")
    path = check_writable_target(path, replace=overwrite, is_ours=is_messi_folder)
    with atomic_dir(path, replace=overwrite) as tmp:
        MessiConfig(base_config=model.config.to_dict()).save_pretrained(tmp)
        _save_weights(model, tmp / WEIGHTS_NAME)
        if source is not None:
            copy_sentence_transformers_files(Path(source), tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / CONFIG_NAME, {**info, **(extra or {}), "weights_sha256": sha256_file(tmp / WEIGHTS_NAME)})
    return path


def _model_class(name: str):
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise MessiError(f"model class {name!r} is not a transformers model class; "
                         "upgrade transformers or re-run `messi compress`")
    return cls


def empty_layer(info: dict) -> _LowRankEmbedding:
    """The factored embedding that messi.json's ``info`` describes, its weights still zero
    (to be filled by loading or by receiving them from another process)."""
    n, d, j, pad = info["num_embeddings"], info["embedding_dim"], info["rank"], info.get("padding_idx")
    if info["method"] == "svd":
        return FactorizedEmbedding(n, d, j, pad)
    return ProjectiveEmbedding(n, d, j, info["k"], pad)


def install_empty(model: nn.Module, info: dict) -> nn.Module:
    """Give an uncompressed ``model`` the structure ``compress`` gave another copy of it (whose
    ``messi_config`` is ``info``), with zero factors in the model's dtype and device, so that the
    compressed weights can then be copied in (e.g. broadcast from the process that compressed)."""
    emb = _input_embedding(model)
    layer = empty_layer(info).to(device=emb.weight.device, dtype=emb.weight.dtype)
    _install(model, layer, info.get("tied_output", False))
    model.messi_config = info
    return model


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> nn.Module:
    """Rebuild a model saved by ``save``: same class, factored layers, saved weights; eval mode.

    Reads only JSON and safetensors, and checks both first (``folder.py``): field types and
    ranges, config.json against messi.json, tensor shapes, the weights' sha256. Gives exactly
    the outputs the saved model gave, in the saved precision.
    """
    path = Path(path)
    info = read_info(path)
    check_weights(info, path)
    weights = path / WEIGHTS_NAME
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        if isinstance(config, MessiConfig):
            config = config.to_base()
    except (OSError, ValueError) as e:
        raise MessiError(f"{path}/config.json is missing or corrupt ({e}); re-run `messi compress`") from e
    check_config(info, config, path)
    from accelerate import init_empty_weights

    # parameters on the meta device: the full (n, d) table is never allocated, only what the
    # file holds is (buffers such as position ids are built for real)
    with init_empty_weights(include_buffers=False):
        model = _model_class(info["model_class"])(config)
        layer = empty_layer(info)
    tied = info.get("tied_output", False)
    if tied and getattr(model, "get_output_embeddings", lambda: None)() is None:
        raise MessiError(f"{path}/messi.json says the output head is tied, but {info['model_class']} has no "
                         "output head; the folder is damaged, re-run `messi compress`")
    _install(model, layer, tied)
    model.to(getattr(torch, info.get("dtype", "float32")))  # the saved precision: identical outputs
    try:
        _load_weights(model, weights)
    except (SafetensorError, RuntimeError, OSError, KeyError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise MessiError(f"{weights} is corrupt or does not match messi.json ({first}); "
                         "re-run `messi compress`") from e
    model.messi_config = info
    model.eval()
    return model.to(device) if device is not None else model


def is_messi_folder(path) -> bool:
    """Whether ``path`` is a folder written by ``save`` (it holds messi.json)."""
    return path is not None and (Path(path) / CONFIG_NAME).is_file()


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
        return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError):
        return None
