import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from messi import MessiError, messi_factorize, rank_for_ratio, svd_factorize
from messi.factorize import compression, parameter_count, relative_error


@given(n=st.integers(50, 60000), d=st.integers(8, 1024), k=st.integers(1, 8),
       ratio=st.floats(0.05, 0.9))
def test_rank_for_ratio_is_the_largest_rank_reaching_the_ratio(n, d, k, ratio):
    try:
        j = rank_for_ratio(n, d, k, ratio)
    except MessiError as e:
        assert "no rank" in str(e) or "too small" in str(e)
        return
    assert 1 <= j < d
    assert compression(n, d, k, j) >= ratio
    assert j + 1 >= d or compression(n, d, k, j + 1) < ratio


def test_paper_sizes_on_minilm_shape():
    n, d = 30522, 384
    assert rank_for_ratio(n, d, 1, 0.4) == 227
    assert rank_for_ratio(n, d, 3, 0.4) == 222
    assert 0.40 <= compression(n, d, 3, 222) < 0.41
    assert parameter_count(n, d, 3, 222) == n * 222 + 3 * 222 * d


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_open_interval(ratio):
    with pytest.raises(MessiError, match="ratio"):
        rank_for_ratio(100, 10, 2, ratio)


def test_unreachable_ratio_names_the_fix():
    # 20 rows, 10 columns, k=5: even rank 1 stores 20 + 50 > 200 * (1 - 0.9)
    with pytest.raises(MessiError, match="no rank >= 1"):
        rank_for_ratio(20, 10, 5, 0.9)


