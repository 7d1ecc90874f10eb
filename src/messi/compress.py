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
from torch import nn

from . import __version__
from . import checks
from .errors import MessiError
from .clustering import check_sample_weight
from .allocate import (Matrix, allocate_ranks, messi_params, same_size_rank, shared_relative_rank, svd_params,
                       uniform_ranks)
from .factorize import (METHODS, check_rank, check_ratio, compression, factorize, parameter_count, rank_for_ratio,
                        relative_error, whitening)
from .linear import ORIENTATIONS, FactorizedLinear, ProjectiveLinear
from .auto import MessiConfig
from .folder import CONFIG_NAME, WEIGHTS_NAME, check_config, check_weights, embedding_info, read_info, sha256_file
from .tensorfile import load_tensors, save_aligned
from .io import atomic_dir, check_writable_target, write_json
from .layers import FactorizedEmbedding, ProjectiveEmbedding, _LowRankEmbedding
from .targets import (EMBEDDING, check_target, empty_linear, input_embedding, install_embedding, install_linear,
                      is_tied, linear_targets)
from .calibration import input_moments, model_outputs
from .models import copy_sentence_transformers_files, load_hf_model, resolve_model



ALLOCATIONS = ("global", "uniform", "shared-rank")


def compress(model: nn.Module, method: str = "messi", ratio: float = 0.4, k: int = 3,
             rank: int | None = None, seed: int = 0, n_init: int = 4, max_iter: int = 50,
             tol: float = 1e-4, loss: str = "l2", init_size: int | None = 32768, verbose: bool = False,
             row_weights=None,
             calibration: dict | None = None, target: str = "embedding", allocation: str = "global",
             activations: dict | None = None, inputs: list | None = None,
             activation_aware: bool = True, embedding_metric: torch.Tensor | None = None) -> nn.Module:
    """Replace the model's input embedding, its encoder's Linear layers, or both, by SVD or
    MESSI layers, in place.

    Parameters
    ----------
    model : a Hugging Face ``PreTrainedModel`` (BERT, DistilBERT, RoBERTa, MPNet, ...).
    method : "messi" (k subspaces) or "svd" (one subspace).
    ratio : target compression of the targeted parameters taken together, 1 - new/old, in (0, 1).
    k : number of subspaces for MESSI (ignored for SVD). With ``target`` "linear"/"all" and the
        global allocation it is the largest k tried per layer (see below).
    rank : dimension j of the subspaces (embedding target only); None picks the largest j
        reaching ``ratio``.
    seed, n_init, max_iter, tol, loss, init_size : settings of the projective clustering (loss:
        "l2", "l1" or "huber"; init_size: restarts on a sample of that many rows of a larger
        table, None for all rows; see ``ProjectiveClustering``).
    row_weights : optional tensor (n,) of non-negative weights, one per embedding row (e.g.
        ``messi.calibrate(...).weights``): the fit minimises the weighted error. Rows of weight
        0 are still represented (projected on their closest subspace).
    calibration : optional dict recorded in messi.json under "calibration" (where the weights
        and activations came from; ``Calibration.record()``).
    target : "embedding" (the input embedding), "linear" (every nn.Linear of the encoder's
        blocks) or "all" (both).
    allocation : how "linear"/"all" spend the budget: "global" (ours: per matrix the rank that
        removes the most output error per parameter, ``allocate.allocate_ranks``; with MESSI,
        then per matrix the k in 2..k and orientation that beat SVD at the same size, else SVD),
        "uniform" (every matrix the same compression, fixed k) or "shared-rank" (the MESSI lab
        code's one relative rank for all, fixed k).
    activations : optional dict, Linear layer name -> second moments (in, in) of its inputs
        (``calibration.input_moments``): the fits minimise each layer's output error on those
        inputs instead of its weight error.
    inputs : optional calibration batches (``calibration.calibration_batches``: dicts of
        input_ids / attention_mask tensors) for target "linear"/"all": the Linear layers' input
        moments are collected from them (unless ``activations`` is given), and each matrix's
        sensitivity (the model's output error per unit of its own error, measured with an SVD
        probe) weighs its damage in the global allocation.
    activation_aware : with ``inputs``, whether the Linear fits use the input moments (False:
        plain weight error, sensitivities still measured; for comparisons).
    embedding_metric : optional (d, d) positive semi-definite matrix G: the embedding fit
        minimises sum_r w_r e_r G e_r^T over the row errors e_r instead of |e_r|^2
        (``calibration.output_sensitivity``: G = E[J^T J], what the model's output feels of a
        row's error). The bases are then no longer orthonormal.

    Returns the same model; ``model.messi_config`` holds what ``save`` writes to messi.json.
    A tied output projection (masked-LM heads) is switched to the factored table too.
    """
    if method not in METHODS:
        raise MessiError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    ratio = check_ratio(ratio)
    check_target(target)
    if allocation not in ALLOCATIONS:
        raise MessiError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    k = 1 if method == "svd" else checks.integer("k", k, 1)
    settings = dict(seed=checks.seed("seed", seed), n_init=checks.integer("n_init", n_init, 1),
                    max_iter=checks.integer("max_iter", max_iter, 1), tol=tol, loss=loss, verbose=verbose,
                    init_size=None if init_size is None else checks.integer("init_size", init_size, 1))
    params_before = _count_params(model)
    emb = input_embedding(model) if target != "linear" else None
    weights = None if emb is None else check_sample_weight(row_weights, emb.num_embeddings)
    metric = None if emb is None else _check_metric(embedding_metric, emb.embedding_dim)
    start = time.perf_counter()
    if target == "embedding":
        n, d = emb.weight.shape
        rank = rank_for_ratio(n, d, k, ratio) if rank is None else check_rank(rank, d)
        info = {"target": "embedding", **_compress_embedding(model, emb, method, k, rank, weights, settings, metric),
                "ratio": ratio}
    else:
        if rank is not None:
            raise MessiError("rank is chosen per layer for target linear/all; give ratio instead")
        info = _compress_layers(model, target, method, ratio, k, allocation, activations, inputs, emb, weights,
                                settings, activation_aware, metric)
    info.update({
        "seed": settings["seed"], "n_init": settings["n_init"], "max_iter": settings["max_iter"], "tol": tol,
        "init_size": settings["init_size"],
        "loss": loss if method == "messi" else "l2", "fit_seconds": time.perf_counter() - start,
        "model_params_before": params_before, "model_params_after": _count_params(model),
        "model_class": type(model).__name__, "dtype": _dtype_name(_model_dtype(model)),
        "messi_version": __version__,
    })
    info["model_compression"] = 1 - info["model_params_after"] / params_before
    if weights is not None or activations is not None or metric is not None:
        info["calibration"] = calibration or {"sources": ["row_weights / activations given to compress()"]}
    if hasattr(model, "messi_load_report"):  # which class was loaded from the source, and why
        info["source_load"] = model.messi_load_report
    model.messi_config = info
    return model


