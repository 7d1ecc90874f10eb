"""Fitting one target: the input embedding or one Linear layer, by SVD or MESSI, and the factored
layer that holds the result, swapped into the model.

``_best_fit`` is where MESSI meets SVD at the same size: with the global allocation each matrix
keeps the best of SVD and MESSI (k' in 2..k, rows or columns), judged by its output error.
"""

from __future__ import annotations

import torch
from torch import nn

from .allocate import messi_params, same_size_rank, svd_params
from .config import DEFAULT_GROUP_4BIT, ORIENTATIONS
from .errors import MessiError
from .factorize import compression, factorize, parameter_count, relative_error, whiten_rows, whitening
from .families import Family
from .layers import FactorizedEmbedding, ProjectiveEmbedding, _LowRankEmbedding
from .linear import FactorizedLinear, ProjectiveLinear
from .quantize import rank_for_bytes, refit_bases
from .subspaces import gram_matrix
from .targets import install_embedding, install_linear, is_tied


def _embedding_layer(factors, emb: nn.Embedding, method: str) -> _LowRankEmbedding:
    """The factored embedding holding ``factors``, with ``emb``'s padding row, dtype, device and
    its family's scale of looked-up rows (Gemma's sqrt(d))."""
    A = emb.weight.detach()
    cls = FactorizedEmbedding if method == "svd" else ProjectiveEmbedding
    layer = cls.from_factors(factors, emb.padding_idx, _padding_row(A, emb.padding_idx)).to(device=A.device, dtype=A.dtype)
    layer.embed_scale = Family().embedding_scale(emb)
    return layer


def fit_embedding(model, emb, method, k, rank, weights, settings, metric=None, bits=None, group_size=None,
                  exact=None) -> dict:
    """Fit and install the embedding at (method, k, rank), its coordinates stored in ``bits``
    (None: floats), the rows ``exact`` (m,) (None: none) kept exact and left out of the fit;
    its messi.json fields."""
    factors = factorize(emb.weight.detach(), method, k, rank, without_rows(weights, exact), metric, **settings)
    return install_embedding_factors(model, emb, factors, method, k, rank, weights, metric, bits, group_size, exact)


def exact_row_ids(weights: torch.Tensor | None, m: int, n: int) -> torch.Tensor | None:
    """The ``m`` rows (m,) of the largest calibration weights (the most used tokens), ties broken
    by row order; None when m is 0. MessiError when nothing ranks the rows."""
    if not m:
        return None
    if weights is None:
        raise MessiError("exact rows are the most used tokens of the calibration text: give --calibration "
                         "(or row_weights in CalibrationData), or leave --exact-rows at 0")
    if m >= n:
        raise MessiError(f"--exact-rows {m} keeps the whole table of {n} rows; give fewer than {n}")
    if bool((weights == weights[0]).all()):
        raise MessiError("every row has the same calibration weight (--weight-power 0?): nothing says which "
                         "rows are used most; give a positive --weight-power or leave --exact-rows at 0")
    return torch.sort(torch.argsort(weights, descending=True, stable=True)[:m]).values


