"""(k, j)-projective clustering: k linear subspaces of dimension j that fit the rows of a matrix.

The cost of a row ``a`` is its squared distance to the closest subspace. For a subspace with an
orthonormal basis ``B`` (j x d), ``dist(a)^2 = |a|^2 - |B a|^2``, so the closest subspace is the
one that keeps the most energy and every assignment is one matrix product. The fit is the
EM / Lloyd loop of the MESSI paper (assign rows, refit each subspace from its rows' Gram matrix),
with a D^2-weighted seeding, restarts, a convergence test and re-seeding of starved clusters.
The step is made cheap without changing its answer: Gram matrices follow the rows that move,
and when j > d / 2 distances are norms in the (d - j)-dimensional complements.

Torch tensors throughout: it runs on whatever device the input lives on, in float32 or float64;
on CPU the big products and eigen-solves go through numpy's BLAS (``_product``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from . import checks
from .errors import MessiError

# Rows per block in the assignment product, so that memory stays bounded on big vocabularies.
_BLOCK_ELEMENTS = 1 << 24


@dataclass
class _Run:
    """One EM run: the bases, the labels they were fitted to, and the cost after each refit."""

    bases: torch.Tensor
    labels: torch.Tensor
    history: list[float] = field(default_factory=list)

    @property
    def cost(self) -> float:
        return self.history[-1]


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
    if A.dtype == torch.float32 and A.numel() and float(A.abs().max()) > 1e15:
        A = A.double()  # Gram matrices of such rows would overflow float32
    if A.dtype not in (torch.float32, torch.float64):
        A = A.to(torch.float32)
    if not bool(torch.isfinite(A).all()):
        bad = int((~torch.isfinite(A)).any(dim=1).sum())
        raise MessiError(
            f"the {name} has NaN or inf values in {bad} rows; clean or re-export the weights first"
        )
    return A.detach()


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

    One product per cluster, never a per-row copy of a basis.
    """
    out = X.new_empty(X.shape[0], bases.shape[1])
    for i in range(bases.shape[0]):
        rows = labels == i
        out[rows] = X[rows] @ bases[i].T
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


