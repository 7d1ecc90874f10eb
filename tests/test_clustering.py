import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from conftest import planted
from messi import MessiError, ProjectiveClustering
from messi.clustering import assign


def svd_tail_cost(X, j):
    s = torch.linalg.svdvals(X.double())
    return float(s[j:].square().sum())


def recomputed_cost(X, bases, labels):
    """Sum of squared distances, computed the slow obvious way: project each cluster's rows."""
    X, bases = X.double(), bases.double()
    total = 0.0
    for i in range(bases.shape[0]):
        rows = X[labels == i]
        total += float((rows - rows @ bases[i].T @ bases[i]).square().sum())
    return total


def test_k1_is_truncated_svd_float64():
    X = torch.randn(300, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pc = ProjectiveClustering(n_clusters=1, rank=6, n_init=1).fit(X)
    assert pc.cost_ == pytest.approx(svd_tail_cost(X, 6), rel=1e-6)


def test_k1_is_truncated_svd_on_real_matrix(minilm_embedding):
    pc = ProjectiveClustering(n_clusters=1, rank=227, n_init=1).fit(minilm_embedding)
    assert pc.cost_ == pytest.approx(svd_tail_cost(minilm_embedding, 227), rel=1e-5)


def test_cost_never_rises_across_em_steps():
    X = torch.randn(500, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    pc = ProjectiveClustering(n_clusters=4, rank=3, n_init=1, max_iter=40, tol=0, init="random").fit(X)
    h = np.array(pc.cost_history_)
    assert len(h) >= 3
    assert np.all(np.diff(h) <= 1e-9 * h[0])
    assert h[-1] < h[0]


def test_planted_subspaces_are_recovered():
    X, truth = planted()
    pc = ProjectiveClustering(n_clusters=3, rank=2, n_init=5, seed=0).fit(X)
    assert pc.cost_ < 1e-3 * float(X.square().sum())
    # every found cluster is (almost) one planted cluster
    agree = sum(int(torch.bincount(truth[pc.labels_ == i], minlength=3).max()) for i in range(3))
    assert agree >= 0.98 * len(truth)


def test_cost_attribute_matches_labels_and_bases():
    X, _ = planted(noise=0.1)
    pc = ProjectiveClustering(n_clusters=3, rank=2, seed=3).fit(X)
    assert pc.cost_ == pytest.approx(recomputed_cost(X, pc.bases_, pc.labels_), rel=1e-9)


def test_same_seed_same_result():
    X = torch.randn(400, 10, generator=torch.Generator().manual_seed(4))
    a = ProjectiveClustering(3, 4, n_init=2, seed=7).fit(X)
    b = ProjectiveClustering(3, 4, n_init=2, seed=7).fit(X)
    assert torch.equal(a.labels_, b.labels_) and torch.equal(a.bases_, b.bases_) and a.cost_ == b.cost_


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept(dtype):
    X, _ = planted(dtype=dtype, noise=0.05)
    pc = ProjectiveClustering(3, 2, seed=0).fit(X)
    assert pc.bases_.dtype == dtype
    eye = pc.bases_.double() @ pc.bases_.double().transpose(1, 2)
    assert torch.allclose(eye, torch.eye(2, dtype=torch.float64).expand(3, 2, 2), atol=1e-5)


def test_numpy_input_and_predict_transform():
    X, _ = planted(noise=0.01)
    pc = ProjectiveClustering(3, 2, seed=0).fit(X.numpy())
    assert torch.equal(pc.predict(X), assign(X, pc.bases_)[0])
    coords = pc.transform(X, pc.labels_)
    assert coords.shape == (X.shape[0], 2)
    rebuilt = torch.einsum("nj,njd->nd", coords, pc.bases_[pc.labels_])
    assert float((X - rebuilt).square().sum()) == pytest.approx(pc.cost_, rel=1e-6)


def test_starved_cluster_is_reseeded():
    # 2 planted subspaces but 4 clusters: without re-seeding, some clusters end with < j rows
    X, _ = planted(k=2, n_per=100, noise=0.05)
    pc = ProjectiveClustering(n_clusters=4, rank=2, n_init=1, init="random", seed=0).fit(X)
    counts = torch.bincount(pc.labels_, minlength=4)
    assert pc.bases_.shape == (4, 2, 8)
    assert torch.isfinite(pc.bases_).all()
    assert int((counts > 0).sum()) >= 2
    assert pc.cost_ <= recomputed_cost(X, pc.bases_, pc.labels_) * (1 + 1e-9)


def test_kmeans_seeding_beats_random_split_on_real_matrix(minilm_embedding):
    kw = dict(n_clusters=3, rank=222, n_init=1, max_iter=8, seed=0)
    ours = ProjectiveClustering(init="kmeans", **kw).fit(minilm_embedding).cost_
    ref = ProjectiveClustering(init="random", **kw).fit(minilm_embedding).cost_
    assert ours < ref


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_clusters=0, rank=2), "k"),
    (dict(n_clusters=2, rank=0), "rank"),
    (dict(n_clusters=2, rank=8), "rank"),
    (dict(n_clusters=2, rank=2, init="bogus"), "init"),
])
def test_bad_parameters(kwargs, match):
    X, _ = planted()
    with pytest.raises(MessiError, match=match):
        ProjectiveClustering(**kwargs).fit(X)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_inf_rejected(bad):
    X, _ = planted()
    X[5, 3] = bad
    with pytest.raises(MessiError, match="NaN or inf"):
        ProjectiveClustering(2, 2).fit(X)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    X, _ = planted(dtype=torch.float32)
    pc = ProjectiveClustering(3, 2, seed=0).fit(X.cuda())
    assert pc.bases_.is_cuda and pc.labels_.is_cuda