def test_factors_reconstruct_and_errors():
    X = torch.randn(200, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    svd = svd_factorize(X, 5)
    assert svd.coords.shape == (200, 5) and svd.bases.shape == (1, 5, 16)
    s = torch.linalg.svdvals(X)
    assert relative_error(X, svd.reconstruct()) == pytest.approx(float(s[5:].square().sum() / s.square().sum()))
    ms = messi_factorize(X, 3, 4, seed=0)
    assert ms.coords.shape == (200, 4) and ms.bases.shape == (3, 4, 16)
    with pytest.raises(MessiError, match="rank"):
        svd_factorize(X, 16)


def test_weighted_svd_is_the_exact_weighted_optimum():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(400, 12, dtype=torch.float64, generator=g) @ torch.randn(12, 12, dtype=torch.float64, generator=g)
    w = torch.rand(400, generator=g, dtype=torch.float64) ** 4 * 50
    f = svd_factorize(A, 4, sample_weight=w)
    # direct solution: top-4 eigenvectors of A^T W A
    vals, vecs = torch.linalg.eigh(A.T @ (w[:, None] * A))
    P_direct = vecs[:, -4:] @ vecs[:, -4:].T
    V = f.bases[0]
    assert torch.allclose(V.T @ V, P_direct, atol=1e-9)
    assert torch.allclose(f.coords, A @ V.T, atol=1e-10)  # every row projected on it
    weighted_err = lambda B: float((w * (A - A @ B.T @ B).square().sum(1)).sum())
    plain = svd_factorize(A, 4).bases[0]
    assert weighted_err(V) < weighted_err(plain)
    assert weighted_err(V) == pytest.approx(float(vals[:-4].sum()), rel=1e-9)


def test_weighted_svd_keeps_zero_weight_rows():
    A = torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    w = torch.ones(50, dtype=torch.float64)
    w[:10] = 0
    f = svd_factorize(A, 3, sample_weight=w)
    assert f.coords.shape == (50, 3)
    V = f.bases[0]
    assert torch.allclose(f.reconstruct()[:10], A[:10] @ V.T @ V, atol=1e-12)


def test_relative_error_weighs_rows():
    A = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    approx = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert relative_error(A, approx) == pytest.approx(1 / 5)
    assert relative_error(A, approx, torch.tensor([3.0, 1.0])) == pytest.approx(3 / (3 + 4))


def test_relative_error_under_a_metric_by_hand():
    """e M e^T per row, rows weighted: |e|^2 with the identity."""
    A = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    approx = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # errors (1, 0) and (0, 1)
    M = torch.tensor([[4.0, 1.0], [1.0, 9.0]], dtype=torch.float64)
    # errors: 4 and 9; norms: 4 and 4 * 9 = 36
    assert relative_error(A, approx, moments=M) == pytest.approx((4 + 9) / (4 + 36))
    assert relative_error(A, approx, torch.tensor([3.0, 1.0]), M) == pytest.approx((12 + 9) / (12 + 36))
    assert relative_error(A, approx, moments=torch.eye(2)) == pytest.approx(relative_error(A, approx))


def test_svd_factors_keep_the_matrix_dtype_and_long_labels():
    X = torch.randn(30, 6, generator=torch.Generator().manual_seed(1))  # float32
    w = torch.rand(30, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.1
    f = svd_factorize(X, 3, sample_weight=w)
    assert f.coords.dtype == f.bases.dtype == torch.float32
    assert f.labels.dtype == torch.long and f.labels.shape == (30,) and not f.labels.any()


def test_checks_of_ratio_and_rank():
    from messi.factorize import check_rank, check_ratio

    assert check_ratio(0.4) == 0.4 and check_ratio(0.999) == 0.999
    for bad in (0.0, 1.0, 1.5, -0.1, True, False, "0.4", float("nan")):
        with pytest.raises(MessiError, match="ratio must be strictly between 0 and 1"):
            check_ratio(bad)
    assert check_rank(1, 10) == 1 and check_rank(9, 10) == 9
    for bad in (0, 10, 11, -1, True, 2.0, "3"):
        with pytest.raises(MessiError, match=r"rank must be an integer in \[1, 9\]"):
            check_rank(bad, 10)


def test_rank_for_ratio_at_the_edges():
    # n=100, d=10, k=1: compression(j) = 1 - 0.11 j, so j <= (1 - ratio) / 0.11
    assert [rank_for_ratio(100, 10, 1, r) for r in (0.005, 0.05, 0.13, 0.40, 0.85)] == [9, 8, 7, 5, 1]
    exact = compression(100, 10, 1, 6)  # a ratio that rank 6 reaches exactly (as reported)
    assert rank_for_ratio(100, 10, 1, exact) == 6
    assert rank_for_ratio(10 ** 6, 10, 1, 0.05) == 9  # every rank below d reaches a small ratio
    with pytest.raises(MessiError, match=r"no rank >= 1 reaches 90% compression with k=1 .* \(rank 1 gives 89.0%\)"):
        rank_for_ratio(100, 10, 1, 0.9)
    with pytest.raises(MessiError, match="k must be >= 1"):
        rank_for_ratio(100, 10, 0, 0.4)


def test_messi_factorize_passes_every_setting_to_the_clustering():
    from messi import ProjectiveClustering

    g = torch.Generator().manual_seed(4)
    X = torch.randn(120, 6, generator=g, dtype=torch.float64)
    w = torch.rand(120, generator=g, dtype=torch.float64) * 3
    settings = dict(seed=6, n_init=2, max_iter=7, tol=1e-3, loss="huber")
    f = messi_factorize(X, 3, 2, sample_weight=w, **settings)
    pc = ProjectiveClustering(n_clusters=3, rank=2, **settings).fit(X, sample_weight=w)
    assert torch.equal(f.labels, pc.labels_) and torch.equal(f.bases, pc.bases_)
    # and each of them matters on this data
    for change in (dict(seed=7), dict(n_init=1), dict(max_iter=1), dict(tol=0.5), dict(loss="l2")):
        other = messi_factorize(X, 3, 2, sample_weight=w, **{**settings, **change})
        assert not torch.equal(other.bases, f.bases), change
    assert not torch.equal(messi_factorize(X, 3, 2, **settings).bases, f.bases)  # the weights
    assert messi_factorize(X, 2, 2, **settings).bases.shape == (2, 2, 6)


@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_whitening_is_the_damped_square_root_by_hand(scale):
    from messi.factorize import whitening

    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    evals = scale * torch.tensor([4.0, 1.0, 0.25, 0.0], dtype=torch.float64)
    C = Q @ torch.diag(evals) @ Q.T
    S, S_inv = whitening(C)
    damped = C + 0.01 * float(evals.mean()) * torch.eye(4, dtype=torch.float64)  # 1% of the mean eigenvalue
    assert torch.allclose(S @ S, damped, atol=1e-12) and torch.allclose(S, S.T, atol=1e-12)
    assert torch.allclose(S @ S_inv, torch.eye(4, dtype=torch.float64), atol=1e-9)
    S2, _ = whitening(C.T.contiguous() + 1e-3 * (C - C.T))  # only the symmetric part counts
    assert torch.allclose(S2, S, atol=1e-12)


def test_whitened_fits_pass_their_weights_and_settings_on():
    from messi.factorize import factorize, messi_factorize, whitening

    g = torch.Generator().manual_seed(1)
    A = torch.randn(40, 6, generator=g)
    X = torch.randn(200, 6, generator=g) * torch.linspace(0.2, 2.0, 6)
    C = (X.T @ X / 200).double()
    w = torch.rand(40, generator=g, dtype=torch.float64)
    settings = dict(seed=2, n_init=1, max_iter=3, tol=0.0, init="random")
    got = factorize(A, "messi", 2, 3, sample_weight=w, moments=C, **settings)
    S, S_inv = whitening(C)
    white = messi_factorize((A.double() @ S).float(), 2, 3, sample_weight=w, **settings)
    assert torch.equal(got.coords, white.coords) and torch.equal(got.labels, white.labels)
    assert torch.allclose(got.bases, (white.bases.double() @ S_inv).float(), atol=1e-6)
    assert not torch.equal(white.coords, messi_factorize((A.double() @ S).float(), 2, 3, **settings).coords)
    assert not torch.equal(white.coords, messi_factorize((A.double() @ S).float(), 2, 3, sample_weight=w).coords)


# Row-blocked passes (what keeps a 262,144-row fit within a small multiple of the table's
# memory): tiny blocks force many of them, and each must equal the one-shot computation.

@pytest.fixture
def tiny_blocks(monkeypatch):
    import messi.subspaces as S
    real = S.row_blocks
    monkeypatch.setattr(S, "row_blocks", lambda n, width, elements=0: real(n, width, 3 * width))
    import messi.factorize as F
    monkeypatch.setattr(F, "row_blocks", S.row_blocks)


@given(n=st.integers(1, 40), d=st.integers(2, 9), weighted=st.booleans(), metric=st.booleans(),
       seed=st.integers(0, 1000))
def test_relative_error_of_rows_equals_the_one_shot_sum(n, d, weighted, metric, seed):
    g = torch.Generator().manual_seed(seed)
    A, approx = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    w = torch.rand(n, generator=g) if weighted else None
    C = (lambda R: R @ R.T)(torch.randn(d, d, generator=g).double()) if metric else None
    E, A64 = A.double() - approx.double(), A.double()
    norms = (lambda X: (X @ C * X).sum(1)) if metric else (lambda X: X.square().sum(1))
    ww = torch.ones(n, dtype=torch.float64) if w is None else w.double()
    expected = float((norms(E) * ww).sum() / (norms(A64) * ww).sum())
    assert relative_error(A, approx, w, C) == pytest.approx(expected, rel=1e-9)
    assert relative_error(A, lambda block: approx[block], w, C) == pytest.approx(expected, rel=1e-9)


def test_blocked_passes_equal_whole_ones(tiny_blocks):
    from messi.factorize import whiten_rows
    from messi.subspaces import cluster_grams, coordinates, gram_matrix
    g = torch.Generator().manual_seed(0)
    X, labels = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g)
    bases = torch.linalg.qr(torch.randn(3, 6, 2, generator=g))[0].transpose(1, 2)
    w = torch.rand(50, generator=g).double()
    for i in range(3):
        rows = labels == i
        assert torch.allclose(coordinates(X, bases, labels)[rows], X[rows] @ bases[i].T)
        expected = (X[rows].double() * w[rows, None]).T @ X[rows].double()
        assert torch.allclose(cluster_grams(X, labels, 3, w)[i], expected)
    assert torch.allclose(gram_matrix(X, w), (X.double() * w[:, None]).T @ X.double())
    S = torch.randn(6, 6, generator=g).double()
    assert torch.allclose(whiten_rows(X, S), (X.double() @ S).float())
    f = messi_factorize(X, 3, 2, seed=0, n_init=1)
    assert torch.equal(f.reconstruct()[7:23], f.rows(slice(7, 23)))


def test_svd_from_the_gram_matrix_spans_the_svd_subspace():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(300, 12, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 12, dtype=torch.float64)
    Vh = torch.linalg.svd(X, full_matrices=False).Vh[:4]
    basis = svd_factorize(X, 4).bases[0]
    assert torch.allclose(basis.T @ basis, Vh.T @ Vh, atol=1e-10)  # the same projector


def test_a_bad_value_in_the_last_row_block_is_found(tiny_blocks):
    X = torch.randn(40, 5)
    X[39, 4] = float("nan")
    with pytest.raises(MessiError, match="NaN or inf values in 1 rows"):
        svd_factorize(X, 2)
    X[39, 4] = 3e15
    assert svd_factorize(X, 2).coords.dtype == torch.float64  # rows this large are fitted in float64