def _gram(rows: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
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
    """Gram matrices (k, d, d), float64, of the (weighted) rows of every cluster."""
    return torch.stack([_gram(X[labels == i], None if weights is None else weights[labels == i])
                        for i in range(k)])


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
            grams[i] -= _gram(rows[out], None if w is None else w[out])
        if bool(into.any()):
            grams[i] += _gram(rows[into], None if w is None else w[into])


LOSSES = ("l2", "l1", "huber")


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
                worst = _gram(X[top], None if weights is None else weights[top])
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


class ProjectiveClustering:
    """(k, j)-projective clustering of the rows of a matrix, scikit-learn style.

    Finds ``n_clusters`` linear subspaces of dimension ``rank`` minimising the sum over rows of
    the squared distance to the closest subspace.

    Parameters
    ----------
    n_clusters : int
        k, the number of subspaces (>= 1). k = 1 is the truncated SVD.
    rank : int
        j, the dimension of every subspace, 1 <= j < d.
    n_init : int
        Independent seedings; the run with the lowest cost is kept.
    max_iter : int
        Most EM steps (assign + refit) per run.
    tol : float
        A run stops when no label changes or the cost falls by less than ``tol`` (relative).
    init : {"kmeans", "random"}
        First labels: spherical k-means (k-means++ seeded) of the row directions, or the
        reference code's random equal split.
    seed : int
        Seeds every random draw: the same seed gives the same result.
    loss : {"l2", "l1", "huber"}
        Cost of a row's distance: squared (the paper's default), absolute, or Huber. The robust
        losses refit by iteratively reweighted least squares (IRLS) and damp outlier rows.
    delta : float or None
        Huber's threshold; None takes the median row distance of each run's first fit.
    init_size : int or None
        On matrices with more rows than this, the restarts are seeded and run on a random sample
        of ``init_size`` rows (weights kept) and only the best of them is refined on all rows, so
        that restarts cost a fraction of a full fit on large vocabularies (scikit-learn's
        ``MiniBatchKMeans`` has the same setting). None: restarts on all rows.
    verbose : bool
        Show a progress bar over the EM steps.

    Attributes
    ----------
    bases_ : torch.Tensor of shape (k, j, d)
        Orthonormal rows spanning each subspace, in the input's dtype and device.
    labels_ : torch.Tensor of shape (n,), int64
        Cluster of every row; ``bases_`` are the optimal subspaces for these labels.
    cost_ : float
        Sum over rows of the loss of the distance to their cluster's subspace (for "l2":
        the sum of squared distances).
    n_iter_ : int
        EM steps of the kept run.
    cost_history_ : list of float
        Cost after every refit of the kept run (non-increasing up to rounding); with a sampled
        start, of the refinement on all rows.

    Examples
    --------
    >>> pc = ProjectiveClustering(n_clusters=3, rank=2, seed=0).fit(torch.randn(100, 5))
    >>> pc.bases_.shape
    torch.Size([3, 2, 5])
    """

    def __init__(self, n_clusters: int = 3, rank: int = 2, n_init: int = 4, max_iter: int = 50,
                 tol: float = 1e-4, init: str = "kmeans", seed: int = 0, loss: str = "l2",
                 delta: float | None = None, init_size: int | None = 32768, verbose: bool = False):
        self.n_clusters = n_clusters
        self.rank = rank
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.seed = seed
        self.loss = loss
        self.delta = delta
        self.init_size = init_size
        self.verbose = verbose

    def _check(self, X: torch.Tensor) -> None:
        n, d = X.shape
        k = checks.integer("k (n_clusters)", self.n_clusters, 1)
        checks.integer("rank", self.rank, 1, d - 1)
        if n < k:
            raise MessiError(f"{n} rows cannot fill {k} clusters; use a smaller k")
        checks.integer("n_init", self.n_init, 1)
        checks.integer("max_iter", self.max_iter, 1)
        checks.real("tol", self.tol)
        checks.seed("seed", self.seed)
        if self.init not in ("kmeans", "random"):
            raise MessiError(f"init must be 'kmeans' or 'random', got {self.init!r}")
        if self.loss not in LOSSES:
            raise MessiError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.delta is not None:
            checks.real("delta", self.delta, 0, low_open=True)
        if self.init_size is not None:
            checks.integer("init_size", self.init_size, 1)

    def fit(self, A, sample_weight=None) -> "ProjectiveClustering":
        """Fit the subspaces to the rows of ``A`` (n, d): a torch tensor or a numpy array.

        ``sample_weight`` (n,), optional, non-negative: the fit minimises
        ``sum_r w_r * loss(dist(a_r, S_label(r)))``. A row's weight never changes which
        subspace is closest to it, so zero-weight rows are still assigned (and represented).
        """
        X = as_matrix(A)
        self._check(X)
        w = check_sample_weight(sample_weight, X.shape[0], X.device)
        k, j = int(self.n_clusters), int(self.rank)
        sq_norms = X.square().sum(1)
        gen = torch.Generator().manual_seed(int(self.seed))
        sample = self._start_sample(X.shape[0], w, gen, X.device)
        Xs, sq_s, ws = (X, sq_norms, w) if sample is None else (X[sample], sq_norms[sample], None if w is None else w[sample])
        # equal weights seed exactly like no weights: the same seed gives the same start
        seed_w = None if ws is None or bool((ws == ws[0]).all()) else ws
        best: _Run | None = None
        steps = (self.n_init + (sample is not None)) * self.max_iter
        with tqdm(total=steps, desc=f"projective clustering k={k} j={j}", disable=not self.verbose,
                  unit="step") as bar, cores_to_blas(X.device):
            for _ in range(self.n_init):
                run = self._lloyd(Xs, sq_s, _seed(Xs, k, j, self.init, gen, seed_w), bar, ws)
                if best is None or run.cost < best.cost:
                    best = run
                bar.set_postfix(best_cost=f"{best.cost:.5g}")
            if sample is not None:  # the best start, refined on every row
                best = self._lloyd(X, sq_norms, assign(X, best.bases, sq_norms)[0], bar, w)
                bar.set_postfix(best_cost=f"{best.cost:.5g}")
        self.bases_ = best.bases.to(X.dtype)
        self.labels_ = best.labels
        self.cost_ = best.cost
        self.cost_history_ = best.history
        self.n_iter_ = len(best.history)
        return self

    def _start_sample(self, n: int, w: torch.Tensor | None, gen: torch.Generator, device) -> torch.Tensor | None:
        """Rows (init_size,) the restarts run on, drawn uniformly, or None for all rows (a
        small matrix, ``init_size`` None, or a sample that would hold no weight)."""
        if self.init_size is None or n <= self.init_size:
            return None
        sample = torch.randperm(n, generator=gen)[: int(self.init_size)].to(device)
        if w is not None and float(w[sample].sum()) <= 0:
            return None
        return sample

    def _lloyd(self, X, sq_norms, labels, bar, sample_weight=None) -> _Run:
        """One EM run from ``labels`` until the labels or the cost stop moving.

        With the squared loss the rows' weights never change, so the clusters' Gram matrices
        are updated from the rows that moved instead of recomputed; when j > d / 2 rows are
        assigned by their distances in the complements (fewer flops). Both give the plain
        algorithm's answer up to rounding (tests/test_clustering.py).
        """
        k, j, loss = int(self.n_clusters), int(self.rank), self.loss
        by_complement = X.shape[1] - j < j
        resid = sq_norms  # distances to a zero subspace: starved clusters take the longest rows
        run = _Run(None, labels)
        stable, weights, delta = False, sample_weight, self.delta
        grams = cluster_grams(X, labels, k, weights) if loss == "l2" else None
        for step in range(self.max_iter):
            run.bases, cost, complements = _refit(X, run.labels, resid, k, j, weights, grams)
            bar.update(1)
            labels, resid = assign(X, run.bases, sq_norms, complements if by_complement else None)
            if loss != "l2":  # robust: score the new assignment, reweigh for the next refit
                delta = float(resid.sqrt().median()) if delta is None else delta
                cost = robust_cost(resid, loss, delta, sample_weight)
                weights = row_weights(resid, loss, delta)
                if sample_weight is not None:
                    weights = weights * sample_weight
            else:
                _move_rows(grams, X, run.labels, labels, weights)
            run.history.append(cost)
            stable = torch.equal(labels, run.labels)
            run.labels = labels
            h = run.history
            # robust losses reweigh rows even when no label moves: only the cost can say "done"
            if (stable and loss == "l2") or (len(h) > 1 and h[-2] - h[-1] <= self.tol * h[-2]):
                bar.update(self.max_iter - step - 1)
                break
        if not stable and loss == "l2":  # make the bases optimal for the final labels
            run.bases, cost, _ = _refit(X, run.labels, resid, k, j, sample_weight, grams)
            run.history.append(cost)
        return run

    def _fitted(self, A) -> torch.Tensor:
        """``A`` as a matrix on the bases' device, checked against the fitted width."""
        if not hasattr(self, "bases_"):
            raise MessiError("this ProjectiveClustering is not fitted yet; call fit(A) first")
        X = as_matrix(A).to(self.bases_.device)
        if X.shape[1] != self.bases_.shape[2]:
            raise MessiError(f"the rows have {X.shape[1]} columns but the subspaces were fitted to "
                             f"{self.bases_.shape[2]}; pass rows of the fitted width")
        return X

    def predict(self, A) -> torch.Tensor:
        """Closest fitted subspace of every row of ``A`` (m, d): int64 labels (m,)."""
        X = self._fitted(A)
        return assign(X, self.bases_.to(X.dtype))[0]

    def transform(self, A, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Coordinates (m, j) of every row of ``A`` in its subspace (its closest, or ``labels``)."""
        X = self._fitted(A)
        if labels is None:
            labels = self.predict(X)
        return coordinates(X, self.bases_.to(X.dtype), labels)