@given(n=st.integers(8, 60), d=st.integers(3, 10), k=st.integers(1, 4), data=st.data())
def test_shapes_and_invariants(n, d, k, data):
    j = data.draw(st.integers(1, d - 1))
    X = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(n * d + k))
    pc = ProjectiveClustering(k, j, n_init=1, max_iter=10).fit(X)
    assert pc.bases_.shape == (k, j, d)
    assert pc.labels_.shape == (n,) and int(pc.labels_.max()) < k
    eye = pc.bases_ @ pc.bases_.transpose(1, 2)
    assert torch.allclose(eye, torch.eye(j, dtype=X.dtype).expand(k, j, j), atol=1e-8)
    assert 0 <= pc.cost_ <= float(X.square().sum()) * (1 + 1e-9)
    assert pc.cost_ == pytest.approx(recomputed_cost(X, pc.bases_, pc.labels_), rel=1e-7, abs=1e-9)


def _largest_principal_angle(B1, B2):
    s = torch.linalg.svdvals(B1.double() @ B2.double().T)
    return float(torch.arccos(s.min().clamp(max=1.0)))


@pytest.mark.parametrize("loss", ["l1", "huber"])
def test_robust_losses_resist_outlier_rows(loss):
    g = torch.Generator().manual_seed(0)
    true = torch.linalg.qr(torch.randn(8, 2, generator=g, dtype=torch.float64))[0].T
    inliers = torch.randn(300, 2, generator=g, dtype=torch.float64) @ true
    inliers += 0.01 * torch.randn(inliers.shape, generator=g, dtype=torch.float64)
    outliers = 5 * torch.randn(6, 8, generator=g, dtype=torch.float64)  # pull l2 off the plane
    X = torch.cat([inliers, outliers])
    plain = ProjectiveClustering(1, 2, n_init=1, max_iter=30).fit(X)
    robust = ProjectiveClustering(1, 2, n_init=1, max_iter=30, loss=loss).fit(X)
    assert _largest_principal_angle(robust.bases_[0], true) < 0.1
    assert _largest_principal_angle(robust.bases_[0], true) < 0.5 * _largest_principal_angle(plain.bases_[0], true)
    h = robust.cost_history_
    assert h[-1] <= h[0]


def test_unknown_loss_is_refused():
    X, _ = planted()
    with pytest.raises(MessiError, match="loss"):
        ProjectiveClustering(2, 2, loss="cauchy").fit(X)


# --- sample_weight ---------------------------------------------------------------------------

def projector(bases, i):
    B = bases[i].double()
    return B.T @ B


def weighted_cost(X, bases, labels, w):
    """Sum of w_r * squared distance, the slow obvious way."""
    X, bases = X.double(), bases.double()
    resid = torch.empty(X.shape[0], dtype=torch.float64)
    for i in range(bases.shape[0]):
        rows = labels == i
        resid[rows] = (X[rows] - X[rows] @ bases[i].T @ bases[i]).square().sum(1)
    return float((resid * w.double()).sum())


