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
