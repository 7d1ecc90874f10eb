"""Drop-in replacements for ``nn.Linear`` whose weight W (out, in) is stored in factored form.

- ``FactorizedLinear`` (SVD, rank j): y = up (down x) + b; j * (in + out) parameters.
- ``ProjectiveLinear`` (MESSI): the rows (output neurons) or the columns (input features) of W
  are split into k clusters, each near its own j-dimensional subspace.

  rows:    W[r] = coords[r] @ bases[labels[r]]          coords (out, j), bases (k, j, in)
           z_i = bases[i] x (one product for all i), then the outputs of cluster i read their
           coordinates: y[rows_i] = coords[rows_i] z_i. Parameters out*j + k*j*in.
  columns: W[:, c] = bases[labels[c]].T @ coords[c]      coords (in, j), bases (k, j, out)
           z_i = coords[cols_i].T x[cols_i] per cluster, then y = sum_i bases[i].T z_i (one
           product). Parameters in*j + k*j*out.

  Either way: k small products, no per-row copies of a basis. The cheaper orientation has the
  larger of (in, out) on the coordinate side.

Both keep ``nn.Linear``'s interface: ``in_features``, ``out_features``, ``bias`` and a ``weight``
property that rebuilds W (differentiable) for code that reads it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ORIENTATIONS
from .errors import MessiError
from .factorize import Factors
from .layers import _label_dtype
from .storage import CoordinateStorage


class _FactoredLinear(CoordinateStorage):
    """Shared plumbing: sizes, bias, repr, parameter count."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def num_factor_parameters(self) -> int:
        """Numbers stored in the factors (the bias not included; quantized coordinates count as numbers)."""
        coords = 0 if self.bits is None else getattr(self, f"{self._coord_name}_scale").shape[0] * self.rank
        return coords + sum(p.numel() for name, p in self.named_parameters() if name != "bias")

    def _copy_bias(self, bias: torch.Tensor | None) -> None:
        if self.bias is not None and bias is not None:
            with torch.no_grad():
                self.bias.copy_(bias)


class FactorizedLinear(_FactoredLinear):
    """Rank-j ``nn.Linear``: ``y = (x @ down.T) @ up.T + bias``.

    Parameters: down (rank, in_features), up (out_features, rank), bias (out_features) or None.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__(in_features, out_features, rank, bias)
        self.down = nn.Parameter(torch.zeros(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))

    _coord_name, _basis_names = "up", ("down",)

    @classmethod
    def from_factors(cls, factors: Factors, bias: torch.Tensor | None = None) -> "FactorizedLinear":
        """Layer holding the factors of W (out, in): coords (out, j) become ``up``, the one basis
        (j, in) ``down``; ``bias`` (out,) or None."""
        (out, j), d = factors.coords.shape, factors.bases.shape[2]
        layer = cls(d, out, j, bias is not None).to(factors.coords.dtype)
        with torch.no_grad():
            layer.up.copy_(factors.coords)
            layer.down.copy_(factors.bases[0])
        layer._copy_bias(bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        return F.linear(F.linear(x, self._basis("down")), self._coords(), self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """W (out_features, in_features), rebuilt."""
        return self._coords() @ self._basis("down")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, bias={self.bias is not None}"


class ProjectiveLinear(_FactoredLinear):
    """MESSI ``nn.Linear``: the rows or columns of W in k subspaces of dimension ``rank``.

    Parameters: coords (m, rank), bases (n_clusters, rank, p), with (m, p) = (out, in) for
    ``orientation="rows"`` and (in, out) for ``"columns"``; bias (out,) or None.
    Buffer: labels (m,), the cluster of every row (or column), the smallest integer dtype.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, n_clusters: int,
                 orientation: str = "rows", bias: bool = True):
        super().__init__(in_features, out_features, rank, bias)
        if orientation not in ORIENTATIONS:
            raise MessiError(f"orientation must be rows or columns, got {orientation!r}")
        self.orientation = orientation
        self.n_clusters = n_clusters
        m, p = (out_features, in_features) if orientation == "rows" else (in_features, out_features)
        self.coords = nn.Parameter(torch.zeros(m, rank))
        self.bases = nn.Parameter(torch.zeros(n_clusters, rank, p))
        self.register_buffer("labels", torch.zeros(m, dtype=_label_dtype(n_clusters)))

    _basis_names = ("bases",)

    @classmethod
    def from_factors(cls, factors: Factors, orientation: str = "rows",
                     bias: torch.Tensor | None = None) -> "ProjectiveLinear":
        """Layer holding the factors of W (orientation "rows") or of W.T ("columns")."""
        (m, j), (k, _, p) = factors.coords.shape, factors.bases.shape
        out, inp = (m, p) if orientation == "rows" else (p, m)
        layer = cls(inp, out, j, k, orientation, bias is not None).to(factors.coords.dtype)
        with torch.no_grad():
            layer.coords.copy_(factors.coords)
            layer.bases.copy_(factors.bases)
            layer.labels.copy_(factors.labels.to(layer.labels.dtype))
        layer._copy_bias(bias)
        return layer

    @property
    def label_bytes(self) -> int:
        """Bytes of the cluster-id buffer (not a parameter; reported separately)."""
        return self.labels.numel() * self.labels.element_size()

    def _clusters(self):
        """(order, counts, inverse): rows sorted by cluster, run lengths, and the permutation
        that undoes the sort; cached until ``labels`` changes (loading writes it in place)."""
        def build():
            labels = self.labels.long()
            order = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels, minlength=self.n_clusters).tolist()
            return order, counts, torch.argsort(order)

        return self._cached_plan("_plan", (self.labels,), build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        order, counts, inverse = self._clusters()
        k, j = self.n_clusters, self.rank
        coords = torch.split(self._coords(order), counts)
        bases = self._basis("bases")
        if self.orientation == "rows":
            z = F.linear(x, bases.reshape(k * j, -1))  # (..., k*j): every cluster's coordinates
            parts = [F.linear(z[..., i * j:(i + 1) * j], c) for i, c in enumerate(coords)]
            y = torch.cat(parts, dim=-1).index_select(-1, inverse)
            return y if self.bias is None else y + self.bias
        xs = torch.split(x.index_select(-1, order), counts, dim=-1)
        z = torch.cat([xi @ c for xi, c in zip(xs, coords)], dim=-1)  # (..., k*j)
        return F.linear(z, bases.reshape(k * j, -1).T, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """W (out_features, in_features), rebuilt (differentiable)."""
        order, counts, inverse = self._clusters()
        coords, bases = torch.split(self._coords(order), counts), self._basis("bases")
        rows = torch.cat([c @ bases[i] for i, c in enumerate(coords)]).index_select(0, inverse)
        return rows if self.orientation == "rows" else rows.T

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"n_clusters={self.n_clusters}, orientation={self.orientation}, bias={self.bias is not None}")
