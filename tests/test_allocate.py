"""The allocator: meets the budget, spends it where the measured damage per parameter is largest,
and the baselines follow their rules. Pure arithmetic: no model."""

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from messi import MessiError
from messi.allocate import (
    Matrix,
    allocate_ranks,
    messi_params,
    same_size_rank,
    shared_relative_rank,
    svd_params,
    uniform_ranks,
)


def _matrix(name, rows, cols, decay, sensitivity=1.0):
    energy = torch.tensor([decay ** i for i in range(min(rows, cols))], dtype=torch.float64)
    return Matrix(name, rows, cols, energy, sensitivity)


def _cost(matrices, ranks):
    return sum(svd_params(m.rows, m.cols, ranks[m.name]) for m in matrices)


def _budget(matrices, ratio):
    """Numbers the allocation may store: (1 - ratio) of the dense total, rounded down."""
    return math.floor((1 - ratio) * sum(m.dense_params for m in matrices))


def _damage(matrices, ranks):
    return sum(m.sensitivity * m.svd_error(ranks[m.name]) for m in matrices)


@given(shapes=st.lists(st.tuples(st.integers(4, 40), st.integers(4, 40), st.floats(0.3, 0.99),
                                 st.floats(0.1, 10)), min_size=1, max_size=5),
       ratio=st.floats(0.05, 0.7))
def test_the_budget_is_met_and_no_further_step_fits(shapes, ratio):
    matrices = [_matrix(f"m{i}", r, c, d, s) for i, (r, c, d, s) in enumerate(shapes)]
    total = sum(m.dense_params for m in matrices)
    budget = _budget(matrices, ratio)
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


def _least_damage(matrices, ratio):
    """The exact optimum by trying every combination of ranks (and dense) that fits the budget."""
    budget = _budget(matrices, ratio)
    names = [m.name for m in matrices]
    options = [list(range(1, m.max_rank + 1)) + [None] for m in matrices]
    return min(_damage(matrices, dict(zip(names, combo))) for combo in itertools.product(*options)
               if _cost(matrices, dict(zip(names, combo))) <= budget)


def test_greedy_matches_brute_force_on_small_problems():
    matrices = [_matrix("a", 8, 6, 0.5, 1.0), _matrix("b", 7, 7, 0.8, 3.0), _matrix("c", 10, 5, 0.9, 0.5)]
    for ratio in (0.3, 0.5, 0.7):
        ranks = allocate_ranks(matrices, ratio)
        # greedy by damage per parameter on convex (geometric) spectra: optimal up to the last step
        assert _damage(matrices, ranks) <= _least_damage(matrices, ratio) + max(
            m.sensitivity * float(m.energy[0] / m.energy.sum()) for m in matrices)


@pytest.mark.parametrize("shapes, ratio", [
    ([(7, 9, 0.9), (9, 9, 0.3)], 0.3),  # a step's cost differs between the two: rate, not gain, decides
    ([(4, 9, 0.3), (8, 7, 0.5)], 0.2),  # going dense removes what is left, weighed per parameter
])
def test_greedy_is_exactly_optimal_where_its_order_decides(shapes, ratio):
    matrices = [_matrix(name, r, c, d) for name, (r, c, d) in zip("ab", shapes)]
    assert _damage(matrices, allocate_ranks(matrices, ratio)) == pytest.approx(_least_damage(matrices, ratio), abs=1e-12)


def test_an_almost_exact_matrix_does_not_go_dense_before_a_lossy_one_gains_a_rank():
    flat = Matrix("flat", 20, 20, torch.ones(20, dtype=torch.float64))
    sharp = Matrix("sharp", 6, 6, torch.tensor([1, 1, 1e-4, 1e-4, 1e-4, 1e-4], dtype=torch.float64))
    # both at rank 1 (52 numbers), sharp's second rank (12) is worth far more per number than
    # flat's (40); then 40 are left: flat's next rank, not sharp going dense for a 2e-4 error
    ranks = allocate_ranks([flat, sharp], 1 - 104.5 / 436)
    assert ranks == {"flat": 2, "sharp": 2}