def _check_metric(metric, d: int):
    """``metric`` as a float64 (d, d) tensor, or MessiError naming the expected shape."""
    if metric is None:
        return None
    if not isinstance(metric, torch.Tensor) or metric.shape != (d, d) or not bool(torch.isfinite(metric).all()):
        shape = tuple(metric.shape) if isinstance(metric, torch.Tensor) else type(metric).__name__
        raise MessiError(f"embedding_metric must be a finite ({d}, {d}) tensor for this embedding, got {shape}; "
                         "compute it with messi.output_sensitivity on this model")
    return metric.detach().double()


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _embedding_layer(factors, emb: nn.Embedding, method: str) -> _LowRankEmbedding:
    """The factored embedding holding ``factors``, with ``emb``'s padding row, dtype and device."""
    A = emb.weight.detach()
    cls = FactorizedEmbedding if method == "svd" else ProjectiveEmbedding
    return cls.from_factors(factors, emb.padding_idx, _padding_row(A, emb.padding_idx)).to(device=A.device, dtype=A.dtype)


def _compress_embedding(model, emb, method, k, rank, weights, settings, metric=None) -> dict:
    """Fit and install the embedding at (method, k, rank); its messi.json fields."""
    factors = factorize(emb.weight.detach(), method, k, rank, weights, metric, **settings)
    return _install_embedding_factors(model, emb, factors, method, k, rank, weights, metric)


