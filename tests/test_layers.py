import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from messi import FactorizedEmbedding, ProjectiveEmbedding, TiedOutputEmbedding
from messi.factorize import messi_factorize, svd_factorize


def table(n=50, d=12, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def layers(A, pad=None):
    padrow = None if pad is None else A[pad]
    svd = FactorizedEmbedding.from_factors(svd_factorize(A, 4), pad, padrow)
    ms = ProjectiveEmbedding.from_factors(messi_factorize(A, 3, 4, seed=0), pad, padrow)
    return svd, ms


@pytest.mark.parametrize("which", [0, 1])
def test_lookup_equals_rebuilt_table(which):
    A = table()
    layer = layers(A)[which]
    ids = torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(1))
    out = layer(ids)
    assert out.shape == (4, 7, 12)
    assert torch.allclose(out, layer.weight[ids], atol=1e-6)
    assert torch.allclose(out, nn.functional.embedding(ids, layer.weight), atol=1e-6)


def test_messi_lookup_equals_factors():
    A = table()
    f = messi_factorize(A, 3, 4, seed=0)
    layer = ProjectiveEmbedding.from_factors(f)
    assert torch.allclose(layer.weight, f.reconstruct(), atol=1e-6)


@pytest.mark.parametrize("which", [0, 1])
def test_gradients_reach_both_factors_and_padding_is_frozen(which):
    A = table()
    layer = layers(A, pad=0)[which]
    ids = torch.tensor([[0, 3, 9, 0, 17, 33]])
    out = layer(ids)
    assert torch.equal(out[0, 0], A[0]) and torch.equal(out[0, 3], A[0])  # exact padding row
    out.square().sum().backward()
    basis = layer.basis if which == 0 else layer.bases
    assert layer.coords.grad is not None and basis.grad is not None
    assert layer.coords.grad[[3, 9, 17, 33]].abs().sum() > 0
    assert basis.grad.abs().sum() > 0
    assert layer.coords.grad[0].abs().sum() == 0  # padding row gets no gradient, as nn.Embedding
    assert not any(b.requires_grad for b in layer.buffers())


@pytest.fixture(params=[("svd", 0), ("messi", 1), ("messi one product", 1)], ids=lambda p: p[0])
def padded(request, monkeypatch):
    """(A, a factored layer of A with padding row 2): SVD, and MESSI through both of its head
    paths (one product per cluster; every token against every subspace in one product)."""
    name, which = request.param
    monkeypatch.setattr(ProjectiveEmbedding, "every_cluster_width", 10**9 if name.endswith("one product") else 0)
    A = table()
    return A, layers(A, pad=2)[which]


def test_attend_equals_product_with_table(padded):
    _, layer = padded
    h = torch.randn(3, 5, 12)
    assert torch.allclose(layer.attend(h), h @ layer.weight.T, atol=1e-5)
    head = TiedOutputEmbedding(layer, nn.Parameter(torch.randn(50)))
    assert torch.allclose(head(h), h @ layer.weight.T + head.bias, atol=1e-5)
    assert len(list(head.parameters())) == 1  # the table is referenced, not owned
    assert (head.in_features, head.out_features) == (12, 50)  # nn.Linear's names, for code that reads them
    no_bias = TiedOutputEmbedding(layer)
    assert no_bias.bias is None and torch.equal(no_bias(h), layer.attend(h))


def test_attend_gradients_equal_those_of_the_rebuilt_table(padded):
    _, layer = padded
    h = torch.randn(7, 12, requires_grad=True)
    g = torch.randn(7, 50)
    (layer.attend(h) * g).sum().backward()
    factored = [p.grad.clone() for p in (h, *layer.parameters())]
    for p in (h, *layer.parameters()):
        p.grad = None
    ((h @ layer.weight.T) * g).sum().backward()  # the same scores through the rebuilt (n, d) table
    for got, p in zip(factored, (h, *layer.parameters())):
        assert torch.allclose(got, p.grad, atol=1e-4)