@given(scale=st.sampled_from([0.25, 4.0, 1024.0]), ratio=st.floats(0.1, 0.7), which=st.integers(0, 2))
def test_the_scale_of_a_spectrum_does_not_matter(scale, ratio, which):
    # relative errors are the same for A and c*A, so is the allocation (powers of 2: exact in float)
    matrices = [_matrix("a", 12, 9, 0.6), _matrix("b", 10, 10, 0.85, 2.0), _matrix("c", 15, 6, 0.7, 0.5)]
    scaled = [Matrix(m.name, m.rows, m.cols, m.energy * (scale if i == which else 1.0), m.sensitivity)
              for i, m in enumerate(matrices)]
    assert allocate_ranks(scaled, ratio) == allocate_ranks(matrices, ratio)


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
    except MessiError:  # only when rank 1 itself compresses less than asked
        assert 1 - messi_params(rows, cols, k, 1) / (rows * cols) < ratio
        return
    assert 1 - messi_params(rows, cols, k, j) / (rows * cols) >= ratio
    if j + 1 < min(rows, cols):
        assert 1 - messi_params(rows, cols, k, j + 1) / (rows * cols) < ratio


def test_shared_relative_rank_is_one_fraction_of_each_full_rank():
    matrices = [_matrix("small", 40, 20, 0.9), _matrix("big", 80, 80, 0.9)]
    ranks = shared_relative_rank(matrices, 0.5, k=3)
    budget = _budget(matrices, 0.5)
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


def test_sizes_and_the_largest_useful_rank_by_hand():
    assert svd_params(10, 6, None) == 60 and svd_params(10, 6, 2) == 32
    assert messi_params(10, 6, 3, 2) == 10 * 2 + 3 * 2 * 6
    assert messi_params(10, 6, 3, 2, "columns") == 6 * 2 + 3 * 2 * 10
    assert _matrix("a", 10, 10, 0.5).max_rank == 4  # 5 * (10 + 10) = 100 is no longer smaller
    assert _matrix("a", 100, 3, 0.5).max_rank == 2  # capped below full rank, not by size
    assert same_size_rank(10, 6, 3, 60) == 2  # 60 // (10 + 3 * 6)
    assert same_size_rank(10, 6, 3, 60, "columns") == 1  # 60 // (6 + 3 * 10)
    assert same_size_rank(10, 6, 1, 10_000) == 5  # never full rank


def test_svd_error_reads_the_spectrum():
    m = Matrix("a", 4, 4, torch.tensor([4.0, 2.0, 1.0, 1.0]))
    assert m.svd_error(None) == 0.0
    assert m.svd_error(0) == 1.0
    assert m.svd_error(1) == pytest.approx(0.5) and m.svd_error(3) == pytest.approx(0.125)
    assert m.svd_error(4) == 0.0
    # a float32 spectrum is summed in double: small tails are not lost to rounding
    tiny = Matrix("t", 3, 3, torch.tensor([1.0, 1e-8, 1e-8], dtype=torch.float32))
    assert tiny.svd_error(3) == 0.0 and 0.0 <= tiny.svd_error(1) < 1e-7
    assert Matrix("z", 3, 3, torch.zeros(3)).svd_error(1) == 0.0


def test_a_matrix_with_no_energy_gets_nothing_and_breaks_nothing():
    matrices = [Matrix("zero", 20, 20, torch.zeros(20)), _matrix("live", 20, 20, 0.8)]
    ranks = allocate_ranks(matrices, 0.5)
    assert ranks["zero"] == 1 and ranks["live"] is not None and ranks["live"] > 1


@given(shapes=st.lists(st.tuples(st.integers(4, 20), st.integers(4, 20), st.sampled_from([0.5, 0.8]),
                                 st.sampled_from([1.0, 2.0])), min_size=2, max_size=4),
       ratio=st.floats(0.1, 0.6), seed=st.integers(0, 10))