def _install_embedding_factors(model, emb, factors, method, k, rank, weights, metric=None) -> dict:
    """Swap in the factored embedding holding ``factors`` (and the tied head); its messi.json fields."""
    A = emb.weight.detach()
    layer = _embedding_layer(factors, emb, method)
    tied = is_tied(model, emb)
    install_embedding(model, layer, tied)
    return _embedding_record(A, layer, method, k, rank, weights, emb.padding_idx, tied, metric)


def _embedding_record(A, layer, method, k, rank, weights, padding_idx, tied, metric=None) -> dict:
    n, d = A.shape
    with torch.no_grad():
        approx = layer.weight
        record = {"method": method, "k": k, "rank": rank,
                  "compression": compression(n, d, k, rank),
                  "num_embeddings": n, "embedding_dim": d, "padding_idx": padding_idx,
                  "embedding_params_before": n * d, "embedding_params_after": parameter_count(n, d, k, rank),
                  "label_bytes": getattr(layer, "label_bytes", 0), "rel_error": relative_error(A, approx),
                  "tied_output": tied}
        if weights is not None:
            record["weighted_rel_error"] = relative_error(A, approx, weights)
        if metric is not None:  # what the fit minimised: the output-side error, rows weighted
            record["output_rel_error"] = relative_error(A, approx, weights, metric)
    return record


def _spectrum(M: torch.Tensor, moments=None, weights=None) -> torch.Tensor:
    """Squared singular values of M as the fit sees it (whitened by ``moments`` or rows
    weighted by ``weights``), descending."""
    X = M.detach().double()
    if moments is not None:
        X = X @ whitening(moments.to(X.device))[0]
    if weights is not None:
        X = X * weights.double().sqrt()[:, None]
    return torch.linalg.svdvals(X).square()


def _best_fit(M, rank, method, k, search, orientations, moments, weights, settings):
    """Factors of M (rows x cols) at the size of its rank-``rank`` SVD: SVD for method svd;
    MESSI with k subspaces (rows) when not ``search``; else the best of SVD and MESSI with every
    k' in 2..k and orientation at the same size (never worse than SVD by its own measure).
    Returns (factors, k, rank, orientation, error), error = relative output (or weighted) error."""
    rows, cols = M.shape

    def fit(kk, j, orientation):
        if orientation == "rows":
            f = factorize(M, "svd" if kk == 1 else "messi", kk, j, weights, moments, **settings)
            approx = f.reconstruct()
        else:  # columns: the input features' vectors; weighted by their input energy
            col_w = None if moments is None else moments.diagonal().clamp_min(0).float()
            f = factorize(M.T, "messi", kk, j, col_w, **settings)
            approx = f.reconstruct().T
        err = relative_error(M, approx, weights, moments)
        return f, kk, j, orientation, err

    if method == "svd":
        return fit(1, rank, "rows")
    if not search:
        return fit(k, rank, "rows")
    best = fit(1, rank, "rows")
    size = svd_params(rows, cols, rank)
    for kk in range(2, k + 1):
        for orientation in orientations:
            j = same_size_rank(rows, cols, kk, size, orientation)
            if j >= 1:
                candidate = fit(kk, j, orientation)
                if candidate[4] < best[4]:
                    best = candidate
    return best


