"""``compress(model, config, calibration)``: replace a Hugging Face model's input embedding, its
blocks' Linear layers, or both, by SVD or MESSI layers, as a ``CompressionConfig`` says.

The steps: find the targets (``families`` / ``targets``), take the calibration's row weights,
output metric and input moments (``calibration``), fit one table (``fit``) or spend one budget
over every matrix (``layerwise`` + ``allocate``), and record what was done on the model
(``model.messi_config``: what ``persist.save`` writes to messi.json). Nothing here reads or
writes a file.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from .calibration import CalibrationData
from .clustering import check_sample_weight
from .config import CompressionConfig
from .errors import MessiError
from .factorize import check_rank, rank_for_ratio
from .fit import exact_row_ids, fit_embedding, fit_embedding_to_size
from .layerwise import compress_layers
from .storage import CoordinateStorage
from .targets import distinct_state, input_embedding
from .version import __version__

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(CompressionConfig)}


def compress(model: nn.Module, config: CompressionConfig | None = None, calibration: CalibrationData | None = None,
             *, verbose: bool = False, **fields) -> nn.Module:
    """Compress ``model`` in place as ``config`` says, guided by ``calibration``.

    Parameters
    ----------
    model : a Hugging Face ``PreTrainedModel`` (sentence encoders, masked LMs, sequence
        classifiers, causal LMs: ``families.py``).
    config : the recipe (``CompressionConfig``); None: the defaults. Keyword ``fields`` of
        CompressionConfig (``method="svd", ratio=0.6``) build or override it.
    calibration : ``CalibrationData`` (``calibration.prepare`` makes it from text): row
        weights (n,) of the embedding, its output metric G (d, d) (the fit then minimises
        sum_r w_r e_r G e_r^T; the bases are no longer orthonormal), calibration batches
        (Linear targets: input moments, so fits minimise each layer's output error, and each
        matrix's measured sensitivity for the global allocation) or given input moments.
        Rows of weight 0 are still represented (projected on their closest subspace).
    verbose : progress bars.

    Returns the same model; ``model.messi_config`` holds what ``save`` writes to messi.json
    (its "config" entry is ``config.to_dict()``). A tied output projection (LM heads) is
    switched to the factored table too.
    """
    config = _resolve_config(config, fields)
    calibration = _check_calibration(calibration)
    if any(p.is_meta for p in model.parameters()):
        raise MessiError("the model's weights are on the meta device (not loaded); load the model with its "
                         "weights before compressing it")
    settings = {**config.clustering_settings(), "verbose": verbose}
    target, method, k = config.target, config.method, config.k
    params_before, bytes_before = _count_params(model), model_bytes(model)
    emb = input_embedding(model) if target != "linear" else None
    weights = None if emb is None else check_sample_weight(calibration.row_weights, emb.num_embeddings)
    metric = None if emb is None else _check_metric(calibration.embedding_metric, emb.embedding_dim)
    start = time.perf_counter()
    if target == "embedding" and config.size is not None:
        info = {"target": "embedding", "ratio": config.ratio,
                **fit_embedding_to_size(model, emb, config, weights, settings, metric)}
    elif target == "embedding":
        n, d = emb.weight.shape
        exact = exact_row_ids(weights, config.exact_rows, n)
        rank = (rank_for_ratio(n, d, k, config.ratio, config.exact_rows) if config.rank is None else
                check_rank(config.rank, d))
        info = {"target": "embedding", "ratio": config.ratio,
                **fit_embedding(model, emb, method, k, rank, weights, settings, metric, config.bits, config.group_size,
                                exact)}
    else:
        info = compress_layers(model, target, method, config.ratio, k, config.allocation, calibration.activations,
                               calibration.inputs, emb, weights, settings, config.activation_aware, metric,
                               (config.bits, config.group_size))
    info.update({
        "seed": config.seed, "n_init": config.n_init, "max_iter": config.max_iter, "tol": config.tol,
        "init_size": config.init_size,
        "loss": config.loss if method == "messi" else "l2", "fit_seconds": time.perf_counter() - start,
        "model_params_before": params_before, "model_params_after": _count_params(model),
        "model_bytes_before": bytes_before, "model_bytes_after": model_bytes(model),
        "model_class": type(model).__name__, "dtype": _dtype_name(_model_dtype(model)),
        "messi_version": __version__, "config": config.to_dict(),
    })
    info["model_compression"] = 1 - info["model_params_after"] / params_before
    if weights is not None or calibration.activations is not None or metric is not None:
        info["calibration"] = calibration.record or {"sources": ["row_weights / activations given to compress()"]}
    if hasattr(model, "messi_load_report"):  # which class was loaded from the source, and why
        info["source_load"] = model.messi_load_report
    model.messi_config = info
    model.compression_config = config
    return model


def _resolve_config(config, fields: dict) -> CompressionConfig:
    """``config`` with ``fields`` applied, or MessiError naming an argument that is no field."""
    unknown = sorted(set(fields) - _CONFIG_FIELDS)
    if unknown:
        hint = (" (calibration tensors go in calibration=messi.CalibrationData(...))"
                if set(unknown) & {"row_weights", "embedding_metric", "inputs", "activations"} else "")
        raise MessiError(f"compress() got an unknown argument {unknown[0]!r}{hint}; "
                         f"the config's fields are {', '.join(sorted(_CONFIG_FIELDS))}")
    if config is not None and not isinstance(config, CompressionConfig):
        raise MessiError(f"config must be a messi.CompressionConfig, got {type(config).__name__}")
    config = config or CompressionConfig()
    return config.replace(**fields) if fields else config


def _check_calibration(calibration) -> CalibrationData:
    if calibration is None:
        return CalibrationData()
    if not isinstance(calibration, CalibrationData):
        raise MessiError(f"calibration must be a messi.CalibrationData (calibration.prepare makes one), "
                         f"got {type(calibration).__name__}")
    return calibration


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


def model_bytes(model: nn.Module) -> int:
    """Bytes of what a save writes: every distinct tensor of the state dict (a tied table once)."""
    return sum(t.numel() * t.element_size() for t in distinct_state(model)[0].values())


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype most of the model's parameters have (what ``load`` restores)."""
    sizes: dict[torch.dtype, int] = {}
    # quantized layers keep fp16 bases whatever the model computes in: they do not count
    skip = {id(p) for m in model.modules() if isinstance(m, CoordinateStorage) and m.bits is not None
            for p in m.parameters()}
    for p in model.parameters():
        if p.is_floating_point() and id(p) not in skip:
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
    return max(sizes, key=sizes.get) if sizes else torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
