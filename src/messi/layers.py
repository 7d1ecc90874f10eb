"""Drop-in replacements for ``nn.Embedding`` that store the table in factored form.

- ``FactorizedEmbedding`` (SVD): coords (n, j) @ basis (j, d); n*j + j*d parameters.
- ``ProjectiveEmbedding`` (MESSI): token t -> coords[t] (j) @ bases[labels[t]] (j, d);
  n*j + k*j*d parameters plus a small integer buffer ``labels`` (n,).

Both keep ``nn.Embedding``'s interface: ``forward(input_ids)``, ``num_embeddings``,
``embedding_dim``, ``padding_idx`` (its row is a constant buffer that gets no gradient, as in
``nn.Embedding``), and a ``weight`` property that rebuilds the full (n, d) table for code that
reads it. ``attend(hidden)`` computes ``hidden @ weight.T`` without building the table, for tied
output heads (``TiedOutputEmbedding``). ``keep_exact_`` stores some rows (a vocabulary's most
used tokens) as they are, beside the factors: lookups and scores read them instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .factorize import Factors
from .storage import CoordinateStorage


def _label_dtype(k: int) -> torch.dtype:
    """Smallest integer dtype that holds cluster ids 0..k-1."""
    return torch.uint8 if k <= 256 else torch.int16 if k <= 32768 else torch.int32


def _slot_dtype(m: int) -> torch.dtype:
    """Smallest integer dtype that holds -1..m-1."""
    return torch.int16 if m < 32768 else torch.int32


class _LowRankEmbedding(CoordinateStorage):
    """Shared plumbing: padding row, flattening, ``weight``; subclasses define ``_lookup``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None):
        super().__init__()
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.rank = rank
        self.padding_idx = padding_idx
        self.coords = nn.Parameter(torch.zeros(num_embeddings, rank))
        if padding_idx is not None:
            self.register_buffer("padding_vector", torch.zeros(embedding_dim))
        # rows stored exactly (``keep_exact_``); None until some are
        self.register_parameter("exact_values", None)
        self.register_buffer("exact_ids", None)
        self.register_buffer("exact_slot", None)

    def keep_exact_(self, ids: torch.Tensor, rows: torch.Tensor) -> "_LowRankEmbedding":
        """Store the rows ``ids`` (m,) of the table exactly, in place: ``rows`` (m, d) are looked
        up and scored instead of their factored approximation (a large vocabulary's most used
        tokens: a few thousand rows carry most of any text). Adds the parameter ``exact_values``
        (m, d), the buffer ``exact_ids`` (m,) int64 and the buffer ``exact_slot`` (n,): each row's
        index in ``exact_values``, -1 for the factored rows (the smallest integer dtype that holds
        m). Their coordinates are dropped: ``coords`` becomes (n - m, j), the factored rows in
        token order (an exact row paying for coordinates nobody reads would cost the rest of
        the table rank). Call it before ``quantize_``."""
        ids = torch.as_tensor(ids).long().reshape(-1)
        if rows.shape != (ids.numel(), self.embedding_dim):
            raise ValueError(f"exact rows need ids (m,) and rows (m, {self.embedding_dim}), got {tuple(rows.shape)}")
        if not ids.is_meta and ids.numel():  # on the meta device (loading) there is nothing to check yet
            if int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings or ids.unique().numel() != ids.numel():
                raise ValueError(f"exact row ids must be distinct and in [0, {self.num_embeddings})")
        if self.bits is not None or self.exact_values is not None:
            raise ValueError("keep_exact_ goes once, before quantize_")
        device, dtype = self.device, self.compute_dtype
        slot = torch.full((self.num_embeddings,), -1, dtype=_slot_dtype(ids.numel()), device=device)
        slot[ids.to(device)] = torch.arange(ids.numel(), device=device).to(slot.dtype)
        self.exact_values = nn.Parameter(rows.detach().to(device=device, dtype=dtype).clone())
        self.exact_ids, self.exact_slot = ids.to(device), slot
        coords = self.coords.detach()
        kept = (torch.empty(self.num_embeddings - ids.numel(), self.rank, dtype=coords.dtype, device=coords.device)
                if coords.is_meta else coords[(slot < 0).to(coords.device)])
        self.coords = nn.Parameter(kept, requires_grad=self.coords.requires_grad)
        return self

    def _factored_rows(self):
        """(slot, tokens): each token's row of ``coords`` (n,) int64 (0 for exact rows: never
        read) and the tokens that have one (n - m,) int64, in order; cached until
        ``exact_slot`` changes (loading writes it in place)."""
        def build():
            factored = self.exact_slot < 0
            return (torch.cumsum(factored, 0) - 1).clamp(min=0), torch.nonzero(factored).squeeze(1)

        return self._cached_plan("_rows_plan", (self.exact_slot,), build)

    def coordinate_tokens(self) -> torch.Tensor | None:
        """Token ids (n - m,) whose rows ``coords`` holds, in order; None when it holds every row."""
        return None if self.exact_slot is None else self._factored_rows()[1]

    def _coordinate_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if self.exact_slot is None else self._factored_rows()[0][ids]

    def _spread(self, scores: torch.Tensor) -> torch.Tensor:
        """(M, n) scores from ``scores`` (M, n - m) of the factored rows; the exact rows'
        columns are left unset (``attend`` writes them)."""
        if self.exact_slot is None:
            return scores
        out = scores.new_empty(scores.shape[0], self.num_embeddings)
        out[:, self._factored_rows()[1]] = scores
        return out

    @property
    def num_exact(self) -> int:
        """Rows stored exactly (``keep_exact_``)."""
        return 0 if self.exact_values is None else self.exact_values.shape[0]

    def _hold(self, factors: Factors, padding_vector: torch.Tensor | None):
        """Take ``factors.coords`` (n, j) as the coordinates without copying them (a vocabulary's
        coordinates are the largest tensor of a fit: a copy would add their size to its peak
        memory) and set the padding row (d) (zeros when None); the layer was built on the meta
        device and its bases already set."""
        coords = factors.coords.detach()
        self.coords = nn.Parameter(coords if coords.is_contiguous() else coords.contiguous())
        if self.padding_idx is not None:
            self.padding_vector = (torch.zeros(self.embedding_dim, dtype=coords.dtype, device=coords.device)
                                   if padding_vector is None else
                                   padding_vector.detach().to(device=coords.device, dtype=coords.dtype).clone())
        return self

    #: multiplies looked-up rows (a Gemma embedding's ``embed_scale``); None: none
    embed_scale: float | None = None

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _attend(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings (..., d) of ``input_ids`` (...) of any shape."""
        out = self._rows(input_ids.reshape(-1))
        if self.embed_scale is not None:  # the family's scale of looked-up rows (Gemma: sqrt(d)); not the head's
            out = out * torch.tensor(self.embed_scale, dtype=out.dtype)
        return out.reshape(*input_ids.shape, self.embedding_dim)

    def _rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Rows (m, d) of the table itself for the ids ``flat`` (m,), the padding row exact."""
        if not torch.compiler.is_compiling() and flat.numel():
            low, high = (int(x) for x in torch.aminmax(flat))  # one pass, one sync
            if low < 0 or high >= self.num_embeddings:
                raise IndexError(f"token ids must be in [0, {self.num_embeddings}), got {low}..{high}; "
                                 "the tokenizer does not match this model's table")
        out = self._lookup(flat)
        if self.exact_values is not None:
            slot = self.exact_slot[flat].long()
            exact = F.embedding(slot.clamp(min=0), self.exact_values).to(out.dtype)
            out = torch.where((slot >= 0)[:, None], exact, out)
        if self.padding_idx is not None:
            pad = (flat == self.padding_idx)[:, None]
            out = torch.where(pad, self.padding_vector.to(out.dtype), out)
        return out

    def attend(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores ``hidden @ weight.T``: (..., d) -> (..., n), without the (n, d) table."""
        flat = hidden.reshape(-1, self.embedding_dim)
        logits = self._attend(flat)
        if self.exact_values is not None:
            logits[:, self.exact_ids] = flat @ self.exact_values.to(flat.dtype).T
        if self.padding_idx is not None:
            logits[:, self.padding_idx] = flat @ self.padding_vector.to(flat.dtype)
        return logits.reshape(*hidden.shape[:-1], self.num_embeddings)

    @property
    def weight(self) -> torch.Tensor:
        """The full table (n, d), rebuilt on each access (differentiable)."""
        return self._rows(torch.arange(self.num_embeddings, device=self.device))  # unscaled: as the head reads it

    def num_factor_parameters(self) -> int:
        """Numbers stored: coordinates plus bases (quantized coordinates count as numbers)."""
        coords = self.coords.numel() if self.bits is None else (self.num_embeddings - self.num_exact) * self.rank
        exact = 0 if self.exact_values is None else self.exact_values.numel()
        return coords + exact + sum(getattr(self, name).numel() for name in self._basis_names)

    def extra_repr(self) -> str:
        bits = "" if self.bits is None else f", bits={self.bits}, group_size={self.group_size}"
        exact = f", exact_rows={self.num_exact}" if self.num_exact else ""
        return (f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}, "
                f"padding_idx={self.padding_idx}{bits}{exact}")


class FactorizedEmbedding(_LowRankEmbedding):
    """SVD-factored embedding: ``E[t] = coords[t] @ basis``.

    Parameters: coords (num_embeddings, rank), basis (rank, embedding_dim).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int,
                 padding_idx: int | None = None):
        super().__init__(num_embeddings, embedding_dim, rank, padding_idx)
        self.basis = nn.Parameter(torch.zeros(rank, embedding_dim))

    _basis_names = ("basis",)

    @classmethod
    def from_factors(cls, factors: Factors, padding_idx: int | None = None,
                     padding_vector: torch.Tensor | None = None) -> "FactorizedEmbedding":
        """Layer holding ``factors`` (k must be 1; its coordinates themselves, not a copy);
        ``padding_vector`` (d) is the padding row."""
        (n, j), d = factors.coords.shape, factors.bases.shape[2]
        with torch.device("meta"):
            layer = cls(n, d, j, padding_idx)
        layer.basis = nn.Parameter(factors.bases[0].detach().clone())
        return layer._hold(factors, padding_vector)

    def _lookup(self, ids):
        return self._coords(ids) @ self._basis("basis")

    def _attend(self, hidden):
        return self._spread((hidden @ self._basis("basis").T) @ self._coords().T)


class ProjectiveEmbedding(_LowRankEmbedding):
    """MESSI embedding: k subspaces; token t -> ``coords[t] @ bases[labels[t]]``.

    Parameters: coords (num_embeddings, rank), bases (n_clusters, rank, embedding_dim).
    Buffer: labels (num_embeddings,), the smallest integer dtype that holds n_clusters.
    A lookup sorts the batch's tokens by cluster and does one (m_i, j) @ (j, d) product per
    cluster: no per-token basis copies, no dense (n, k*j) matrix.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, n_clusters: int,
                 padding_idx: int | None = None):
        super().__init__(num_embeddings, embedding_dim, rank, padding_idx)
        self.n_clusters = n_clusters
        self.bases = nn.Parameter(torch.zeros(n_clusters, rank, embedding_dim))
        self.register_buffer("labels", torch.zeros(num_embeddings, dtype=_label_dtype(n_clusters)))

    _basis_names = ("bases",)

    @classmethod
    def from_factors(cls, factors: Factors, padding_idx: int | None = None,
                     padding_vector: torch.Tensor | None = None) -> "ProjectiveEmbedding":
        """Layer holding ``factors`` (its coordinates themselves, not a copy); ``padding_vector``
        (d) is the padding row."""
        (n, j), (k, _, d) = factors.coords.shape, factors.bases.shape
        with torch.device("meta"):
            layer = cls(n, d, j, k, padding_idx)
        layer.bases = nn.Parameter(factors.bases.detach().clone())
        layer.labels = factors.labels.to(device=factors.coords.device, dtype=_label_dtype(k)).clone()
        return layer._hold(factors, padding_vector)

    @property
    def label_bytes(self) -> int:
        """Bytes of the cluster-id buffer (not a parameter; reported separately)."""
        return self.labels.numel() * self.labels.element_size()

    def _by_cluster(self, clusters: torch.Tensor):
        """Permutation that sorts ``clusters`` (m,) and the size of each cluster's run."""
        order = torch.argsort(clusters, stable=True)
        counts = torch.bincount(clusters, minlength=self.n_clusters).tolist()
        return order, counts

    #: Export-friendly lookup (``export.py``): every token through every basis, then one gather;
    #: no split whose sizes depend on the input. k times the products, no data-dependent shapes.
    static_lookup = False

    def _lookup(self, ids):
        u = self._coords(ids)  # (N, j)
        bases = self._basis("bases")
        if self.n_clusters == 1:
            return u @ bases[0]
        if self.static_lookup:
            every = torch.einsum("nj,kjd->nkd", u, bases)  # (N, k, d)
            which = self.labels[ids].long()[:, None, None].expand(-1, 1, self.embedding_dim)
            return every.gather(1, which).squeeze(1)
        order, counts = self._by_cluster(self.labels[ids].long())
        pieces = torch.split(u[order], counts)
        out_sorted = torch.cat([p @ bases[i] for i, p in enumerate(pieces)])
        return torch.empty_like(out_sorted).index_copy(0, order, out_sorted)

    def _table_plan(self):
        """(tokens in cluster order, cluster sizes) of every row the coordinates hold, cached
        until ``labels`` or ``exact_slot`` changes: the head's per-cluster columns are a property
        of the weights, not of the input."""
        def build():
            tokens = self.coordinate_tokens()
            if tokens is None:
                return self._by_cluster(self.labels.long())
            order, counts = self._by_cluster(self.labels[tokens].long())  # exact columns: ``attend``
            return tokens[order], counts

        buffers = (self.labels,) if self.exact_slot is None else (self.labels, self.exact_slot)
        return self._cached_plan("_plan", buffers, build)

    #: Up to this many (positions x clusters), the head scores every token in every subspace in
    #: one product and keeps each token's own (decoding, a position at a time: it reads the
    #: coordinates once, where gathering each cluster's rows copies the whole (n, j) table); above
    #: it, one product per cluster. Measured on Gemma's table (n = 262,144, d = 640, -50%, 2
    #: cores): 1 position, k = 5: 28 ms against 157 ms per cluster (SVD 15 ms); 8 positions,
    #: k = 20 (160): 158 ms against 118 ms.
    every_cluster_width = 64

    def _attend(self, hidden):
        if hidden.shape[0] * self.n_clusters <= self.every_cluster_width:
            return self._attend_every_cluster(hidden)
        order, counts = self._table_plan()
        j = self.rank
        projected = hidden @ self._basis("bases").reshape(-1, self.embedding_dim).T  # (M, k*j): one product
        scores = hidden.new_empty(hidden.shape[0], self.num_embeddings)
        # (M, j) @ (j, m_i) per cluster, written straight into the columns of its tokens: no copy
        # of the (n, j) coordinates in cluster order and no concatenation of the pieces
        for i, members in enumerate(torch.split(order, counts)):
            scores[:, members] = projected[:, i * j:(i + 1) * j] @ self._coords(members).T
        return scores


    def _attend_every_cluster(self, hidden):
        """Scores (M, n) of ``hidden`` (M, d): every row's coordinates against every subspace's
        projection of the M positions in one (n, j) @ (j, k M) product, then each row's own."""
        M, k, j = hidden.shape[0], self.n_clusters, self.rank
        projected = (hidden @ self._basis("bases").reshape(-1, self.embedding_dim).T).reshape(M, k, j)
        every = self._coords() @ projected.permute(2, 1, 0).reshape(j, k * M)  # (rows, k * M)
        tokens = self.coordinate_tokens()
        labels = (self.labels if tokens is None else self.labels[tokens]).long()
        own = every.view(-1, k, M).gather(1, labels.view(-1, 1, 1).expand(-1, 1, M))
        return self._spread(own.view(-1, M).T.contiguous())


class TiedOutputEmbedding(nn.Module):
    """Output projection tied to a factored input embedding: logits = hidden @ E.T + bias.

    Replaces an ``nn.Linear`` decoder whose weight was tied to the input embedding (e.g. a
    masked-LM head). It holds no copy of the table: the embedding is referenced, not owned, so
    its parameters appear once in the state dict.
    """

    def __init__(self, embedding: _LowRankEmbedding, bias: nn.Parameter | None = None):
        super().__init__()
        self.__dict__["embedding"] = embedding  # a reference, not a submodule
        self.bias = bias
        self.in_features = embedding.embedding_dim
        self.out_features = embedding.num_embeddings

    @property
    def weight(self) -> torch.Tensor:
        """The tied (n, d) table, rebuilt."""
        return self.embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., n) of ``hidden`` (..., d)."""
        logits = self.embedding.attend(hidden)
        return logits if self.bias is None else logits + self.bias
