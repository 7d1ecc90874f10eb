"""(k, j)-projective clustering: k linear subspaces of dimension j that fit the rows of a matrix.

The cost of a row ``a`` is its squared distance to the closest subspace. The fit is the
EM / Lloyd loop of the MESSI paper (assign rows, refit each subspace from its rows' Gram matrix),
with a D^2-weighted seeding, restarts, a convergence test and re-seeding of starved clusters.
The step is made cheap without changing its answer: Gram matrices follow the rows that move,
and when j > d / 2 distances are norms in the (d - j)-dimensional complements.

Torch tensors throughout: it runs on whatever device the input lives on, in float32 or float64.
This file is the loop; each step is a small function in ``subspaces.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from . import checks
from .config import LOSSES
from .errors import MessiError
from .subspaces import (
    _move_rows,
    _refit,
    _seed,
    as_matrix,
    assign,
    check_sample_weight,
    cluster_grams,
    coordinates,
    cores_to_blas,
    robust_cost,
    row_weights,
)

__all__ = ["ProjectiveClustering", "as_matrix", "check_sample_weight", "coordinates"]


@dataclass
class _Run:
    """One EM run: the bases, the labels they were fitted to, and the cost after each refit."""

    bases: torch.Tensor
    labels: torch.Tensor
    history: list[float] = field(default_factory=list)

    @property
    def cost(self) -> float:
        return self.history[-1]


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
