"""The steps of (k, j)-projective clustering, each a small function on torch tensors: input
checks, the assignment of rows to their closest subspace, the coordinates, Gram matrices that
follow the rows that move, the refit of every subspace (robust losses by reweighting), and the
seeding. ``clustering.py`` runs them as the EM loop.

For a subspace with an orthonormal basis ``B`` (j x d), ``dist(a)^2 = |a|^2 - |B a|^2``, so the
closest subspace keeps the most energy and every assignment is one matrix product; when
j > d / 2 distances are norms in the (d - j)-dimensional complements. On CPU the big products
and eigen-solves go through numpy's BLAS (``_product``).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .errors import MessiError

# Rows per block in the assignment product, so that memory stays bounded on big vocabularies.
_BLOCK_ELEMENTS = 1 << 24


def as_matrix(A, name: str = "matrix") -> torch.Tensor:
    """Return ``A`` as a 2-D floating torch tensor, or raise MessiError naming what is wrong.

    Accepts a torch tensor or anything numpy can read. Half precision is promoted to float32.
    """
    if not isinstance(A, torch.Tensor):
        arr = np.asarray(A)
        if arr.dtype.kind not in "biufc":
            raise MessiError(f"the {name} must hold numbers, got {arr.dtype} values")
        A = torch.as_tensor(arr)
    if A.is_complex():  # never cast silently to the real part
        raise MessiError(f"the {name} is complex; projective clustering needs real numbers")
    if A.ndim != 2:
        raise MessiError(f"the {name} must be 2-D (rows x features), got shape {tuple(A.shape)}")
    if not A.is_floating_point():
        A = A.to(torch.float32)
    if A.dtype not in (torch.float32, torch.float64):
        A = A.to(torch.float32)
    # checked in row blocks: a whole-matrix abs() or isfinite() would double a large table's memory
    bad, largest = 0, 0.0
    for rows in row_blocks(A.shape[0], A.shape[1]):
        part = A[rows]
        finite = torch.isfinite(part)
        bad += int((~finite).any(dim=1).sum())
        if part.numel():
            largest = max(largest, float(torch.where(finite, part, 0).abs().max()))
    if bad:
        raise MessiError(
            f"the {name} has NaN or inf values in {bad} rows; clean or re-export the weights first"
        )
    if A.dtype == torch.float32 and largest > 1e15:
        A = A.double()  # Gram matrices of such rows would overflow float32
    return A.detach()


def row_blocks(n: int, width: int, elements: int = _BLOCK_ELEMENTS):
    """Slices that cut ``n`` rows of ``width`` columns into blocks of about ``elements`` numbers:
    what every pass over a large table walks, so that no temporary is larger than a block."""
    step = max(1, elements // max(width, 1))
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def check_sample_weight(sample_weight, n: int, device=None) -> torch.Tensor | None:
    """``sample_weight`` as a float64 tensor (n,) of finite non-negative numbers with a positive
    sum, or None; MessiError naming the problem otherwise."""
    if sample_weight is None:
        return None
    try:
        w = sample_weight if isinstance(sample_weight, torch.Tensor) else torch.as_tensor(np.asarray(sample_weight))
    except (TypeError, ValueError) as e:
        raise MessiError(f"sample_weight must be a 1-D array of numbers, got {type(sample_weight).__name__}") from e
    if w.ndim != 1 or w.shape[0] != n:
        raise MessiError(f"sample_weight must have shape ({n},), one weight per row, got {tuple(w.shape)}")
    if w.is_complex() or not (w.is_floating_point() or w.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
        raise MessiError(f"sample_weight must hold real numbers, got dtype {w.dtype}")
    w = w.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise MessiError("sample_weight must be finite and >= 0 (zero keeps a row out of the fit, never out of the model)")
    if float(w.sum()) <= 0:
        raise MessiError("sample_weight sums to 0: at least one row must have a positive weight")
    return w.to(device) if device is not None else w


def _product(X: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``X @ M`` for X (n, d) and M (d, m) of the same dtype.

    On CPU the product goes through numpy's BLAS (OpenBLAS): torch's CPU wheel calls MKL, which
    takes a slow path on AMD processors (30,522 x 384 by 384 x 486 in float32 on the 2-core
    development machine: 60 ms through numpy, 111 ms through torch).
    """
    if X.device.type != "cpu":
        return X @ M
    return torch.from_numpy(np.matmul(X.numpy(), M.numpy()))


