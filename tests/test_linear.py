"""FactorizedLinear / ProjectiveLinear: they compute x @ W.T + b for the W they rebuild, hold the
factors they were given, pass gradients to every factor, and behave as nn.Linear."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from messi.factorize import Factors, factorize
from messi.linear import FactorizedLinear, ProjectiveLinear


def _random_factors(m, p, k, j, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(k, (m,), generator=g)
    used = min(k, m)
    labels[:used] = torch.arange(used)  # every cluster used (with k > m, some are left empty)
    return Factors(torch.randn(m, j, generator=g, dtype=torch.float64),
                   torch.randn(k, j, p, generator=g, dtype=torch.float64), labels)


@given(out=st.integers(2, 9), inp=st.integers(2, 9), k=st.integers(1, 4), j=st.integers(1, 3),
       orientation=st.sampled_from(["rows", "columns"]), bias=st.booleans(), seed=st.integers(0, 99))
def test_projective_linear_computes_its_rebuilt_weight(out, inp, k, j, orientation, bias, seed):
    m, p = (out, inp) if orientation == "rows" else (inp, out)
    factors = _random_factors(m, p, k, j, seed)
    b = torch.randn(out, dtype=torch.float64) if bias else None
    layer = ProjectiveLinear.from_factors(factors, orientation, b)
    expected_w = factors.reconstruct() if orientation == "rows" else factors.reconstruct().T
    # the weight is an oracle built row by row from the factors, not by the layer
    oracle = torch.stack([factors.coords[r] @ factors.bases[factors.labels[r]] for r in range(m)])
    assert torch.allclose(expected_w, oracle if orientation == "rows" else oracle.T)
    assert torch.allclose(layer.weight, expected_w, atol=1e-12)
    x = torch.randn(2, 3, inp, dtype=torch.float64)
    assert torch.allclose(layer(x), F.linear(x, expected_w, b), atol=1e-10)
    assert (layer.in_features, layer.out_features) == (inp, out)


@given(out=st.integers(2, 9), inp=st.integers(2, 9), j=st.integers(1, 3), bias=st.booleans(), seed=st.integers(0, 99))
def test_factorized_linear_computes_up_times_down(out, inp, j, bias, seed):
    factors = _random_factors(out, inp, 1, j, seed)
    b = torch.randn(out, dtype=torch.float64) if bias else None
    layer = FactorizedLinear.from_factors(factors, b)
    W = factors.coords @ factors.bases[0]
    assert torch.allclose(layer.weight, W)
    x = torch.randn(4, inp, dtype=torch.float64)
    assert torch.allclose(layer(x), x @ W.T + (0 if b is None else b), atol=1e-10)


@pytest.mark.parametrize("orientation", ["rows", "columns"])
def test_gradients_reach_every_factor(orientation):
    layer = ProjectiveLinear.from_factors(_random_factors(6 if orientation == "rows" else 5,
                                                          5 if orientation == "rows" else 6, 3, 2, 0),
                                          orientation, torch.zeros(6, dtype=torch.float64))
    layer(torch.randn(7, 5, dtype=torch.float64)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        if name == "bases":  # every cluster's basis is used by some row, so every one learns
            assert all(p.grad[i].abs().sum() > 0 for i in range(3))
    svd = FactorizedLinear.from_factors(_random_factors(6, 5, 1, 2, 1), torch.zeros(6, dtype=torch.float64))
    svd(torch.randn(7, 5, dtype=torch.float64)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in svd.parameters())


def test_fitted_layers_approximate_a_real_linear_layer_as_the_fit_says():
    torch.manual_seed(0)
    lin = nn.Linear(12, 20)
    for orientation, M in (("rows", lin.weight.detach()), ("columns", lin.weight.detach().T)):
        f = factorize(M, "messi", 2, 3, n_init=1, max_iter=5)
        layer = ProjectiveLinear.from_factors(f, orientation, lin.bias.detach())
        x = torch.randn(5, 12)
        approx_w = f.reconstruct() if orientation == "rows" else f.reconstruct().T
        assert torch.allclose(layer(x), F.linear(x, approx_w, lin.bias), atol=1e-5)
        assert layer.num_factor_parameters() == M.shape[0] * 3 + 2 * 3 * M.shape[1]


def test_labels_changed_in_place_are_seen():
    """Loading writes the cluster ids in place after the layer was built: the cached sort must follow."""
    factors = _random_factors(6, 4, 2, 2, 3)
    layer = ProjectiveLinear.from_factors(factors)
    x = torch.randn(3, 4, dtype=torch.float64)
    layer(x)  # builds the cache
    new = 1 - factors.labels
    layer.labels.copy_(new)
    W = torch.stack([factors.coords[r] @ factors.bases[new[r]] for r in range(6)])
    assert torch.allclose(layer(x), x @ W.T, atol=1e-10)


def test_an_unknown_orientation_is_refused():
    from messi import MessiError

    with pytest.raises(MessiError, match="rows or columns"):
        ProjectiveLinear(4, 5, 2, 2, orientation="diagonal")
