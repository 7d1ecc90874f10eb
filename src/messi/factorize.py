"""Low-rank factorisations of a matrix A (n x d), and the sizes that hit a compression target.

SVD: one rank-j subspace for all rows. MESSI: k rank-j subspaces, each row in its closest one.
Both return coordinates (n, j) and orthonormal bases (k, j, d) with k = 1 for SVD, so that
``A[r] ~ coords[r] @ bases[labels[r]]``.
"""

from __future__ import annotations

import bisect
import numbers
from dataclasses import dataclass

import torch

from .clustering import ProjectiveClustering, as_matrix, check_sample_weight, coordinates
from .errors import MessiError
from .subspaces import gram_matrix, row_blocks, split_spectrum


@dataclass
class Factors:
    """A factorised matrix.

    coords : (n, j) coordinates of every row in its subspace.
    bases : (k, j, d) orthonormal rows spanning each subspace (k = 1 for SVD).
    labels : (n,) int64 subspace of every row.
    """

    coords: torch.Tensor
    bases: torch.Tensor
    labels: torch.Tensor

    def rows(self, block: slice) -> torch.Tensor:
        """The approximated rows (m, d) of ``block``, a slice of the row indices."""
        coords, labels = self.coords[block], self.labels[block]
        out = coords.new_empty(coords.shape[0], self.bases.shape[2])
        for i in range(self.bases.shape[0]):
            rows = labels == i
            if bool(rows.any()):
                out[rows] = coords[rows] @ self.bases[i]
        return out

    def reconstruct(self) -> torch.Tensor:
        """The approximated matrix (n, d)."""
        return self.rows(slice(None))


def parameter_count(n: int, d: int, k: int, rank: int, exact_rows: int = 0) -> int:
    """Stored numbers of a k-subspace factorisation: j coordinates for each of the rows not kept
    exact, k*j*d basis entries, and d for each of ``exact_rows`` rows stored exactly."""
    return (n - exact_rows) * rank + k * rank * d + exact_rows * d


def compression(n: int, d: int, k: int, rank: int, exact_rows: int = 0) -> float:
    """1 - new/old parameters for an (n, d) matrix stored as k subspaces of dimension ``rank``
    (and ``exact_rows`` exact rows)."""
    return 1.0 - parameter_count(n, d, k, rank, exact_rows) / (n * d)


def check_ratio(ratio: float) -> float:
    """``ratio`` as a float, or MessiError unless 0 < ratio < 1 (True and False are 1 and 0)."""
    if not isinstance(ratio, numbers.Real) or not 0.0 < float(ratio) < 1.0:
        raise MessiError(f"ratio must be strictly between 0 and 1 (e.g. 0.4 for -40%), got {ratio!r}")
    return float(ratio)


def rank_for_ratio(n: int, d: int, k: int, ratio: float, exact_rows: int = 0) -> int:
    """Largest j whose compression of an (n, d) matrix with k subspaces (and ``exact_rows``
    exact rows) is at least ``ratio``."""
    check_ratio(ratio)
    if k < 1:
        raise MessiError(f"k must be >= 1, got {k}")
    # compression falls as j grows: bisect for the first j in 1..d-1 that misses the ratio, with
    # the very function that reports the compression (no float disagreement at the boundary)
    j = bisect.bisect_left(range(1, d), True, key=lambda j: compression(n, d, k, j, exact_rows) < ratio)
    if j < 1:
        best = compression(n, d, k, 1, exact_rows)
        exact = f" and {exact_rows} exact rows" if exact_rows else ""
        raise MessiError(
            f"no rank >= 1 reaches {ratio:.0%} compression with k={k}{exact} on a {n} x {d} matrix "
            f"(rank 1 gives {best:.1%}); lower the ratio or k{' or the exact rows' if exact_rows else ''}"
        )
    return j


def svd_factorize(A, rank: int, sample_weight=None) -> Factors:
    """Truncated SVD of ``A`` (n, d): bases = V_j^T (1, j, d), coords = A V_j (n, j).

    With ``sample_weight`` (n,) the subspace minimises sum_r w_r |a_r - P a_r|^2 exactly: the
    top-j right singular vectors of diag(sqrt(w)) A; every row, zero-weight ones included, is
    projected on it.
    """
    X = as_matrix(A)
    check_rank(rank, X.shape[1])
    w = check_sample_weight(sample_weight, X.shape[0], X.device)
    # the top-j eigenvectors of the (d, d) Gram matrix, summed in row blocks in float64: the
    # same subspace as an SVD of the scaled rows, without an (n, d) copy or workspace
    basis = split_spectrum(gram_matrix(X, w), rank)[0].to(X.dtype)
    labels = torch.zeros(X.shape[0], dtype=torch.long, device=X.device)
    return Factors(X @ basis.T, basis[None], labels)


