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

METHODS = ("svd", "messi")


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

    def reconstruct(self) -> torch.Tensor:
        """The approximated matrix (n, d)."""
        out = self.coords.new_empty(self.coords.shape[0], self.bases.shape[2])
        for i in range(self.bases.shape[0]):
            rows = self.labels == i
            out[rows] = self.coords[rows] @ self.bases[i]
        return out


def parameter_count(n: int, d: int, k: int, rank: int) -> int:
    """Stored numbers of a k-subspace factorisation: n*j coordinates + k*j*d basis entries."""
    return n * rank + k * rank * d


def compression(n: int, d: int, k: int, rank: int) -> float:
    """1 - new/old parameters for an (n, d) matrix stored as k subspaces of dimension ``rank``."""
    return 1.0 - parameter_count(n, d, k, rank) / (n * d)


def check_ratio(ratio: float) -> float:
    """``ratio`` as a float, or MessiError unless 0 < ratio < 1 (True and False are 1 and 0)."""
    if not isinstance(ratio, numbers.Real) or not 0.0 < float(ratio) < 1.0:
        raise MessiError(f"ratio must be strictly between 0 and 1 (e.g. 0.4 for -40%), got {ratio!r}")
    return float(ratio)


def rank_for_ratio(n: int, d: int, k: int, ratio: float) -> int:
    """Largest j whose compression of an (n, d) matrix with k subspaces is at least ``ratio``."""
    check_ratio(ratio)
    if k < 1:
        raise MessiError(f"k must be >= 1, got {k}")
    # compression falls as j grows: bisect for the first j in 1..d-1 that misses the ratio, with
    # the very function that reports the compression (no float disagreement at the boundary)
    j = bisect.bisect_left(range(1, d), True, key=lambda j: compression(n, d, k, j) < ratio)
    if j < 1:
        best = compression(n, d, k, 1)
        raise MessiError(
            f"no rank >= 1 reaches {ratio:.0%} compression with k={k} on a {n} x {d} matrix "
            f"(rank 1 gives {best:.1%}); lower the ratio or k"
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
    scaled = X if w is None else X * w.sqrt().to(X.dtype)[:, None]
    _, _, Vh = torch.linalg.svd(scaled, full_matrices=False)
    basis = Vh[:rank].contiguous()
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


def relative_error(A: torch.Tensor, approx: torch.Tensor, sample_weight=None) -> float:
    """|A - approx|^2 / |A|^2 in float64; with ``sample_weight`` (n,) both sums weigh the rows."""
    A64 = A.detach().double()
    err, ref = (A64 - approx.detach().double()).square().sum(1), A64.square().sum(1)
    if sample_weight is not None:
        w = sample_weight.detach().double().to(err.device)
        err, ref = err * w, ref * w
    return float(err.sum() / ref.sum())


def check_rank(rank, d: int) -> int:
    """``rank`` as an int, or MessiError unless it is an integer in [1, d - 1]."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 1 <= rank < d:
        raise MessiError(f"rank must be an integer in [1, {d - 1}] for hidden size {d}, got {rank!r}")
    return int(rank)