def without_rows(weights: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    """``weights`` (n,) with ``rows`` set to 0 (rows stored exactly: the fit spends nothing on them)."""
    if rows is None:
        return weights
    out = weights.clone()
    out[rows.to(out.device)] = 0
    return out


def fit_embedding_to_size(model, emb, config, weights, settings, metric=None) -> dict:
    """Fit the embedding within ``config.size`` of its bytes: for each storage (``config.bits``,
    else 8 and 4 bits) the largest rank that fits, fitted once; the one with the lowest error the
    fit minimises (output-side if ``metric``, weighted if ``weights``) is installed. The
    candidates are recorded under "size_candidates"."""
    A = emb.weight.detach()
    n, d = A.shape
    padding = 0 if emb.padding_idx is None else d * A.element_size()  # the padding row is kept exact
    budget = int(config.size * A.numel() * A.element_size()) - padding
    group = {8: config.group_size, 4: config.group_size or DEFAULT_GROUP_4BIT}
    choices = [(bits, group[bits]) for bits in ((config.bits,) if config.bits else (8, 4))]
    candidates = []
    for bits, g in choices:
        rank = rank_for_bytes(n, d, config.k, budget, bits, g)
        if rank < 1:
            continue
        factors = factorize(A, config.method, config.k, rank, weights, metric, **settings)
        layer, storage = _stored_layer(factors, emb, config.method, bits, g, weights, metric)
        with torch.no_grad():
            err = relative_error(A, table_rows(layer), weights, metric)
        candidates.append({"bits": bits, "group_size": g, "rank": rank, "error": err, "layer": layer,
                           "storage": storage})
    if not candidates:
        raise MessiError(f"no rank fits {config.size:.2%} of the table's bytes with k={config.k}; "
                         "give a larger --size or a smaller --k")
    best = min(candidates, key=lambda c: c["error"])  # installed as fitted and quantized: no second pass
    record = _install_layer(model, emb, best["layer"], config.method, config.k, best["rank"], weights, metric,
                            best["storage"])
    record["size"] = config.size
    record["size_candidates"] = [{key: c[key] for key in ("bits", "group_size", "rank", "error")} for c in candidates]
    return record


def install_embedding_factors(model, emb, factors, method, k, rank, weights, metric=None, bits=None,
                              group_size=None, exact=None) -> dict:
    """Swap in the factored embedding holding ``factors`` (and the tied head), the rows ``exact``
    kept exact; its messi.json fields."""
    layer, storage = _stored_layer(factors, emb, method, bits, group_size, weights, metric, exact)
    return _install_layer(model, emb, layer, method, k, rank, weights, metric, storage)


def _stored_layer(factors, emb, method, bits, group_size, weights, metric, exact=None):
    """The factored embedding of ``factors``, the rows ``exact`` (m,) kept exact (None: none),
    its coordinates quantized to ``bits`` (None: kept float), and the storage's messi.json fields."""
    layer = _embedding_layer(factors, emb, method)
    if exact is not None:
        layer.keep_exact_(exact, emb.weight.detach()[exact.to(emb.weight.device)])
    if bits is None:
        return layer, {}
    return layer, _quantize_layer(layer, emb.weight.detach(), factors.labels, bits, group_size,
                                  without_rows(weights, exact), metric)


def _install_layer(model, emb, layer, method, k, rank, weights, metric, storage) -> dict:
    """Put ``layer`` in for ``emb`` (and the tied head); its messi.json fields."""
    tied = is_tied(model, emb)
    install_embedding(model, layer, tied)
    return {**_embedding_record(emb.weight.detach(), layer, method, k, rank, weights, emb.padding_idx, tied, metric),
            **storage}


def _quantize_layer(layer, A, labels, bits, group_size, weights, metric, error_of=None) -> dict:
    """Quantize ``layer``'s coordinates, then refit its bases against them (least squares per
    cluster, ``quantize.refit_bases``; ``A`` the matrix in the factors' orientation) if that
    lowers the error the fit minimised (``error_of()``; default the table's weighted / output
    error); both kept in the layer's storage (fp16 bases). Returns the storage's messi.json fields."""
    name = layer._basis_names[0]
    # judged on the whole table; the equalisation and the refit see only the rows the
    # coordinates hold (not those kept exact)
    error_of = error_of or (lambda: relative_error(A, table_rows(layer), weights, metric))
    held_A, held_labels, held_weights = _coordinate_rows_of(layer, A, labels, weights)
    _equalize_columns(layer, held_labels)
    layer.quantize_(bits, group_size)
    with torch.no_grad():
        before = error_of()
        kept = getattr(layer, name).detach().clone()
        refit = refit_bases(held_A, layer._coords(), held_labels, _cluster_count(getattr(layer, name)), held_weights)
        getattr(layer, name).copy_(refit.reshape(kept.shape).to(kept.dtype))
        after = error_of()
        if not after < before:
            getattr(layer, name).copy_(kept)
    return {"bits": bits, "group_size": group_size, "bases_refit": bool(after < before),
            "bases_dtype": "float16"}


def _coordinate_rows_of(layer, A, labels, weights):
    """``A`` (n, d), ``labels`` (n,) and ``weights`` (n,) or None at the rows ``layer``'s
    coordinates hold (``coordinate_tokens``: all of them unless rows are kept exact)."""
    tokens = layer.coordinate_tokens()
    if tokens is None:
        return A, labels, weights
    return (A[tokens.to(A.device)], labels[tokens.to(labels.device)],
            None if weights is None else weights[tokens.to(weights.device)])


def _cluster_count(basis: torch.Tensor) -> int:
    """Subspaces of a layer's basis: (k, j, d) MESSI bases, or one (j, d) SVD basis."""
    return basis.shape[0] if basis.dim() == 3 else 1


def _equalize_columns(layer, labels) -> None:
    """Rescale every cluster's coordinate columns to unit RMS and fold the scales into its
    basis (the same products): a subspace's first coordinates are far larger than its last, and
    one scale per row would otherwise round the small ones to zero. Measured on the built-in
    table's calibrated MESSI k=5 fits: lower output error at 4, 3 and 2 bits at every rank tried."""
    coords, basis = getattr(layer, layer._coord_name), getattr(layer, layer._basis_names[0])
    k = _cluster_count(basis)
    bases = basis.view(k, layer.rank, -1)
    with torch.no_grad():
        for i in range(k):
            rows = labels == i
            if rows.any():
                scale = coords[rows].double().square().mean(0).sqrt().clamp_min(1e-12).to(coords.dtype)
                coords[rows] = coords[rows] / scale
                bases[i] *= scale[:, None]


def _embedding_record(A, layer, method, k, rank, weights, padding_idx, tied, metric=None) -> dict:
    n, d = A.shape
    exact = layer.num_exact
    with torch.no_grad():
        approx = table_rows(layer)
        record = {"method": method, "k": k, "rank": rank,
                  "compression": compression(n, d, k, rank, exact),
                  "num_embeddings": n, "embedding_dim": d, "padding_idx": padding_idx,
                  "embedding_params_before": n * d, "embedding_params_after": parameter_count(n, d, k, rank, exact),
                  "embedding_bytes_before": A.numel() * A.element_size(),
                  "embedding_bytes_after": layer.storage_bytes(),
                  "label_bytes": getattr(layer, "label_bytes", 0), "rel_error": relative_error(A, approx),
                  "tied_output": tied}
        if layer.embed_scale is not None:
            record["embed_scale"] = layer.embed_scale
        if exact:
            record["exact_rows"] = exact
        if weights is not None:
            record["weighted_rel_error"] = relative_error(A, approx, weights)
        if metric is not None:  # what the fit minimised: the output-side error, rows weighted
            record["output_rel_error"] = relative_error(A, approx, weights, metric)
    return record


def _spectrum(M: torch.Tensor, moments=None, weights=None) -> torch.Tensor:
    """Squared singular values of M as the fit sees it (whitened by ``moments`` or rows
    weighted by ``weights``), descending."""
    X = M.detach()
    if moments is not None:
        X = whiten_rows(X.double() if X.shape[0] <= X.shape[1] else X, whitening(moments.to(X.device))[0])
    if X.shape[0] <= X.shape[1]:  # wide: the singular values of the rows themselves
        scaled = X.double() if weights is None else X.double() * weights.double().sqrt()[:, None]
        return torch.linalg.svdvals(scaled).square()
    # tall (a vocabulary): the eigenvalues of the (d, d) Gram matrix summed in row blocks
    return torch.linalg.eigvalsh(gram_matrix(X, weights)).flip(0).clamp_min(0)


def _best_fit(M, rank, method, k, search, orientations, moments, weights, settings):
    """Factors of M (rows x cols) at the size of its rank-``rank`` SVD: SVD for method svd;
    MESSI with k subspaces (rows) when not ``search``; else the best of SVD and MESSI with every
    k' in 2..k and orientation at the same size (never worse than SVD by its own measure).
    Returns (factors, k, rank, orientation, error), error = relative output (or weighted) error."""
    rows, cols = M.shape

    def fit(kk, j, orientation):
        if orientation == "rows":
            f = factorize(M, "svd" if kk == 1 else "messi", kk, j, weights, moments, **settings)
            approx = f.rows  # rebuilt a row block at a time by relative_error
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


def _fit_embedding_target(model, emb, rank, method, k, search, weights, settings, metric=None,
                          storage=(None, None)) -> dict:
    factors, kk, j, _, _ = _best_fit(emb.weight.detach().float(), rank, method, k, search, ("rows",), metric,
                                     weights, settings)
    return install_embedding_factors(model, emb, factors, "svd" if kk == 1 else "messi", kk, j, weights, metric,
                                     *storage)


def _fit_linear_target(model, name, lin, rank, method, k, search, moments, settings, storage=(None, None)) -> dict:
    """Fit one Linear layer at the size of its rank-``rank`` SVD and swap the factored layer in,
    its coordinates stored as ``storage`` = (bits, group_size) says; its messi.json entry."""
    W = lin.weight.detach()
    out, inp = W.shape
    dense_bytes = sum(p.numel() * p.element_size() for p in lin.parameters())
    entry = {"name": name, "in_features": inp, "out_features": out, "bias": lin.bias is not None,
             "params_before": out * inp, "bytes_before": dense_bytes}
    if rank is None:  # the allocator kept it dense
        return {**entry, "method": "dense", "k": 0, "rank": 0, "orientation": "rows",
                "params_after": out * inp, "rel_error": 0.0, "bytes_after": dense_bytes}
    # k bases of the longer side cost k times more: only the orientation that puts the longer
    # side on the coordinates is tried (both for square matrices)
    orientations = tuple(o for o in ORIENTATIONS if (out >= inp if o == "rows" else inp >= out))
    factors, kk, j, orientation, err = _best_fit(W.float(), rank, method, k, search, orientations, moments,
                                                 None, settings)
    bias = None if lin.bias is None else lin.bias.detach()
    layer = (FactorizedLinear.from_factors(factors, bias) if kk == 1 else
             ProjectiveLinear.from_factors(factors, orientation, bias))
    layer = layer.to(device=W.device, dtype=W.dtype)
    stored = {}
    if storage[0] is not None:
        stored = _quantize_layer(layer, W.T if orientation == "columns" else W, factors.labels, *storage, None, None,
                                 error_of=lambda: relative_error(W, layer.weight, None, moments))
        err = relative_error(W, layer.weight.detach(), None, moments)
    install_linear(model, name, layer)
    return {**entry, "method": "svd" if kk == 1 else "messi", "k": kk, "rank": j, "orientation": orientation,
            "params_after": messi_params(out, inp, kk, j, orientation), "rel_error": err,
            "bytes_after": layer.storage_bytes(), **stored}


def table_rows(layer: _LowRankEmbedding):
    """The rows of a factored embedding's table, a block (a slice of row indices) at a time, for
    ``relative_error``: the (n, d) table is never rebuilt whole."""
    return lambda block: layer._rows(torch.arange(layer.num_embeddings, device=layer.device)[block])


def _padding_row(A: torch.Tensor, padding_idx: int | None):
    return None if padding_idx is None else A[padding_idx]