def test_zero_one_weights_equal_fitting_the_subset():
    X, _ = planted(n_per=80, noise=1e-2, seed=4)
    noise = torch.randn(60, X.shape[1], dtype=X.dtype, generator=torch.Generator().manual_seed(5)) * 3
    Xall = torch.cat([X, noise])  # loud rows that would pull the subspaces if they counted
    w = torch.cat([torch.ones(len(X)), torch.zeros(len(noise))])
    # enough restarts that both reach the planted optimum (EM alone may stop in a local one)
    # (random splits: on planted subspaces about 40% of runs reach the optimum, 20 runs suffice)
    weighted = ProjectiveClustering(n_clusters=3, rank=2, n_init=20, init="random", seed=0).fit(Xall, sample_weight=w)
    subset = ProjectiveClustering(n_clusters=3, rank=2, n_init=20, init="random", seed=0).fit(X)
    assert subset.cost_ < 1e-3 * float(X.square().sum())
    assert weighted.cost_ == pytest.approx(subset.cost_, rel=1e-6)
    # the same subspaces, up to their order
    for i in range(3):
        dists = [float((projector(weighted.bases_, i) - projector(subset.bases_, m)).norm()) for m in range(3)]
        assert min(dists) < 1e-6
    # zero-weight rows are still assigned, to their closest subspace, and not dropped
    assert weighted.labels_.shape == (len(Xall),)
    assert torch.equal(weighted.labels_[len(X):], weighted.predict(noise))


