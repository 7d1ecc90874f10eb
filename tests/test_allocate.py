"""The allocator: meets the budget, spends it where the measured damage per parameter is largest,
and the baselines follow their rules. Pure arithmetic: no model."""

import itertools
import math

import pytest
import torch
from hypothesis import given, strategies as st

from messi import MessiError
from messi.allocate import (Matrix, allocate_ranks, messi_params, same_size_rank, shared_relative_rank,
                            svd_params, uniform_ranks)


def _matrix(name, rows, cols, decay, sensitivity=1.0):
    energy = torch.tensor([decay ** i for i in range(min(rows, cols))], dtype=torch.float64)
    return Matrix(name, rows, cols, energy, sensitivity)


def _cost(matrices, ranks):
    return sum(svd_params(m.rows, m.cols, ranks[m.name]) for m in matrices)


def _damage(matrices, ranks):
    return sum(m.sensitivity * m.svd_error(ranks[m.name]) for m in matrices)


@given(shapes=st.lists(st.tuples(st.integers(4, 40), st.integers(4, 40), st.floats(0.3, 0.99),
                                 st.floats(0.1, 10)), min_size=1, max_size=5),
       ratio=st.floats(0.05, 0.7))
def test_the_budget_is_met_and_no_further_step_fits(shapes, ratio):
    matrices = [_matrix(f"m{i}", r, c, d, s) for i, (r, c, d, s) in enumerate(shapes)]
    total = sum(m.dense_params for m in matrices)
    budget = math.floor((1 - ratio) * total)
    try:
        ranks = allocate_ranks(matrices, ratio)
    except MessiError:
        assert sum(svd_params(m.rows, m.cols, 1) for m in matrices) > budget  # only when rank 1 is too big
        return
    spent = _cost(matrices, ranks)
    assert spent <= budget and 1 - spent / total >= ratio - 1e-12
    for m in matrices:
        j = ranks[m.name]
        assert j is None or 1 <= j <= m.max_rank
        if j is not None:  # the next step of every matrix would overshoot: nothing left on the table
            step = m.rows + m.cols if j < m.max_rank else m.dense_params - svd_params(m.rows, m.cols, j)
            assert spent + step > budget


def test_greedy_matches_brute_force_on_small_problems():
    matrices = [_matrix("a", 8, 6, 0.5, 1.0), _matrix("b", 7, 7, 0.8, 3.0), _matrix("c", 10, 5, 0.9, 0.5)]
    for ratio in (0.3, 0.5, 0.7):
        ranks = allocate_ranks(matrices, ratio)
        budget = math.floor((1 - ratio) * sum(m.dense_params for m in matrices))
        options = [list(range(1, m.max_rank + 1)) + [None] for m in matrices]
        best = min(_damage(matrices, dict(zip("abc", combo))) for combo in itertools.product(*options)
                   if _cost(matrices, dict(zip("abc", combo))) <= budget)
        # greedy by damage per parameter on convex (geometric) spectra: optimal up to the last step
        assert _damage(matrices, ranks) <= best + max(m.sensitivity * float(m.energy[0] / m.energy.sum())
                                                      for m in matrices)


def test_a_more_sensitive_matrix_gets_more_rank():
    twins = [_matrix("calm", 30, 30, 0.9, 1.0), _matrix("touchy", 30, 30, 0.9, 10.0)]
    ranks = allocate_ranks(twins, 0.6)
    assert ranks["touchy"] is None or ranks["touchy"] > ranks["calm"]


def test_too_high_a_ratio_is_refused_with_the_smallest_size():
    with pytest.raises(MessiError, match="lower the ratio"):
        allocate_ranks([_matrix("a", 10, 10, 0.5)], 0.95)


@given(rows=st.integers(3, 60), cols=st.integers(3, 60), ratio=st.floats(0.05, 0.6), k=st.integers(1, 3))
def test_uniform_compresses_every_matrix_by_the_ratio(rows, cols, ratio, k):
    m = _matrix("a", rows, cols, 0.8)
    try:
        j = uniform_ranks([m], ratio, k)["a"]
    except MessiError:
        return
    assert 1 - messi_params(rows, cols, k, j) / (rows * cols) >= ratio
    if j + 1 < min(rows, cols):
        assert 1 - messi_params(rows, cols, k, j + 1) / (rows * cols) < ratio


def test_shared_relative_rank_is_one_fraction_of_each_full_rank():
    matrices = [_matrix("small", 40, 20, 0.9), _matrix("big", 80, 80, 0.9)]
    ranks = shared_relative_rank(matrices, 0.5, k=3)
    budget = math.floor(0.5 * sum(m.dense_params for m in matrices))
    assert sum(messi_params(m.rows, m.cols, 3, ranks[m.name]) for m in matrices) <= budget
    assert abs(ranks["small"] / 20 - ranks["big"] / 80) <= 1 / 20  # one r, floored per matrix


@given(rows=st.integers(2, 80), cols=st.integers(2, 80), k=st.integers(1, 5), params=st.integers(1, 5000),
       orientation=st.sampled_from(["rows", "columns"]))
def test_same_size_rank_is_the_largest_that_fits(rows, cols, k, params, orientation):
    j = same_size_rank(rows, cols, k, params, orientation)
    if j >= 1:
        assert messi_params(rows, cols, k, j, orientation) <= params
    if j + 1 < min(rows, cols):
        assert messi_params(rows, cols, k, j + 1, orientation) > params
