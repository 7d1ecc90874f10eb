
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import planted
from messi import MessiError, ProjectiveClustering
from messi.subspaces import assign


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
    # anchored: the message starts with the setting's own name
    (dict(n_clusters=0, rank=2), r"^k \(n_clusters\) must be in \[1, inf\]"),
    (dict(n_clusters=2, rank=0), r"^rank must be in \[1, 7\]"),
    (dict(n_clusters=2, rank=8), r"^rank must be in \[1, 7\]"),
    (dict(n_clusters=2, rank=2, init="bogus"), "^init must be"),
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
    from messi.subspaces import _refit

    X = torch.randn(200, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    labels = torch.arange(200) % 3
    w = (torch.arange(200) % 4 != 0).double()
    resid = X.square().sum(1)
    b1, c1, _ = _refit(X, labels, resid, 3, 4, w)
    keep = w > 0
    b2, c2, _ = _refit(X[keep], labels[keep], resid[keep], 3, 4)
    assert c1 == pytest.approx(c2, rel=1e-10)
    for i in range(3):
        assert torch.allclose(projector(b1, i), projector(b2, i), atol=1e-9)


def test_integer_weights_equal_repeated_rows():
    from messi.subspaces import _refit

    X = torch.randn(150, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    w = torch.randint(1, 5, (150,), generator=torch.Generator().manual_seed(8))
    labels = torch.arange(150) % 2
    b1, c1, _ = _refit(X, labels, X.square().sum(1), 2, 3, w.double())
    Xr, lr = X.repeat_interleave(w, 0), labels.repeat_interleave(w)
    b2, c2, _ = _refit(Xr, lr, Xr.square().sum(1), 2, 3)
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
    from messi.subspaces import _refit

    g = torch.Generator().manual_seed(9)
    X = torch.randn(300, 10, dtype=torch.float64, generator=g)
    labels = torch.arange(300) % 2  # clusters 0 and 1 only: cluster 2 is starved
    resid = torch.zeros(300, dtype=torch.float64)
    worst = torch.arange(0, 300, 7)
    resid[worst] = 100.0 + torch.arange(len(worst), dtype=torch.float64)  # these rows are served worst
    bases, _, _ = _refit(X, labels, resid, 3, 2, None)
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
    from messi.subspaces import robust_cost, row_weights

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


def _directions(groups=3, per=20, d=6, seed=0):
    """Rows along ``groups`` orthonormal directions, with positive scales in [1, 2)."""
    g = torch.Generator().manual_seed(seed)
    E = torch.eye(d, dtype=torch.float64)[:groups]
    X = torch.cat([E[i] * (1 + torch.rand(per, 1, generator=g, dtype=torch.float64)) for i in range(groups)])
    return X, torch.arange(groups).repeat_interleave(per)


def _same_partition(a, b):
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_plus_plus_never_seeds_a_direction_twice():
    from messi.subspaces import _kmeans_plus_plus

    X, _ = _directions()
    D = torch.nn.functional.normalize(X, dim=1)
    for seed in range(10):
        centres = _kmeans_plus_plus(D, 3, torch.Generator().manual_seed(seed))
        # a seeded direction is at cosine distance 0 from its rows: they are never drawn again
        assert sorted(int(c.argmax()) for c in centres) == [0, 1, 2], seed


def test_weighted_kmeans_plus_plus_draws_only_weighted_rows_and_is_seeded():
    from messi.subspaces import _kmeans_plus_plus

    X, _ = _directions()
    D = torch.nn.functional.normalize(X, dim=1)
    w = torch.zeros(60, dtype=torch.float64)
    w[[5, 8, 27]] = 1.0  # weight only on directions 0 and 1
    firsts = set()
    for seed in range(8):
        torch.manual_seed(100 + seed)  # the global generator must not matter
        a = _kmeans_plus_plus(D, 2, torch.Generator().manual_seed(seed), w)
        torch.manual_seed(200 + seed)
        assert torch.equal(a, _kmeans_plus_plus(D, 2, torch.Generator().manual_seed(seed), w))
        assert sorted(int(c.argmax()) for c in a) == [0, 1], seed
        firsts.add(int(a[0].argmax()))
    assert firsts == {0, 1}  # the first seed is drawn too (by weight), not fixed
    w[[5, 8]] = 0.0
    assert int(_kmeans_plus_plus(D, 1, torch.Generator().manual_seed(0), w)[0].argmax()) == 1


def test_spherical_kmeans_finds_the_directions_weighted_or_not():
    from messi.subspaces import _spherical_kmeans

    X, truth = _directions()
    for seed in range(4):
        assert _same_partition(_spherical_kmeans(X, 3, torch.Generator().manual_seed(seed)), truth)
    w = torch.ones(60, dtype=torch.float64)
    w[::7] = 0.0  # zero-weight rows are still labelled
    labels = _spherical_kmeans(X, 3, torch.Generator().manual_seed(0), weights=w)
    assert _same_partition(labels, truth)
    # more clusters than directions: an empty cluster keeps its centre, nothing becomes NaN
    labels = _spherical_kmeans(X, 4, torch.Generator().manual_seed(1))
    assert _same_partition(labels, truth) and labels.max() < 4


def _distances(X, bases, labels):
    """Each row's distance to its own subspace, by explicit projection (an independent oracle)."""
    B = bases[labels]  # (n, j, d)
    coords = torch.einsum("njd,nd->nj", B, X)
    return (X - torch.einsum("nj,njd->nd", coords, B)).norm(dim=1)


@pytest.mark.parametrize("loss", ["l1", "huber"])
def test_robust_fits_report_the_weighted_cost_of_what_they_return(loss):
    X, _ = planted(n_per=60, k=2, j=2, d=6, noise=0.05, seed=2)
    w = torch.rand(120, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    m = ProjectiveClustering(2, 2, n_init=1, max_iter=30, loss=loss, delta=0.04, seed=1).fit(X, sample_weight=w)
    dist = _distances(X, m.bases_, m.labels_)
    per_row = dist if loss == "l1" else torch.where(dist <= 0.04, 0.5 * dist ** 2, 0.04 * (dist - 0.02))
    assert m.cost_ == pytest.approx(float((w * per_row).sum()), rel=1e-9)


def test_zero_weight_outliers_do_not_move_a_weighted_robust_fit():
    X, _ = planted(n_per=100, k=1, j=2, d=6, noise=1e-3, seed=1)
    truth = torch.linalg.svd(X, full_matrices=False).Vh[:2]
    outliers = 30 * torch.randn(12, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    w = torch.cat([torch.ones(100), torch.zeros(12)]).double()
    # delta this large makes Huber least squares: only the weights keep the outliers out
    m = ProjectiveClustering(1, 2, n_init=1, max_iter=10, loss="huber", delta=1e6).fit(torch.cat([X, outliers]), sample_weight=w)
    assert _largest_principal_angle(m.bases_[0], truth) < 1e-3


def test_robust_runs_stop_at_the_first_small_relative_improvement():
    X, _ = planted(n_per=80, k=3, j=2, d=8, noise=0.1, seed=5)
    tol = 1e-3
    h = ProjectiveClustering(3, 2, n_init=1, max_iter=50, loss="huber", delta=0.1, tol=tol, seed=2).fit(X).cost_history_
    assert 2 < len(h) < 50
    assert all(h[i - 1] - h[i] > tol * h[i - 1] for i in range(1, len(h) - 1))
    assert h[-2] - h[-1] <= tol * h[-2]


def test_least_squares_runs_stop_when_no_label_moves():
    X, _ = planted(n_per=80, k=3, j=2, d=8, noise=0.1, seed=5)
    m = ProjectiveClustering(3, 2, n_init=1, max_iter=50, tol=-1.0, seed=2).fit(X)  # the cost rule never fires
    assert len(m.cost_history_) < 20
    assert torch.equal(m.predict(X), m.labels_)


def test_assign_returns_the_squared_distances():
    X, _ = planted(n_per=30, k=2, j=2, d=5, noise=0.01, seed=4)
    m = ProjectiveClustering(2, 2, n_init=1, seed=0).fit(X)
    labels, resid = assign(X, m.bases_)
    assert torch.equal(labels, m.labels_)
    assert torch.allclose(resid, _distances(X, m.bases_, labels) ** 2, atol=1e-12)


def test_sample_weight_accepts_small_sums_and_refuses_booleans():
    from messi.subspaces import check_sample_weight

    assert torch.equal(check_sample_weight([0.25, 0.25], 2), torch.tensor([0.25, 0.25], dtype=torch.float64))
    with pytest.raises(MessiError, match="real numbers"):
        check_sample_weight(torch.tensor([True, False]), 2)


def test_seeding_is_reproducible_and_weighted():
    from messi.subspaces import _seed, _spherical_kmeans

    X, _ = _directions()
    torch.manual_seed(1)
    split = _seed(X, 3, 2, "random", torch.Generator().manual_seed(0))
    torch.manual_seed(2)  # the global generator must not matter
    assert torch.equal(split, _seed(X, 3, 2, "random", torch.Generator().manual_seed(0)))
    assert torch.bincount(split).tolist() == [20, 20, 20]  # an equal random split
    w = torch.zeros(60, dtype=torch.float64)
    w[[5, 8, 27]] = 1.0
    differs = False
    for seed in range(6):
        weighted = _seed(X, 2, 2, "kmeans", torch.Generator().manual_seed(seed), w)
        assert torch.equal(weighted, _spherical_kmeans(X, 2, torch.Generator().manual_seed(seed), weights=w))
        differs |= not torch.equal(weighted, _seed(X, 2, 2, "kmeans", torch.Generator().manual_seed(seed)))
    assert differs


@pytest.mark.parametrize("kwargs, words", [
    (dict(delta=0.0), "^delta must"), (dict(delta=-1.0), "^delta must"), (dict(delta=float("nan")), "^delta must"),
    (dict(max_iter=0), "^max_iter must"), (dict(n_init=0), "^n_init must"), (dict(tol=float("inf")), "^tol must"),
    (dict(seed=-1), "^seed must"), (dict(init_size=0), "^init_size must"), (dict(init_size=2.5), "^init_size must")])
def test_bad_settings_name_the_setting(kwargs, words):
    X, _ = planted(n_per=10, k=2, j=1, d=4, seed=0)
    with pytest.raises(MessiError, match=words):
        ProjectiveClustering(2, 1, loss="huber", **kwargs).fit(X)
    assert ProjectiveClustering(2, 1, loss="huber", delta=1e-9, max_iter=1, n_init=1).fit(X).cost_ >= 0
    with pytest.raises(MessiError, match="2 rows cannot fill 3 clusters"):
        ProjectiveClustering(3, 1).fit(X[:2])
    assert ProjectiveClustering(2, 1, n_init=1).fit(X[:2]).labels_.tolist() in ([0, 1], [1, 0])  # n = k is enough


# --- the progress bar, the defaults, the messages (escapes found by mutation testing) ---------

class _Bar:
    """Stands in for tqdm: records how the bar was asked for and what it was told."""

    made: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.n, self.postfix = kwargs, 0, {}
        _Bar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.n += n

    def set_postfix(self, **kwargs):
        self.postfix = kwargs


def test_the_progress_bar_counts_every_planned_step_and_shows_the_best_cost(monkeypatch):
    import messi.clustering as C

    monkeypatch.setattr(C, "tqdm", _Bar)
    X, _ = planted(n_per=30, k=2, j=1, d=4, seed=0)
    m = ProjectiveClustering(2, 1, n_init=2, max_iter=7, seed=0, verbose=True).fit(X)
    assert m.n_iter_ < 7  # runs stopped early: the bar must still be filled to the end
    bar = _Bar.made[-1]
    assert bar.kwargs == {"total": 14, "desc": "projective clustering k=2 j=1", "disable": False, "unit": "step"}
    assert bar.n == 14  # n_init x max_iter, no more, no less
    assert float(bar.postfix["best_cost"]) == pytest.approx(m.cost_, rel=1e-4)
    ProjectiveClustering(2, 1, n_init=1, max_iter=3).fit(X)
    assert _Bar.made[-1].kwargs["disable"] is True  # quiet unless asked
    ProjectiveClustering(2, 1, n_init=1, max_iter=3, verbose=False).fit(X)
    assert _Bar.made[-1].kwargs["disable"] is True


def test_the_documented_defaults():
    m = ProjectiveClustering()
    got = (m.n_clusters, m.rank, m.n_init, m.max_iter, m.tol, m.init, m.seed, m.loss, m.delta, m.init_size, m.verbose)
    assert got == (3, 2, 4, 50, 1e-4, "kmeans", 0, "l2", None, 32768, False)


def test_bad_rows_are_counted_and_the_matrix_named():
    from messi.subspaces import as_matrix

    X = torch.ones(5, 3)
    X[1, 0], X[3, 2], X[3, 1] = float("nan"), float("inf"), float("nan")  # two bad rows, three bad values
    with pytest.raises(MessiError, match=r"^the matrix has NaN or inf values in 2 rows;"):
        as_matrix(X)
    with pytest.raises(MessiError, match=r"^the embedding has NaN"):
        as_matrix(X, "embedding")
    with pytest.raises(MessiError, match=r"^the matrix must hold numbers"):
        as_matrix(np.array([["a", "b"]]))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float16, torch.bfloat16])
def test_integer_and_half_matrices_are_fitted_in_float32(dtype):
    X, _ = planted(n_per=20, k=2, j=1, d=4, seed=1)
    X = (X * 8).round().to(dtype)
    got = ProjectiveClustering(2, 1, n_init=1).fit(X)
    want = ProjectiveClustering(2, 1, n_init=1).fit(X.float())
    assert got.bases_.dtype == torch.float32
    assert torch.equal(got.bases_, want.bases_) and torch.equal(got.labels_, want.labels_)


def test_sample_weight_follows_the_rows_device_and_accepts_tensors_that_need_grad():
    from messi.subspaces import check_sample_weight

    assert check_sample_weight([1.0, 2.0], 2, torch.device("meta")).device.type == "meta"
    assert check_sample_weight([1.0, 2.0], 2).device.type == "cpu"
    w = torch.tensor([1.0, 2.0], requires_grad=True)  # e.g. weights computed by a model
    assert torch.equal(check_sample_weight(w, 2), torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_a_random_split_stays_on_the_rows_device():
    from messi.subspaces import _seed

    labels = _seed(torch.empty(10, 3, device="meta"), 3, 1, "random", torch.Generator().manual_seed(0))
    assert labels.device.type == "meta" and labels.dtype == torch.long


# --- re-seeding starved clusters, by hand ----------------------------------------------------

def _e(d, i, dtype=torch.float64):
    return torch.eye(d, dtype=dtype)[i]


def _spans(basis, v, atol=1e-9):
    """True when the vector ``v`` lies in the row span of ``basis`` (j, d)."""
    return bool(torch.allclose(basis.T @ (basis @ v), v, atol=atol))


def test_a_cluster_whose_rows_all_weigh_zero_is_starved_and_takes_the_heaviest_worst_rows():
    from messi.subspaces import _refit

    d = 6
    X = torch.cat([_e(d, 1).repeat(5, 1) * 3,    # rows 0-4: residual 100, weight 1  -> 100
                   _e(d, 3).repeat(5, 1),        # rows 5-9: residual 10, weight 20  -> 200
                   _e(d, 0).repeat(10, 1) * 2,   # rows 10-19: served well
                   _e(d, 2).repeat(20, 1)])      # rows 20-39: cluster 1, all weight 0
    labels = torch.cat([torch.zeros(20, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    resid = torch.cat([torch.full((5,), 100.0), torch.full((5,), 10.0), torch.zeros(30)]).double()
    w = torch.cat([torch.ones(5), torch.full((5,), 20.0), torch.ones(10), torch.zeros(20)]).double()
    bases, _, _ = _refit(X, labels, resid, 2, 1, w)
    # max(4j, n/4k) = 5 worst rows by weighted residual: rows 5-9, along e3
    assert _spans(bases[1], _e(d, 3))


def test_a_cluster_of_exactly_j_rows_is_fitted_not_reseeded():
    from messi.subspaces import _refit

    g = torch.Generator().manual_seed(0)
    X = torch.cat([100 * torch.randn(30, 5, generator=g, dtype=torch.float64),
                   torch.randn(2, 5, generator=g, dtype=torch.float64)])
    labels = torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(2, dtype=torch.long)])
    resid = torch.cat([torch.full((30,), 50.0), torch.zeros(2)]).double()
    bases, _, _ = _refit(X, labels, resid, 2, 2, None)
    assert _spans(bases[1], X[30]) and _spans(bases[1], X[31])


def test_reseeding_looks_at_the_4j_worst_rows_when_the_matrix_is_small():
    from messi.subspaces import _refit

    d = 4
    X = torch.cat([_e(d, 0).repeat(4, 1), 1000 * _e(d, 1)[None], torch.zeros(15, d, dtype=torch.float64)])
    resid = torch.cat([torch.full((4,), 10.0), torch.tensor([9.0]), torch.zeros(15)]).double()
    labels = torch.zeros(20, dtype=torch.long)  # cluster 1 starved; n/4k = 2 < 4j = 4
    bases, _, _ = _refit(X, labels, resid, 2, 1, None)
    assert _spans(bases[1], _e(d, 0))  # the fifth worst row, huge as it is, is not looked at


def test_a_starved_cluster_keeps_its_own_rows_in_the_new_subspace():
    from messi.subspaces import _refit

    d = 5
    X = torch.cat([_e(d, 0).repeat(10, 1) * 5, torch.randn(9, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
                   _e(d, 3)[None]])
    labels = torch.cat([torch.zeros(19, dtype=torch.long), torch.ones(1, dtype=torch.long)])  # 1 row < j = 2
    resid = torch.cat([torch.full((10,), 30.0), torch.zeros(10)]).double()
    bases, _, _ = _refit(X, labels, resid, 2, 2, None)
    assert _spans(bases[1], _e(d, 0)) and _spans(bases[1], _e(d, 3))  # the worst rows and its own row


# --- spherical k-means -----------------------------------------------------------------------

def test_spherical_kmeans_seeds_by_direction_not_by_length():
    from messi.subspaces import _spherical_kmeans

    g = torch.Generator().manual_seed(0)
    X = torch.cat([_e(4, 0) * (1 + torch.rand(1000, 1, generator=g, dtype=torch.float64)), _e(4, 1).repeat(2, 1)])
    for seed in range(5):
        labels = _spherical_kmeans(X, 2, torch.Generator().manual_seed(seed))
        assert labels[1000] == labels[1001] != labels[0], seed  # two rows are a direction too
        assert bool((labels[:1000] == labels[0]).all()), seed


@pytest.mark.parametrize("weighted", [False, True])
def test_spherical_kmeans_ends_at_a_fixed_point_of_its_weighted_means(weighted):
    from messi.subspaces import _spherical_kmeans

    g = torch.Generator().manual_seed(3)
    angle = 2 * torch.pi * torch.rand(300, generator=g, dtype=torch.float64)
    X = torch.stack([angle.cos(), angle.sin(), 0.3 * torch.randn(300, generator=g, dtype=torch.float64)], 1)
    X = X * (0.5 + torch.rand(300, 1, generator=g, dtype=torch.float64))
    w = 10 * torch.rand(300, generator=g, dtype=torch.float64) ** 3 if weighted else torch.ones(300, dtype=torch.float64)
    labels = _spherical_kmeans(X, 4, torch.Generator().manual_seed(0), n_iter=500, weights=w if weighted else None)
    D = X / X.norm(dim=1, keepdim=True)
    centres = torch.stack([(D[labels == i] * w[labels == i, None]).sum(0) for i in range(4)])
    centres = centres / centres.norm(dim=1, keepdim=True)
    assert torch.equal((D @ centres.T).argmax(1), labels)


# --- what fit hands to the seeding, and how runs end -----------------------------------------

def test_fit_seeds_with_the_weights_unless_they_are_all_equal(monkeypatch):
    import inspect

    import messi.clustering as C

    real, seen = C._seed, []

    def spy(*args, **kwargs):
        seen.append(inspect.signature(real).bind(*args, **kwargs).arguments.get("weights"))
        return real(*args, **kwargs)

    monkeypatch.setattr(C, "_seed", spy)
    X, _ = planted(n_per=20, k=2, j=1, d=4, seed=2)
    w = torch.linspace(0.5, 2.0, 40, dtype=torch.float64)
    ProjectiveClustering(2, 1, n_init=1, max_iter=2).fit(X, sample_weight=w)
    ProjectiveClustering(2, 1, n_init=1, max_iter=2).fit(X, sample_weight=torch.full((40,), 3.0))
    ProjectiveClustering(2, 1, n_init=1, max_iter=2).fit(X)
    assert torch.equal(seen[0], w) and seen[1] is None and seen[2] is None
    one = ProjectiveClustering(1, 1, n_init=1).fit(torch.tensor([[1.0, 2.0]]), sample_weight=[3.0])
    assert one.labels_.tolist() == [0] and one.cost_ == pytest.approx(0.0, abs=1e-9)


def test_bases_are_optimal_for_the_returned_labels_when_max_iter_cuts_the_run():
    X, _ = planted(n_per=60, k=3, j=2, d=6, noise=0.3, seed=4)
    m = ProjectiveClustering(3, 2, n_init=1, max_iter=1, init="random", seed=0).fit(X)
    assert isinstance(m.n_iter_, int) and 1 <= m.n_iter_ <= 2
    for i in range(3):
        best = torch.linalg.svd(X[m.labels_ == i], full_matrices=False).Vh[:2]
        assert torch.allclose(m.bases_[i].T @ m.bases_[i], best.T @ best, atol=1e-9)
    assert m.cost_ == pytest.approx(recomputed_cost(X, m.bases_, m.labels_), rel=1e-9)


def test_delta_changes_huber_only():
    X, _ = planted(n_per=60, k=2, j=2, d=6, noise=0.05, seed=6)
    X = torch.cat([X, 20 * torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)])
    a = ProjectiveClustering(2, 2, n_init=1, max_iter=15, loss="l1", seed=0).fit(X)
    b = ProjectiveClustering(2, 2, n_init=1, max_iter=15, loss="l1", delta=1e6, seed=0).fit(X)
    assert torch.equal(a.bases_, b.bases_) and a.cost_ == b.cost_


def test_with_tol_1_a_robust_run_stops_at_its_first_comparison():
    X, _ = planted(n_per=80, k=3, j=2, d=8, noise=0.1, seed=5)
    m = ProjectiveClustering(3, 2, n_init=1, max_iter=50, loss="huber", delta=0.1, tol=1.0, init="random").fit(X)
    assert len(m.cost_history_) == 2  # any improvement is at most 100%: done after two steps


def test_with_tol_0_a_robust_run_stops_when_its_cost_stops_moving():
    X, _ = planted(n_per=80, k=3, j=2, d=8, noise=0.01, seed=1)
    # delta above every distance: Huber weighs every row 1, so the run reaches an exact fixed point
    h = ProjectiveClustering(3, 2, n_init=1, max_iter=60, loss="huber", delta=10.0, tol=0.0).fit(X).cost_history_
    assert len(h) < 60 and h[-2] == h[-1]


# --- the fast EM step gives the plain algorithm's answer -------------------------------------------


def plain_em(X, labels, k, j, steps, w=None):
    """The textbook loop, written independently of the library: per step, each cluster's
    weighted Gram matrix from scratch, its top-j eigenvectors, every row to the basis that keeps
    the most energy; then the bases of the final labels. Returns (labels, bases (k, j, d), the
    cost after every refit)."""
    X = X.double()
    w = torch.ones(X.shape[0], dtype=torch.float64) if w is None else w.double()

    def refit(labels):
        bases, cost = [], 0.0
        for i in range(k):
            rows, wi = X[labels == i], w[labels == i]
            B = torch.linalg.eigh((rows * wi[:, None]).T @ rows)[1][:, -j:].T
            bases.append(B)
            cost += float((wi * (rows - rows @ B.T @ B).square().sum(1)).sum())
        return torch.stack(bases), cost

    history = []
    for _ in range(steps):
        bases, cost = refit(labels)
        history.append(cost)
        labels = torch.einsum("nd,kjd->nkj", X, bases).square().sum(-1).argmax(1)
    bases, cost = refit(labels)
    return labels, bases, history + [cost]


@given(n_per=st.integers(20, 60), d=st.integers(4, 9), k=st.integers(2, 4), weighted=st.booleans(), data=st.data())
def test_fast_em_steps_equal_the_plain_algorithm(n_per, d, k, weighted, data):
    """Gram matrices updated from the rows that moved, and distances through the complements
    when j > d/2, must give the textbook loop's labels, subspaces and costs, step by step."""
    j = data.draw(st.integers(1, d - 1))
    g = torch.Generator().manual_seed(n_per * d + k)
    X = torch.randn(n_per * k, d, dtype=torch.float64, generator=g)
    w = torch.rand(len(X), dtype=torch.float64, generator=g) + 0.5 if weighted else None
    start = torch.arange(len(X)) % k
    steps = 6
    pc = ProjectiveClustering(k, j, n_init=1, max_iter=steps, tol=-1.0)
    from tqdm import tqdm

    run = pc._lloyd(X, X.square().sum(1), start, tqdm(disable=True), w)
    labels, bases, history = plain_em(X, start, k, j, steps, w)
    if int(torch.bincount(labels, minlength=k).min()) < j:
        return  # a starved cluster: the library re-seeds it, the textbook loop does not
    assert torch.equal(run.labels, labels)  # a run that stops early stops at a fixed point
    n = len(run.history)
    assert run.history[:n] == pytest.approx(history[:n], rel=1e-9, abs=1e-9)
    for i in range(k):
        P, Q = run.bases[i].T @ run.bases[i], bases[i].T @ bases[i]
        assert torch.allclose(P, Q, atol=1e-6)


def test_gram_matrices_updated_from_moved_rows_equal_recomputed_ones():
    from messi.subspaces import _move_rows, cluster_grams

    g = torch.Generator().manual_seed(3)
    X = torch.randn(500, 7, generator=g)  # float32 rows: their products are exact in float64
    w = torch.rand(500, dtype=torch.float64, generator=g)
    old = torch.randint(0, 4, (500,), generator=g)
    new = torch.where(torch.rand(500, generator=g) < 0.2, torch.randint(0, 4, (500,), generator=g), old)
    for weights in (None, w):
        grams = cluster_grams(X, old, 4, weights)
        _move_rows(grams, X, old, new, weights)
        expected = torch.stack([(X[new == i].double() * (1 if weights is None else weights[new == i, None])).T
                                @ X[new == i].double() for i in range(4)])
        assert torch.allclose(grams, expected, rtol=1e-12, atol=1e-10)
    unchanged = cluster_grams(X, old, 4)
    grams = unchanged.clone()
    _move_rows(grams, X, old, old)
    assert torch.equal(grams, unchanged)


def test_distances_through_the_complements_equal_those_through_the_bases():
    from messi.subspaces import split_spectrum

    g = torch.Generator().manual_seed(4)
    X = torch.randn(400, 9, dtype=torch.float64, generator=g)
    grams = [(X[i::3].T @ X[i::3]) for i in range(3)]
    for j in (2, 6):
        parts = [split_spectrum(G, j) for G in grams]
        bases, complements = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
        assert bases.shape == (3, j, 9) and complements.shape == (3, 9 - j, 9)
        # together they are orthonormal bases of the whole space, the leading eigenvectors first
        for B, N in zip(bases, complements):
            full = torch.cat([B, N])
            assert torch.allclose(full @ full.T, torch.eye(9, dtype=X.dtype), atol=1e-10)
        kept = (bases[0] @ grams[0] * bases[0]).sum()
        assert float(kept) == pytest.approx(float(torch.linalg.eigvalsh(grams[0])[-j:].sum()), rel=1e-12)
        by_energy = assign(X, bases)
        by_complement = assign(X, bases, complements=complements)
        assert torch.equal(by_energy[0], by_complement[0])
        assert torch.allclose(by_energy[1], by_complement[1], atol=1e-10)
        by_hand = torch.stack([(X @ N.T).square().sum(1) for N in complements], 1).min(1).values
        assert torch.allclose(by_complement[1], by_hand, atol=1e-12)


def test_the_fit_gives_the_cores_back_to_torch(monkeypatch):
    """Inside a CPU fit torch runs on one thread (the BLAS gets the cores); after it, and after
    a fit that fails, torch has its thread count back."""
    import messi.clustering as clustering

    threads = torch.get_num_threads()
    seen = []
    refit = clustering._refit

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return refit(*args, **kwargs)

    monkeypatch.setattr(clustering, "_refit", spy)
    X, _ = planted(k=2, n_per=30, seed=2)
    ProjectiveClustering(2, 2, n_init=1, max_iter=3).fit(X)
    assert seen and set(seen) == {1} and torch.get_num_threads() == threads

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(clustering, "_refit", boom)
    with pytest.raises(RuntimeError):
        ProjectiveClustering(2, 2, n_init=1, max_iter=3).fit(X)
    assert torch.get_num_threads() == threads


# --- restarts on a sample of the rows ----------------------------------------------------------------


def _spy_on_runs(monkeypatch):
    """Record the number of rows and the weights of every EM run a fit makes."""
    runs = []
    lloyd = ProjectiveClustering._lloyd

    def spy(self, X, sq_norms, labels, bar, sample_weight=None):
        run = lloyd(self, X, sq_norms, labels, bar, sample_weight)
        runs.append((X.shape[0], sample_weight, run))
        return run

    monkeypatch.setattr(ProjectiveClustering, "_lloyd", spy)
    return runs


def test_restarts_run_on_a_sample_and_the_best_is_refined_on_every_row(monkeypatch):
    X, _ = planted(k=3, n_per=200, j=2, d=6, noise=0.05, seed=12)
    runs = _spy_on_runs(monkeypatch)
    pc = ProjectiveClustering(3, 2, n_init=3, init_size=150, seed=0).fit(X)
    assert [r[0] for r in runs] == [150, 150, 150, 600]
    best_start = min(runs[:3], key=lambda r: r[2].cost)[2]
    refined = runs[3][2]
    # the refinement starts from the best sampled run's subspaces, and is what the fit returns
    assert pc.cost_ == refined.cost and pc.cost_history_ == refined.history
    assert torch.equal(pc.labels_, refined.labels) and pc.labels_.shape == (600,)
    assert pc.cost_ == pytest.approx(recomputed_cost(X, pc.bases_, pc.labels_), rel=1e-9)
    first = assign(X, best_start.bases)[0]
    assert refined.history[0] <= recomputed_cost(X, best_start.bases, first) * (1 + 1e-9)
    assert pc.cost_ < 1e-2 * float(X.square().sum())  # the planted subspaces are found


def test_the_sample_keeps_the_weights_of_its_rows(monkeypatch):
    X, _ = planted(k=2, n_per=100, j=2, d=5, noise=0.05, seed=13)
    w = torch.rand(len(X), dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.1
    runs = _spy_on_runs(monkeypatch)
    ProjectiveClustering(2, 2, n_init=2, init_size=80, seed=3).fit(X, sample_weight=w)
    sample = torch.randperm(len(X), generator=torch.Generator().manual_seed(3))[:80]
    assert torch.equal(runs[0][1], w[sample]) and torch.equal(runs[2][1], w)


def test_small_matrices_and_init_size_none_restart_on_every_row(monkeypatch):
    X, _ = planted(k=2, n_per=100, j=2, d=5, noise=0.05, seed=14)
    runs = _spy_on_runs(monkeypatch)
    a = ProjectiveClustering(2, 2, n_init=2, init_size=200, seed=0).fit(X)
    b = ProjectiveClustering(2, 2, n_init=2, init_size=None, seed=0).fit(X)
    assert [r[0] for r in runs] == [200] * 4
    assert torch.equal(a.bases_, b.bases_) and a.cost_ == b.cost_


def test_a_sample_without_weight_falls_back_to_every_row(monkeypatch):
    X, _ = planted(k=2, n_per=100, j=2, d=5, noise=0.05, seed=15)
    w = torch.zeros(len(X), dtype=torch.float64)
    w[torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[150:]] = 1.0  # outside the sample
    runs = _spy_on_runs(monkeypatch)
    ProjectiveClustering(2, 2, n_init=2, init_size=150, seed=0).fit(X, sample_weight=w)
    assert [r[0] for r in runs] == [200, 200]


def test_the_progress_bar_plans_the_refinement_too(monkeypatch):
    import messi.clustering as C

    monkeypatch.setattr(C, "tqdm", _Bar)
    X, _ = planted(k=2, n_per=100, j=2, d=5, noise=0.05, seed=16)
    m = ProjectiveClustering(2, 2, n_init=3, max_iter=7, init_size=50, verbose=True).fit(X)
    bar = _Bar.made[-1]
    assert bar.kwargs["total"] == (3 + 1) * 7 and bar.n == bar.kwargs["total"]
    assert float(bar.postfix["best_cost"]) == pytest.approx(m.cost_, rel=1e-4)  # the refined cost


# --- escapes of the fast step found by mutation testing ---------------------------------------------


def test_distances_over_many_row_blocks_equal_one_product(monkeypatch):
    import messi.subspaces as C

    g = torch.Generator().manual_seed(8)
    X = torch.randn(103, 6, dtype=torch.float64, generator=g)
    bases = torch.linalg.qr(torch.randn(3, 6, 2, dtype=torch.float64, generator=g))[0].transpose(1, 2)
    expected = torch.stack([(X @ B.T).square().sum(1) for B in bases], 1)
    monkeypatch.setattr(C, "_BLOCK_ELEMENTS", 60)  # 10 rows a block: 11 blocks, the last short
    got = C.squared_norms_in(X, bases)
    assert got.shape == (103, 3) and torch.allclose(got, expected, atol=1e-12)
    assert torch.allclose(C.gram_matrix(X), X.T @ X, atol=1e-12)


def test_gram_updates_reach_every_cluster_when_k_exceeds_d():
    from messi.subspaces import _move_rows, cluster_grams

    g = torch.Generator().manual_seed(5)
    X = torch.randn(90, 2, generator=g)
    old = torch.arange(90) % 5  # k = 5 clusters of 2-D rows
    new = (old + 1) % 5
    grams = cluster_grams(X, old, 5)
    _move_rows(grams, X, old, new)
    assert torch.allclose(grams, cluster_grams(X, new, 5), atol=1e-10)


def test_a_starved_cluster_is_reseeded_from_the_weighted_worst_rows():
    """Two worst rows, one much heavier: the new subspace (j=1) leans to the heavy one, as the
    top eigenvector of their weighted Gram matrix does."""
    from messi.subspaces import _refit

    d = 3
    heavy, light = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64)
    X = torch.stack([heavy] * 2 + [light] * 2 + [_e(d, 2)] * 4)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0])  # cluster 1 starved
    resid = torch.tensor([1.0, 1.0, 1.0, 1.0, 0, 0, 0, 0], dtype=torch.float64)
    w = torch.tensor([9.0, 9.0, 1.0, 1.0, 1, 1, 1, 1], dtype=torch.float64)
    bases, _, _ = _refit(X, labels, resid, 2, 1, w)
    top = torch.arange(4)  # m = max(4j, n // 4k) = 4 worst rows
    expected = torch.linalg.eigh((X[top] * w[top, None]).T @ X[top])[1][:, -1]
    assert abs(float(bases[1, 0] @ expected)) == pytest.approx(1.0, abs=1e-9)
    unweighted = torch.linalg.eigh(X[top].T @ X[top])[1][:, -1]
    assert abs(float(bases[1, 0] @ unweighted)) < 0.999  # the weights made a difference


def test_the_final_refit_of_a_cut_run_reseeds_a_cluster_still_starved():
    """From every row in one cluster, one step re-seeds both starved clusters with the same
    subspace, so one of them is still empty when max_iter cuts the run: the final refit must
    re-seed it again from the (weighted) worst rows, as _refit does by hand."""
    from tqdm import tqdm

    from messi.subspaces import _refit, assign

    X, _ = planted(k=3, n_per=40, j=2, d=6, noise=0.05, seed=21)
    w = torch.rand(len(X), dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.5
    for weights in (None, w):
        pc = ProjectiveClustering(3, 2, n_init=1, max_iter=1)
        start = torch.zeros(len(X), dtype=torch.long)
        run = pc._lloyd(X, X.square().sum(1), start, tqdm(disable=True), weights)
        first, _, _ = _refit(X, start, X.square().sum(1), 3, 2, weights)
        labels, resid = assign(X, first)
        assert torch.equal(run.labels, labels)
        assert int(torch.bincount(labels, minlength=3).min()) == 0  # still starved: the case under test
        bases, cost, _ = _refit(X, labels, resid, 3, 2, weights)
        assert torch.allclose(run.bases, bases, atol=1e-9) and run.history[-1] == pytest.approx(cost, rel=1e-9)


def test_wide_subspaces_are_assigned_through_their_complements_and_grams_follow_moves(monkeypatch):
    import messi.clustering as C

    seen, grams_made = [], []
    assign, cluster_grams = C.assign, C.cluster_grams

    def spy_assign(X, bases, sq_norms=None, complements=None):
        seen.append((bases.shape[1], None if complements is None else complements.shape[1]))
        return assign(X, bases, sq_norms, complements)

    def spy_grams(*args, **kwargs):
        grams_made.append(1)
        return cluster_grams(*args, **kwargs)

    monkeypatch.setattr(C, "assign", spy_assign)
    monkeypatch.setattr(C, "cluster_grams", spy_grams)
    X, _ = planted(k=2, n_per=60, j=4, d=7, noise=0.05, seed=22)
    for j, complement in ((4, 3), (3, None), (2, None)):  # d - j < j only for j = 4 of d = 7
        seen.clear(), grams_made.clear()
        m = ProjectiveClustering(2, j, n_init=1, max_iter=6, tol=-1.0, init="random").fit(X)
        assert seen and set(seen) == {(j, complement)}
        assert len(grams_made) == 1  # once per run: later steps update them from the moved rows
        assert m.n_iter_ >= 2


def test_a_start_sample_of_small_but_positive_weight_is_kept(monkeypatch):
    X, _ = planted(k=2, n_per=100, j=2, d=5, noise=0.05, seed=13)
    w = torch.full((len(X),), 1e-4, dtype=torch.float64)  # the sample's weights sum to 0.008
    runs = _spy_on_runs(monkeypatch)
    ProjectiveClustering(2, 2, n_init=1, init_size=80).fit(X, sample_weight=w)
    assert [r[0] for r in runs] == [80, 200]


def test_init_size_one_is_allowed():
    X, _ = planted(k=2, n_per=50, j=1, d=3, noise=0.01, seed=3)
    m = ProjectiveClustering(2, 1, n_init=2, init_size=1).fit(X)
    assert m.labels_.shape == (100,) and m.cost_ == pytest.approx(recomputed_cost(X, m.bases_, m.labels_), rel=1e-9)


def test_weights_are_checked_into_float64():
    from messi.subspaces import check_sample_weight

    for w in (torch.ones(3, dtype=torch.float32), np.ones(3, dtype=np.int64), [1, 2, 3]):
        assert check_sample_weight(w, 3).dtype == torch.float64