def test_refit_with_weights_equals_refit_of_the_kept_rows():
    from messi.clustering import _refit

    X = torch.randn(200, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    labels = torch.arange(200) % 3
    w = (torch.arange(200) % 4 != 0).double()
    resid = X.square().sum(1)
    b1, c1 = _refit(X, labels, resid, 3, 4, w)
    keep = w > 0
    b2, c2 = _refit(X[keep], labels[keep], resid[keep], 3, 4)
    assert c1 == pytest.approx(c2, rel=1e-10)
    for i in range(3):
        assert torch.allclose(projector(b1, i), projector(b2, i), atol=1e-9)


def test_integer_weights_equal_repeated_rows():
    from messi.clustering import _refit

    X = torch.randn(150, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    w = torch.randint(1, 5, (150,), generator=torch.Generator().manual_seed(8))
    labels = torch.arange(150) % 2
    b1, c1 = _refit(X, labels, X.square().sum(1), 2, 3, w.double())
    Xr, lr = X.repeat_interleave(w, 0), labels.repeat_interleave(w)
    b2, c2 = _refit(Xr, lr, Xr.square().sum(1), 2, 3)
    assert c1 == pytest.approx(c2, rel=1e-10)
    for i in range(2):
        assert torch.allclose(projector(b1, i), projector(b2, i), atol=1e-9)
    # and a whole fit: the weighted cost equals the cost of the repeated rows under the same model
    pc = ProjectiveClustering(n_clusters=2, rank=3, seed=1).fit(X, sample_weight=w)
    rep = weighted_cost(Xr, pc.bases_, pc.predict(Xr), torch.ones(len(Xr)))
    assert pc.cost_ == pytest.approx(rep, rel=1e-9)


@given(st.integers(0, 10_000), st.integers(1, 4), st.sampled_from(["kmeans", "random"]))
def test_weighted_cost_never_rises_and_matches_labels(seed, k, init):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(120, 9, dtype=torch.float64, generator=g)
    w = torch.rand(120, generator=g, dtype=torch.float64) ** 3 * 10
    w[torch.rand(120, generator=g) < 0.2] = 0
    pc = ProjectiveClustering(n_clusters=k, rank=3, n_init=1, max_iter=25, tol=0, init=init, seed=seed).fit(X, w)
    h = np.array(pc.cost_history_)
    assert np.all(np.diff(h) <= 1e-9 * h[0] + 1e-12)
    assert pc.cost_ == pytest.approx(weighted_cost(X, pc.bases_, pc.labels_, w), rel=1e-8, abs=1e-10)


def test_heavy_rows_are_fitted_first(minilm_embedding):
    """Weighting a block of real rows 100x makes their error fall, at the others' expense."""
    A = minilm_embedding[:3000]
    w = torch.ones(3000)
    w[:300] = 100.0
    plain = ProjectiveClustering(n_clusters=3, rank=40, n_init=1, seed=0).fit(A)
    heavy = ProjectiveClustering(n_clusters=3, rank=40, n_init=1, seed=0).fit(A, sample_weight=w)
    ones = torch.ones(300)
    err_plain = weighted_cost(A[:300], plain.bases_, plain.predict(A[:300]), ones)
    err_heavy = weighted_cost(A[:300], heavy.bases_, heavy.predict(A[:300]), ones)
    assert err_heavy < 0.8 * err_plain


@pytest.mark.parametrize("bad, match", [
    (torch.ones(5), "shape"), (-torch.ones(40), ">= 0"), (torch.full((40,), float("nan")), "finite"),
    (torch.zeros(40), "sums to 0"), (torch.ones(40, dtype=torch.complex64), "real"), (["a"] * 40, "numbers|real"),
])
def test_bad_sample_weight_is_one_clear_error(bad, match):
    X = torch.randn(40, 6)
    with pytest.raises(MessiError, match=match):
        ProjectiveClustering(n_clusters=2, rank=2).fit(X, sample_weight=bad)


def test_numpy_weights_are_accepted():
    X = np.random.default_rng(0).normal(size=(60, 6))
    pc = ProjectiveClustering(n_clusters=2, rank=2, n_init=1).fit(X, sample_weight=np.ones(60))
    ref = ProjectiveClustering(n_clusters=2, rank=2, n_init=1).fit(X)
    assert pc.cost_ == pytest.approx(ref.cost_, rel=1e-9)


def test_an_empty_cluster_takes_the_worst_served_rows():
    """Cluster 2 gets no rows: its new basis must span the rows served worst now (largest
    residuals), not stay empty or random."""
    from messi.clustering import _refit

    g = torch.Generator().manual_seed(9)
    X = torch.randn(300, 10, dtype=torch.float64, generator=g)
    labels = torch.arange(300) % 2  # clusters 0 and 1 only: cluster 2 is starved
    resid = torch.zeros(300, dtype=torch.float64)
    worst = torch.arange(0, 300, 7)
    resid[worst] = 100.0 + torch.arange(len(worst), dtype=torch.float64)  # these rows are served worst
    bases, _ = _refit(X, labels, resid, 3, 2, None)
    m = min(300, max(4 * 2, 300 // (4 * 3)))  # how many worst rows the refit looks at
    top = torch.topk(resid, m).indices
    expected = torch.linalg.eigh(X[top].T @ X[top])[1][:, -2:]
    P = bases[2].T @ bases[2]
    assert torch.allclose(P, expected @ expected.T, atol=1e-8)


def test_a_run_from_an_empty_cluster_ends_with_every_cluster_used():
    X, _ = planted(k=3, n_per=100, noise=0.01, seed=11)
    pc = ProjectiveClustering(n_clusters=3, rank=2, n_init=1, seed=0)
    from tqdm import tqdm

    labels = torch.zeros(len(X), dtype=torch.long)  # every row in cluster 0: 1 and 2 are starved
    run = pc._lloyd(X, X.square().sum(1), labels, tqdm(disable=True))
    counts = torch.bincount(run.labels, minlength=3)
    assert int((counts >= 2).sum()) == 3
    assert run.cost < run.history[0]


def test_robust_costs_and_irls_weights_by_hand():
    from messi.clustering import robust_cost, row_weights

    residuals = torch.tensor([0.0, 0.25, 4.0, 9.0])  # distances 0, 0.5, 2, 3
    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    assert robust_cost(residuals, "l2", 1.0) == pytest.approx(13.25)
    assert robust_cost(residuals, "l2", 1.0, w) == pytest.approx(0.5 + 2.0 + 9.0)
    assert robust_cost(residuals, "l1", 1.0) == pytest.approx(5.5)
    assert robust_cost(residuals, "l1", 1.0, w) == pytest.approx(1.0 + 1.0 + 3.0)
    # huber, delta 1: 0.5 d^2 inside (0, 0.125), delta (d - delta/2) outside (1.5, 2.5)
    assert robust_cost(residuals, "huber", 1.0) == pytest.approx(0.125 + 1.5 + 2.5)
    # delta 2: a distance of exactly delta is inside (0.5 * 4 = 2 either way); 3 -> 2 * (3 - 1) = 4
    assert robust_cost(residuals, "huber", 2.0) == pytest.approx(0.125 + 2.0 + 4.0)
    assert row_weights(residuals, "l2", 1.0) is None
    l1 = row_weights(residuals, "l1", 1.0)
    assert l1[1:].tolist() == pytest.approx([2.0, 0.5, 1 / 3])
    assert l1[0] == pytest.approx(1e12)  # a row on its subspace: clamped, not infinite
    assert row_weights(residuals, "huber", 1.0).tolist() == pytest.approx([1.0, 1.0, 0.5, 1 / 3])
    assert row_weights(residuals, "huber", 2.5).tolist() == pytest.approx([1.0, 1.0, 1.0, 2.5 / 3])


def test_predict_and_transform_take_rows_of_another_dtype():
    X, truth = planted(n_per=40, k=2, j=2, d=6, seed=3)
    model = ProjectiveClustering(2, 2, n_init=2, seed=0).fit(X)  # float64 fit
    rows = X.float()
    labels = model.predict(rows)
    assert torch.equal(labels, model.labels_)
    coords = model.transform(rows)  # labels found by predict when not given
    assert coords.dtype == torch.float32
    assert torch.allclose(coords, model.transform(rows, labels), atol=0)
    assert torch.allclose(coords.double(), model.transform(X), atol=1e-5)