def messi_factorize(A, k: int, rank: int, sample_weight=None, **settings) -> Factors:
    """MESSI: (k, j)-projective clustering of the rows of ``A`` (n, d), weighted by
    ``sample_weight`` (n,) if given, then every row's coordinates (n, j) in its cluster's
    basis (k, j, d). ``settings`` are ``ProjectiveClustering``'s (seed, n_init, max_iter, tol,
    loss, verbose, ...), with its defaults."""
    X = as_matrix(A)
    check_rank(rank, X.shape[1])
    pc = ProjectiveClustering(n_clusters=k, rank=rank, **settings).fit(X, sample_weight=sample_weight)
    return Factors(coordinates(X, pc.bases_, pc.labels_), pc.bases_, pc.labels_)


def relative_error(A: torch.Tensor, approx, sample_weight=None, moments=None) -> float:
    """|A - approx|^2 / |A|^2 in float64, summed over the rows of A (n, d).

    ``approx``: the approximation (n, d), or a function of a slice of row indices that returns
    those rows (``Factors.rows``, a factored layer's rows): then no (n, d) table is ever built.
    The sums run over row blocks, so the float64 temporaries are a block's.
    ``sample_weight`` (n,): both sums weigh the rows. ``moments`` (d, d), positive
    semi-definite: every row's squared norm is measured as e M e^T instead of |e|^2 (a Linear
    layer's output error on inputs of those second moments, or an embedding row's effect on the
    model's output, ``calibration.output_sensitivity``).
    """
    rows_of = approx if callable(approx) else (lambda block: approx[block])
    C = None if moments is None else moments.detach().double().to(A.device)
    err = ref = 0.0
    for block in row_blocks(A.shape[0], A.shape[1]):
        a = A[block].detach().double()
        e = a - rows_of(block).detach().double()
        e_sq, a_sq = ((e.square().sum(1), a.square().sum(1)) if C is None else
                      (((e @ C) * e).sum(1), ((a @ C) * a).sum(1)))
        if sample_weight is not None:
            w = sample_weight[block].detach().double().to(e.device)
            e_sq, a_sq = e_sq * w, a_sq * w
        err, ref = err + float(e_sq.sum()), ref + float(a_sq.sum())
    return err / ref if ref else float("nan")


def check_rank(rank, d: int) -> int:
    """``rank`` as an int, or MessiError unless it is an integer in [1, d - 1]."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 1 <= rank < d:
        raise MessiError(f"rank must be an integer in [1, {d - 1}] for hidden size {d}, got {rank!r}")
    return int(rank)


def whitening(moments: torch.Tensor, damping: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """S = C^{1/2} and S^{-1} (d, d) for input second moments C = E[x x^T] (d, d), float64.

    For a weight W (out, d): |(W - W') x|^2 averaged over the inputs equals |(W - W') S|_F^2, so
    fitting the rows of W S and mapping the bases back by S^{-1} minimises the output error on
    those inputs. ``damping`` (times the mean eigenvalue) is added to C so that directions the
    inputs never take keep a finite, bounded weight instead of an unbounded S^{-1}.
    """
    C = moments.detach().double()
    evals, Q = torch.linalg.eigh((C + C.T) / 2)
    evals = evals.clamp_min(0) + damping * evals.clamp_min(0).mean().clamp_min(1e-30)
    root = evals.sqrt()
    return (Q * root) @ Q.T, (Q / root) @ Q.T


def whiten_rows(X: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """``X @ S`` (n, d) in ``X``'s dtype, each row block multiplied in float64: one copy of the
    table, no float64 one."""
    out = torch.empty_like(X)
    for block in row_blocks(X.shape[0], X.shape[1]):
        out[block] = (X[block].double() @ S).to(X.dtype)
    return out


def factorize(A, method: str, k: int, rank: int, sample_weight=None, moments=None, **settings) -> Factors:
    """SVD (``method="svd"``, k = 1) or MESSI factors of ``A`` (n, d).

    ``moments`` (d, d), the second moments of the inputs that multiply the rows of ``A`` (a
    Linear layer's W), makes the fit minimise the output error instead of the weight error: the
    rows of A S are factorised and the bases mapped back (``whitening``); the bases are then no
    longer orthonormal. ``settings`` go to ``ProjectiveClustering``.
    """
    X = as_matrix(A)
    if moments is None:
        return svd_factorize(X, rank, sample_weight) if method == "svd" else \
            messi_factorize(X, k, rank, sample_weight, **settings)
    S, S_inv = whitening(moments.to(X.device))  # moments are collected on the CPU; the matrix may be elsewhere
    white = factorize(whiten_rows(X, S), method, k, rank, sample_weight, **settings)
    bases = (white.bases.double() @ S_inv).to(X.dtype)
    return Factors(white.coords.to(X.dtype), bases, white.labels)