def test_the_allocation_does_not_depend_on_the_order_of_the_matrices(shapes, ratio, seed):
    # equal shapes, spectra and sensitivities tie; ties must not be broken by position
    matrices = [_matrix(f"m{i}", r, c, d, s) for i, (r, c, d, s) in enumerate(shapes)]
    shuffled = [matrices[i] for i in torch.randperm(len(matrices), generator=torch.Generator().manual_seed(seed))]
    try:
        ranks = allocate_ranks(matrices, ratio)
    except MessiError:
        return
    assert allocate_ranks(shuffled, ratio) == ranks


def test_equal_twins_split_a_tie_by_name():
    twins = [_matrix("b", 10, 10, 0.8), _matrix("a", 10, 10, 0.8)]
    budget_for_one_step = 2 * svd_params(10, 10, 1) + 20  # 60 of 200 numbers
    ranks = allocate_ranks(twins, 1 - budget_for_one_step / 200)
    assert ranks == {"a": 2, "b": 1}


def test_too_small_a_budget_names_both_sizes():
    with pytest.raises(MessiError) as error:
        allocate_ranks([_matrix("a", 10, 10, 0.5)], 0.95)
    assert str(error.value) == ("a budget of 5 numbers (95.0% compression) is below the smallest factorisation "
                                "(20 numbers, 80.0%); lower the ratio")
    with pytest.raises(MessiError) as error:
        shared_relative_rank([_matrix("a", 100, 100, 0.5)], 0.99, k=2)
    assert str(error.value) == ("a budget of 100 numbers (99.0% compression) is below the smallest factorisation "
                                "(300 numbers, 97.0%); lower the ratio")


@given(shapes=st.lists(st.tuples(st.integers(4, 60), st.integers(4, 60)), min_size=1, max_size=4),
       ratio=st.floats(0.1, 0.8), k=st.integers(1, 3))
def test_shared_relative_rank_takes_the_largest_fraction_that_fits(shapes, ratio, k):
    matrices = [_matrix(f"m{i}", r, c, 0.9) for i, (r, c) in enumerate(shapes)]
    budget = _budget(matrices, ratio)
    try:
        ranks = shared_relative_rank(matrices, ratio, k)
    except MessiError:
        assert sum(messi_params(m.rows, m.cols, k, 1) for m in matrices) > budget
        return
    assert sum(messi_params(m.rows, m.cols, k, ranks[m.name]) for m in matrices) <= budget
    # the next fraction at which any matrix gains a rank no longer fits
    growable = [m for m in matrices if ranks[m.name] + 1 <= min(m.rows, m.cols) - 1]
    if not growable:
        return
    r_next = min((ranks[m.name] + 1) / min(m.rows, m.cols) for m in growable) + 1e-9
    bigger = {m.name: max(1, min(min(m.rows, m.cols) - 1, math.floor(r_next * min(m.rows, m.cols))))
              for m in matrices}
    assert sum(messi_params(m.rows, m.cols, k, bigger[m.name]) for m in matrices) > budget


def test_the_baselines_default_to_svd():
    matrices = [_matrix("a", 40, 20, 0.9), _matrix("b", 30, 30, 0.9)]
    assert uniform_ranks(matrices, 0.5) == uniform_ranks(matrices, 0.5, k=1) == {"a": 6, "b": 7}
    assert shared_relative_rank(matrices, 0.5) == shared_relative_rank(matrices, 0.5, k=1)
    assert shared_relative_rank(matrices, 0.5) != shared_relative_rank(matrices, 0.5, k=3)


def test_a_budget_equal_to_the_smallest_factorisation_is_enough():
    square = _matrix("a", 8, 8, 0.5)  # rank 1 stores 16 of 64 numbers: exactly 75% compression
    assert shared_relative_rank([square], 0.75) == {"a": 1}
    assert allocate_ranks([square], 0.75) == {"a": 1}