def test_label_buffer_is_small_and_not_a_parameter():
    layer = ProjectiveEmbedding(1000, 16, 4, 3)
    assert layer.labels.dtype == torch.uint8 and layer.label_bytes == 1000
    assert "labels" not in dict(layer.named_parameters())


@given(n=st.integers(5, 200), d=st.integers(2, 64), k=st.integers(1, 6), data=st.data())
def test_parameter_counts(n, d, k, data):
    j = data.draw(st.integers(1, d - 1))
    assert FactorizedEmbedding(n, d, j).num_factor_parameters() == n * j + j * d
    ms = ProjectiveEmbedding(n, d, j, k)
    assert ms.num_factor_parameters() == n * j + k * j * d
    assert ms(torch.zeros(2, 3, dtype=torch.long)).shape == (2, 3, d)


@pytest.mark.parametrize("which", ["svd", "messi"])
def test_padding_row_without_a_given_vector_is_zero(which):
    X = torch.randn(20, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    factors = svd_factorize(X, 2) if which == "svd" else messi_factorize(X, 2, 2, seed=0, n_init=1)
    cls = FactorizedEmbedding if which == "svd" else ProjectiveEmbedding
    layer = cls.from_factors(factors, padding_idx=3)
    assert layer.coords.dtype == torch.float64
    assert torch.equal(layer(torch.tensor([3]))[0], torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(layer(torch.tensor([4]))[0], factors.reconstruct()[4])
    no_pad = cls.from_factors(factors, padding_idx=None, padding_vector=torch.ones(6))
    assert torch.allclose(no_pad.weight, factors.reconstruct())  # a vector without an index is unused


def test_cluster_ids_use_the_smallest_integer_type_that_holds_them():
    from messi.layers import _label_dtype

    assert [_label_dtype(k) for k in (1, 256, 257, 32768, 32769)] == [
        torch.uint8, torch.uint8, torch.int16, torch.int16, torch.int32]


def test_negative_padding_index_counts_from_the_end_and_rank_is_kept():
    layer = ProjectiveEmbedding(50, 12, 4, 3, padding_idx=-1)
    assert layer.padding_idx == 49 and layer.rank == 4 and layer.n_clusters == 3
    assert FactorizedEmbedding(50, 12, 5, padding_idx=-2).padding_idx == 48


def test_exact_rows_are_looked_up_and_scored_exactly(padded):
    A, layer = padded
    which = int(isinstance(layer, ProjectiveEmbedding))
    before = layer.weight.detach().clone()
    exact = torch.tensor([7, 3, 40])
    layer.keep_exact_(exact, A[exact])
    table_now = layer.weight.detach()
    assert torch.equal(table_now[exact], A[exact])  # the stored rows themselves
    others = torch.ones(50, dtype=torch.bool)
    others[exact] = False
    assert torch.equal(table_now[others], before[others])  # the rest still factored
    assert torch.equal(table_now[2], A[2])  # the padding row as before
    h = torch.randn(4, 12)
    assert torch.allclose(layer.attend(h), h @ table_now.T, atol=1e-5)
    assert layer.num_exact == 3 and layer.exact_slot.dtype == torch.int16
    assert layer.coords.shape == (47, 4)  # the exact rows' coordinates are dropped
    assert layer.num_factor_parameters() == (47 * 4 + (4 if which == 0 else 3 * 4) * 12) + 3 * 12
    assert "exact_rows=3" in repr(layer)
    layer(torch.tensor([[7, 1]])).sum().backward()  # the exact rows train like the bases
    assert layer.exact_values.grad[0].abs().sum() > 0 and layer.exact_values.grad[1:].abs().sum() == 0


def test_exact_rows_must_be_distinct_rows_of_the_table():
    layer = layers(table())[1]
    with pytest.raises(ValueError, match="distinct"):
        layer.keep_exact_(torch.tensor([1, 1]), torch.zeros(2, 12))
    with pytest.raises(ValueError, match="distinct and in"):
        layer.keep_exact_(torch.tensor([50]), torch.zeros(1, 12))
    with pytest.raises(ValueError, match="rows"):
        layer.keep_exact_(torch.tensor([1]), torch.zeros(1, 11))