def _norms_per_basis(X: torch.Tensor, stacked: torch.Tensor, k: int) -> torch.Tensor:
    """``|B_i a|^2`` (n, k) of the rows of ``X`` (n, d) for k bases stacked as columns (d, k m)."""
    coords = _product(X, stacked)
    if X.device.type != "cpu":
        return coords.square_().reshape(X.shape[0], k, -1).sum(-1)
    # einsum squares and sums 5x faster than torch does on the one thread it has in a fit
    c = coords.numpy().reshape(X.shape[0], k, -1)
    return torch.from_numpy(np.einsum("nkm,nkm->nk", c, c))


def squared_norms_in(X: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """``|B_i a|^2`` of every row ``a`` of ``X`` (n, d) in every basis ``B_i`` of ``bases`` (k, m, d).

    Returns an (n, k) tensor. One product against the stacked bases, in row blocks so that no
    temporary is larger than a block.
    """
    k, m, d = bases.shape
    stacked = bases.reshape(k * m, d).T.to(X.dtype).contiguous()
    block = max(1, _BLOCK_ELEMENTS // max(k * m, 1))
    return torch.cat([_norms_per_basis(X[s : s + block], stacked, k) for s in range(0, X.shape[0], block)])


def assign(X: torch.Tensor, bases: torch.Tensor, sq_norms: torch.Tensor | None = None,
           complements: torch.Tensor | None = None):
    """Closest subspace of every row.

    ``complements`` (k, d - j, d), optional: orthonormal bases of the subspaces' orthogonal
    complements. Given them, a row's distance is its norm in the complement, one product of
    width k (d - j) instead of k j: fewer flops when j > d / 2, and no cancellation.
    Returns ``labels`` (n,) int64 and ``residuals`` (n,), the squared distance of each row to
    its subspace (clamped at 0 against rounding).
    """
    if complements is not None:
        residuals, labels = squared_norms_in(X, complements).min(dim=1)
        return labels, residuals
    if sq_norms is None:
        sq_norms = X.square().sum(1)
    energy, labels = squared_norms_in(X, bases).max(dim=1)
    return labels, (sq_norms - energy).clamp_(min=0)


def coordinates(X: torch.Tensor, bases: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Coordinates (n, j) of every row of ``X`` (n, d) in the basis (k, j, d) its label picks.

    One product per cluster and row block, never a per-row copy of a basis nor a copy of a
    whole cluster's rows.
    """
    out = X.new_empty(X.shape[0], bases.shape[1])
    for block in row_blocks(X.shape[0], X.shape[1]):
        part, which = X[block], labels[block]
        for i in range(bases.shape[0]):
            rows = which == i
            if bool(rows.any()):
                out[block][rows] = part[rows] @ bases[i].T
    return out


@contextmanager
def cores_to_blas(device: torch.device):
    """While it is open, on CPU, numpy's BLAS owns the cores (torch's thread count) and torch
    runs on one thread.

    The EM loop alternates big BLAS products with small torch operations; torch's OpenMP workers
    keep spinning after each operation and starve the BLAS threads (on the 2-core machine an
    eigh of a 384 x 384 matrix takes 9 ms alone and 22-32 ms between torch operations).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


def _eigenvectors(gram: torch.Tensor) -> torch.Tensor:
    """Eigenvectors (columns, ascending eigenvalues) of a symmetric matrix; on CPU through numpy's
    LAPACK, in the same thread pool as the products (see ``cores_to_blas``)."""
    if gram.device.type != "cpu":
        return torch.linalg.eigh(gram)[1]
    return torch.from_numpy(np.linalg.eigh(gram.numpy())[1])


def split_spectrum(gram: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` subspace of a Gram matrix (d, d) and its orthogonal complement.

    Returns orthonormal rows: the leading eigenvectors (rank, d), largest eigenvalue first, and
    the others (d - rank, d).
    """
    vectors = _eigenvectors(gram)
    return vectors[:, -rank:].flip(-1).T.contiguous(), vectors[:, :-rank].T.contiguous()


def _subspace_cost(gram: torch.Tensor, basis: torch.Tensor) -> float:
    """Sum of squared distances of the rows behind ``gram`` to the span of ``basis``."""
    kept = (basis @ gram * basis).sum()
    # a cluster that fits exactly (m <= j rows) gives trace - kept ~ -1e-14: a distance is >= 0
    return max(float(torch.trace(gram) - kept), 0.0)


def gram_matrix(rows: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix (d, d), float64, of ``rows`` (m, d), each scaled by the square root of its
    weight (m,) when given.

    Products in float64, in row blocks: the product of two float32 numbers is exact there, so
    Gram matrices updated row by row (``_move_rows``) stay equal to recomputed ones up to the
    rounding of the sums.
    """
    d = rows.shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64, device=rows.device)
    block = max(1, _BLOCK_ELEMENTS // (4 * d))
    for s in range(0, rows.shape[0], block):
        part = rows[s : s + block].double()
        if weights is not None:
            part = part * weights[s : s + block].double().sqrt()[:, None]
        gram += _product(part.T, part)
    return gram


def cluster_grams(X: torch.Tensor, labels: torch.Tensor, k: int,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrices (k, d, d), float64, of the (weighted) rows of every cluster, summed over
    row blocks (no copy of a whole cluster's rows)."""
    grams = torch.zeros(k, X.shape[1], X.shape[1], dtype=torch.float64, device=X.device)
    for block in row_blocks(X.shape[0], X.shape[1]):
        part, which = X[block], labels[block]
        w = None if weights is None else weights[block]
        for i in range(k):
            rows = which == i
            if bool(rows.any()):
                grams[i] += gram_matrix(part[rows], None if w is None else w[rows])
    return grams


def _move_rows(grams: torch.Tensor, X: torch.Tensor, old: torch.Tensor, new: torch.Tensor,
               weights: torch.Tensor | None = None) -> None:
    """Update the clusters' Gram matrices (k, d, d) in place for rows that went from label
    ``old`` to ``new``: late EM steps move a few rows, so this costs a few rows' products
    instead of the whole matrix's."""
    moved = (old != new).nonzero().squeeze(1)
    if moved.numel() == 0:
        return
    rows, w = X[moved], None if weights is None else weights[moved]
    for i in range(grams.shape[0]):
        out, into = old[moved] == i, new[moved] == i
        if bool(out.any()):
            grams[i] -= gram_matrix(rows[out], None if w is None else w[out])
        if bool(into.any()):
            grams[i] += gram_matrix(rows[into], None if w is None else w[into])




def row_weights(residuals: torch.Tensor, loss: str, delta: float) -> torch.Tensor | None:
    """IRLS weights (n,) that turn a refit into one step on a robust loss of the distance.

    l2: None (plain least squares). l1: 1/dist. huber: 1 within ``delta``, delta/dist beyond.
    """
    if loss == "l2":
        return None
    dist = residuals.sqrt().clamp_(min=1e-12)
    return 1.0 / dist if loss == "l1" else (delta / dist).clamp_(max=1.0)


def robust_cost(residuals: torch.Tensor, loss: str, delta: float,
                sample_weight: torch.Tensor | None = None) -> float:
    """Sum over rows of the (weighted) loss of the distance (``residuals`` are squared distances)."""
    dist = residuals.double().sqrt()
    if loss == "l2":
        per_row = residuals.double()
    elif loss == "l1":
        per_row = dist
    else:
        per_row = torch.where(dist <= delta, 0.5 * dist.square(), delta * (dist - 0.5 * delta))
    if sample_weight is not None:
        per_row = per_row * sample_weight.double()
    return float(per_row.sum())


def _refit(X: torch.Tensor, labels: torch.Tensor, residuals: torch.Tensor, k: int, j: int,
           weights: torch.Tensor | None = None, grams: torch.Tensor | None = None):
    """New basis per cluster from its rows; clusters with fewer than j weighted rows are re-seeded.

    ``weights`` (n,) weigh the rows (sample weights times IRLS weights for robust losses): the
    basis of a cluster is the top-j eigenvectors of its weighted Gram matrix. ``grams`` (k, d, d)
    are those Gram matrices when the caller keeps them up to date (computed here otherwise).
    A starved cluster (fewer than j rows of positive weight) takes the subspace of the rows that
    are worst served now (largest weighted residuals); the next assignment then lets them move.
    Returns (bases (k, j, d) in float64, exact squared-distance cost of ``labels`` under those
    bases, weighted if ``weights`` are given, and the bases' orthogonal complements
    (k, d - j, d) in float64).
    """
    if grams is None:
        grams = cluster_grams(X, labels, k, weights)
    bases, complements, cost = [], [], 0.0
    live = labels if weights is None else labels[weights > 0]
    counts = torch.bincount(live, minlength=k)
    worst = None
    for i in range(k):
        gram = grams[i]
        if int(counts[i]) >= j:
            basis, complement = split_spectrum(gram, j)
        else:
            if worst is None:
                m = min(X.shape[0], max(4 * j, X.shape[0] // (4 * k)))
                scores = residuals if weights is None else residuals * weights
                top = torch.topk(scores, m).indices
                worst = gram_matrix(X[top], None if weights is None else weights[top])
            basis, complement = split_spectrum(worst + gram, j)
        bases.append(basis)
        complements.append(complement)
        cost += _subspace_cost(gram, basis)
    return torch.stack(bases), cost, torch.stack(complements)


def _kmeans_plus_plus(D: torch.Tensor, k: int, gen: torch.Generator,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """k-means++ seeds among unit rows ``D`` (n, d): each next seed drawn with probability
    proportional to its weight times its cosine distance to the nearest seed so far (the first
    in proportion to its weight). Returns centres (k, d)."""
    n = D.shape[0]
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.double().cpu()
    first = int(torch.multinomial(w, 1, generator=gen)) if weights is not None else int(torch.randint(n, (1,), generator=gen))
    centres = [D[first]]
    dist = (1 - D @ centres[0]).clamp_(min=0)
    for _ in range(1, k):
        idx = int(torch.multinomial(dist.double().cpu() * w + 1e-12, 1, generator=gen))
        centres.append(D[idx])
        dist = torch.minimum(dist, (1 - D @ D[idx]).clamp_(min=0))
    return torch.stack(centres)


def _spherical_kmeans(X: torch.Tensor, k: int, gen: torch.Generator, n_iter: int = 20,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """Labels (n,) of spherical k-means on the directions of the rows of ``X`` (n, d).

    Subspaces through the origin are unions of directions, so rows that point the same way are
    a cheap and, on real embeddings, good first guess of who shares a subspace. ``weights``
    (n,) weigh the seeding draws and the centres.
    """
    D = torch.nn.functional.normalize(X, dim=1)
    centres = _kmeans_plus_plus(D, k, gen, weights)
    Dw = D if weights is None else D * weights.to(D.dtype)[:, None]
    labels = (D @ centres.T).argmax(1)
    for _ in range(n_iter):
        sums = torch.zeros_like(centres).index_add_(0, labels, Dw)
        empty = sums.norm(dim=1) == 0
        sums[empty] = centres[empty]
        centres = torch.nn.functional.normalize(sums, dim=1)
        new = (D @ centres.T).argmax(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def _seed(X: torch.Tensor, k: int, j: int, init: str, gen: torch.Generator,
          weights: torch.Tensor | None = None) -> torch.Tensor:
    """Initial labels (n,).

    ``"kmeans"``: spherical k-means with k-means++ seeding on the row directions (weighted).
    ``"random"``: the reference code's start, a random equal split of the rows.
    """
    if init == "kmeans":
        return _spherical_kmeans(X, k, gen, weights=weights)
    perm = torch.randperm(X.shape[0], generator=gen).to(X.device)
    labels = torch.empty(X.shape[0], dtype=torch.long, device=X.device)
    labels[perm] = torch.arange(X.shape[0], device=X.device) % k
    return labels
