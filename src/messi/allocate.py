"""How a parameter budget is spent across the matrices of a model: one (k, j, orientation) each.

Pure arithmetic on shapes and spectra; it never sees a model. A matrix M (rows x cols) kept
dense costs rows*cols numbers; its rank-j SVD costs j*(rows+cols) and leaves the relative error
1 - sum(sigma_1..j^2) / sum(sigma^2), read off the spectrum of the matrix the fit sees (a Linear
layer's W whitened by its inputs, an embedding weighted by token use), so that the error is the
share of the layer's output (or of the used rows) that is lost.

``allocate_ranks`` (ours): minimise the sum of the matrices' damage (relative error times the
matrix's measured sensitivity: its share of the model's output error) under the budget,
greedily by error removed per parameter spent. Each rank step of a matrix removes sigma_{j+1}^2,
which never grows with j, so the greedy order is optimal for the relaxed problem; going dense
is the last step of a matrix. ``uniform_ranks`` (every matrix compressed by the same ratio) and
``shared_relative_rank`` (the MESSI lab code's rule: j = r * min(rows, cols) with one r for all,
fixed k) are the baselines.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

from .errors import MessiError
from .factorize import rank_for_ratio


@dataclass
class Matrix:
    """What the allocator knows of one target matrix.

    name : the target's name (e.g. "encoder.layer.0.attention.self.query").
    rows, cols : the shape of the matrix that is factorised (a Linear layer's W: out, in).
    energy : (min(rows, cols),) squared singular values, descending, of the matrix as the fit
        sees it (whitened or row-weighted).
    sensitivity : how much of the model's output error one unit of this matrix's relative error
        causes (measured on calibration inputs; 1 when unknown): the damage is
        sensitivity * relative error.
    """

    name: str
    rows: int
    cols: int
    energy: torch.Tensor
    sensitivity: float = 1.0

    @property
    def dense_params(self) -> int:
        return self.rows * self.cols

    @property
    def max_rank(self) -> int:
        """Largest rank whose SVD is smaller than the dense matrix (and below full rank)."""
        return min(min(self.rows, self.cols) - 1, (self.dense_params - 1) // (self.rows + self.cols))

    def svd_error(self, rank: int) -> float:
        """Relative error of the rank-``rank`` SVD (0 when kept dense: ``rank`` None)."""
        if rank is None:
            return 0.0
        e = self.energy.double()
        total = float(e.sum())
        return 0.0 if total == 0 else max(0.0, 1.0 - float(e[:rank].sum()) / total)


def svd_params(rows: int, cols: int, rank: int | None) -> int:
    """Numbers stored by a rank-j SVD of a rows x cols matrix (dense if ``rank`` is None)."""
    return rows * cols if rank is None else rank * (rows + cols)


def messi_params(rows: int, cols: int, k: int, rank: int, orientation: str = "rows") -> int:
    """Numbers stored when the rows (or columns) of a rows x cols matrix lie in k subspaces of
    dimension ``rank``: coordinates of every row (column) plus k bases."""
    m, p = (rows, cols) if orientation == "rows" else (cols, rows)
    return m * rank + k * rank * p


def same_size_rank(rows: int, cols: int, k: int, params: int, orientation: str = "rows") -> int:
    """Largest j whose k-subspace factorisation stores at most ``params`` numbers (0 if none)."""
    m, p = (rows, cols) if orientation == "rows" else (cols, rows)
    return min(params // (m + k * p), min(rows, cols) - 1)


def _budget(matrices: list[Matrix], ratio: float) -> int:
    return math.floor((1.0 - ratio) * sum(m.dense_params for m in matrices))


def _too_small(matrices, budget, smallest) -> MessiError:
    total = sum(m.dense_params for m in matrices)
    return MessiError(f"a budget of {budget:,} numbers ({1 - budget / total:.1%} compression) is below the "
                      f"smallest factorisation ({smallest:,} numbers, {1 - smallest / total:.1%}); lower the ratio")


def allocate_ranks(matrices: list[Matrix], ratio: float) -> dict[str, int | None]:
    """Rank j of every matrix (None: kept dense) so that the total stored numbers are at most
    (1 - ratio) times the dense total and the sum of damages (sensitivity times relative SVD
    error) is as small as the greedy exchange finds. Every matrix gets rank >= 1."""
    budget = _budget(matrices, ratio)
    ranks = {m.name: 1 for m in matrices}
    spent = sum(svd_params(m.rows, m.cols, 1) for m in matrices)
    if spent > budget:
        raise _too_small(matrices, budget, spent)
    by_name = {m.name: m for m in matrices}

    def next_step(m: Matrix):
        j = ranks[m.name]
        total = float(m.energy.double().sum()) or 1.0
        if j < m.max_rank:  # one more rank: removes sigma_{j+1}^2
            return m.sensitivity * float(m.energy[j]) / total, m.rows + m.cols
        cost = m.dense_params - svd_params(m.rows, m.cols, j)
        return m.sensitivity * m.svd_error(j), cost  # go dense: removes what is left

    heap = []
    for m in matrices:
        gain, cost = next_step(m)
        heapq.heappush(heap, (-gain / cost, m.name))
    while heap:
        _, name = heapq.heappop(heap)
        m = by_name[name]
        gain, cost = next_step(m)
        if spent + cost > budget:
            continue  # this matrix's next step no longer fits; smaller steps elsewhere may
        spent += cost
        ranks[name] = ranks[name] + 1 if ranks[name] < m.max_rank else None
        if ranks[name] is not None:
            gain, cost = next_step(m)
            heapq.heappush(heap, (-gain / cost, name))
    return ranks


def uniform_ranks(matrices: list[Matrix], ratio: float, k: int = 1) -> dict[str, int]:
    """Every matrix compressed by the same ``ratio`` (its rows in k subspaces; k = 1: SVD)."""
    return {m.name: rank_for_ratio(m.rows, m.cols, k, ratio) for m in matrices}


def shared_relative_rank(matrices: list[Matrix], ratio: float, k: int = 1) -> dict[str, int]:
    """The lab code's rule: j = max(1, floor(r * min(rows, cols))) with one r for all matrices,
    the largest r (by bisection) whose k-subspace factorisations (rows) fit the budget."""
    budget = _budget(matrices, ratio)

    def ranks_at(r: float) -> dict[str, int]:
        return {m.name: max(1, min(min(m.rows, m.cols) - 1, math.floor(r * min(m.rows, m.cols)))) for m in matrices}

    def cost(r: float) -> int:
        return sum(messi_params(m.rows, m.cols, k, ranks_at(r)[m.name]) for m in matrices)

    if cost(0.0) > budget:
        raise _too_small(matrices, budget, cost(0.0))
    low, high = 0.0, 1.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cost(mid) <= budget else (low, mid)
    return ranks_at(low)