def _compress_layers(model, target, method, ratio, k, allocation, activations, inputs, emb, weights,
                     settings, activation_aware=True, metric=None) -> dict:
    """Target "linear" / "all": allocate the budget, fit every matrix, install the layers."""
    from tqdm.auto import tqdm

    linears = linear_targets(model)
    if not activation_aware:
        activations = None
    elif inputs is not None and activations is None:
        activations = input_moments(model, inputs, list(linears))
    missing = [name for name in linears if activations is not None and name not in activations]
    if missing:
        raise MessiError(f"activations has no input moments for {missing[0]} (and {len(missing) - 1} more); "
                         "collect them with calibration.input_moments on this model")
    moments = {name: None if activations is None else activations[name] for name in linears}
    matrices = [Matrix(name, lin.out_features, lin.in_features, _spectrum(lin.weight, moments[name]))
                for name, lin in linears.items()]
    if emb is not None:
        matrices.append(Matrix(EMBEDDING, *emb.weight.shape, _spectrum(emb.weight, metric, weights)))
    if inputs is not None and allocation == "global":
        modules, reference = {**linears, EMBEDDING: emb}, model_outputs(model, inputs)
        for m in tqdm(matrices, desc="measuring sensitivities", disable=not settings["verbose"]):
            m.sensitivity = _sensitivity(model, inputs, reference, m, modules[m.name], moments.get(m.name, metric),
                                         weights)
    fixed_k = 1 if method == "svd" else k
    ranks = (allocate_ranks(matrices, ratio) if allocation == "global" else
             uniform_ranks(matrices, ratio, fixed_k) if allocation == "uniform" else
             shared_relative_rank(matrices, ratio, fixed_k))
    search = allocation == "global"
    verbose, settings = settings["verbose"], {**settings, "verbose": False}  # one bar for all layers
    entries, info, current, fitted = [], {}, {}, set()
    # the embedding first, then the layers in model order, each fitted to the inputs that the
    # layers before it, already compressed, give it (its moments measured again just before)
    for m in tqdm(sorted(matrices, key=lambda m: m.name != EMBEDDING), desc="fitting layers", disable=not verbose):
        if m.name == EMBEDDING:
            if ranks[m.name] is not None:
                info["embedding"] = _fit_embedding_target(model, emb, ranks[m.name], method, k, search, weights,
                                                          settings, metric)
            continue
        if inputs is not None and moments[m.name] is not None and ranks[m.name] is not None and m.name not in current:
            current.update(_moments_now(model, inputs, m.name, moments, fitted))
        fitted.add(m.name)
        entries.append(_fit_linear_target(model, m.name, linears[m.name], ranks[m.name], method, k, search,
                                          current.get(m.name, moments[m.name]), settings))
    targeted_before = sum(m.dense_params for m in matrices)
    targeted_after = sum(e["params_after"] for e in entries) + (
        info["embedding"]["embedding_params_after"] if "embedding" in info else
        emb.weight.numel() if emb is not None else 0)
    info.update({"target": target, "method": method, "k": k, "ratio": ratio, "allocation": allocation,
                 "activation_aware": activations is not None,
                 "sensitivities": {m.name: m.sensitivity for m in matrices} if inputs is not None and allocation == "global" else None,
                 "compression": 1 - targeted_after / targeted_before,
                 "targeted_params_before": targeted_before, "targeted_params_after": targeted_after,
                 "linear_layers": entries})
    return info


def _moments_now(model, inputs, name, original, fitted) -> dict:
    """Input moments, in the model as compressed so far, of ``name`` and of every layer not yet
    fitted that reads the same input (equal moments in the original model, e.g. q, k and v):
    compressing one of them does not change the others' input, so one pass serves them all."""
    group = [other for other, C in original.items()
             if other not in fitted and C is not None and C.shape == original[name].shape and torch.equal(C, original[name])]
    return input_moments(model, inputs, group)


#: A matrix's sensitivity is probed at the smallest SVD rank that keeps its error under this.
PROBE_ERROR = 0.1


def _sensitivity(model, inputs, reference, matrix: Matrix, module: nn.Module, moments, weights) -> float:
    """The model's relative output error (``calibration.model_outputs`` on ``inputs``: a task
    head's logits, else the last hidden states; against their ``reference``) per unit of the
    matrix's own relative error, with the matrix replaced by an SVD probe for the moment."""
    j = next((j for j in range(1, matrix.max_rank + 1) if matrix.svd_error(j) <= PROBE_ERROR), matrix.max_rank)
    W = module.weight
    row_weights = weights if isinstance(module, nn.Embedding) else None
    approx = factorize(W.detach().float(), "svd", 1, j, row_weights, moments).reconstruct()
    own = relative_error(W, approx, row_weights, moments)
    saved = W.data
    try:
        W.data = approx.to(W.dtype)
        changed = model_outputs(model, inputs)
    finally:
        W.data = saved
    effect = float((changed - reference).double().square().sum() / reference.double().square().sum())
    return effect / max(own, 1e-12)


def _fit_embedding_target(model, emb, rank, method, k, search, weights, settings, metric=None) -> dict:
    factors, kk, j, _, _ = _best_fit(emb.weight.detach().float(), rank, method, k, search, ("rows",), metric,
                                     weights, settings)
    return _install_embedding_factors(model, emb, factors, "svd" if kk == 1 else "messi", kk, j, weights, metric)


def _fit_linear_target(model, name, lin, rank, method, k, search, moments, settings) -> dict:
    W = lin.weight.detach()
    out, inp = W.shape
    entry = {"name": name, "in_features": inp, "out_features": out, "bias": lin.bias is not None,
             "params_before": out * inp}
    if rank is None:  # the allocator kept it dense
        return {**entry, "method": "dense", "k": 0, "rank": 0, "orientation": "rows",
                "params_after": out * inp, "rel_error": 0.0}
    # k bases of the longer side cost k times more: only the orientation that puts the longer
    # side on the coordinates is tried (both for square matrices)
    orientations = tuple(o for o in ORIENTATIONS if (out >= inp if o == "rows" else inp >= out))
    factors, kk, j, orientation, err = _best_fit(W.float(), rank, method, k, search, orientations, moments,
                                                 None, settings)
    bias = None if lin.bias is None else lin.bias.detach()
    layer = (FactorizedLinear.from_factors(factors, bias) if kk == 1 else
             ProjectiveLinear.from_factors(factors, orientation, bias))
    install_linear(model, name, layer.to(device=W.device, dtype=W.dtype))
    return {**entry, "method": "svd" if kk == 1 else "messi", "k": kk, "rank": j, "orientation": orientation,
            "params_after": messi_params(out, inp, kk, j, orientation), "rel_error": err}


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
    save_aligned(tensors, file, metadata={"format": "pt", "aliases": json.dumps(aliases)})


def _load_weights(model: nn.Module, file: Path) -> None:
    """Load what ``_save_weights`` wrote, strictly: every name of the model must be there and
    no other (so no parameter is left on the meta device).

    The file's tensors become the model's (``assign``: parameters built on the meta device are
    never materialised first), mapped from the file where it is aligned (``tensorfile``), and
    names saved as aliases of one tensor are tied again.
    """
    state, metadata = load_tensors(file)
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
    """The factored embedding that messi.json's ``info`` (or its embedding entry) describes,
    its weights still zero (to be filled by loading or by receiving them from another process)."""
    n, d, j, pad = info["num_embeddings"], info["embedding_dim"], info["rank"], info.get("padding_idx")
    if info["method"] == "svd":
        return FactorizedEmbedding(n, d, j, pad)
    return ProjectiveEmbedding(n, d, j, info["k"], pad)


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
        _load_weights(model, weights)
    except (SafetensorError, RuntimeError, OSError, KeyError, json.JSONDecodeError) as e:
        # torch puts the reason on the lines after "Error(s) in loading state_dict for X:": keep them, on one line
        reason = " ".join(str(e).split())[:300]
        raise MessiError(f"{weights} is corrupt or does not match messi.json ({reason}); "
                         "re-run `messi compress`") from e
    model.messi_config = info
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
