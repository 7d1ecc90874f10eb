"""Where a factored layer keeps its per-row coordinates and bases, and how it stores them as
integers: shared by the factored embeddings (``layers.py``) and Linear layers (``linear.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import quantize


class CoordinateStorage(nn.Module):
    """Where a factored layer keeps its per-row coordinates (``_coord_name``: an (m, j) float
    parameter) and its bases (``_basis_names``), and how ``quantize_`` turns the coordinates into
    integers with fp16 scales. Shared by the factored embeddings and Linear layers."""

    _coord_name = "coords"
    _basis_names: tuple[str, ...] = ()
    bits: int | None = None
    group_size: int | None = None

    def quantize_(self, bits: int, group_size: int | None = None) -> "CoordinateStorage":
        """Store the coordinates as ``bits``-bit integers with fp16 scales (``quantize.py``), in
        place: the coordinate parameter ``c`` becomes the buffers ``c_q`` (m, packed) and
        ``c_scale`` (m, groups), and the bases are kept in float16. A forward pass gathers the
        quantized rows it needs and scales them; nothing rebuilds an fp32 copy of the table."""
        quantize.check_bits(bits, group_size)
        if self.bits is not None:
            raise ValueError("this layer's coordinates are already quantized")
        name = self._coord_name
        coords = getattr(self, name)
        q, scale = quantize.quantize_rows(coords.detach(), bits, group_size)
        delattr(self, name)
        self.register_buffer(f"{name}_q", q.to(coords.device))
        self.register_buffer(f"{name}_scale", scale.to(coords.device))
        # the model's float dtype, which follows .to(dtype) (not saved): outputs are computed in it
        self.register_buffer("compute_anchor", torch.zeros(0, dtype=coords.dtype, device=coords.device),
                             persistent=False)
        self.bits, self.group_size = bits, group_size
        for basis in self._basis_names:
            param = getattr(self, basis)
            setattr(self, basis, nn.Parameter(param.detach().to(torch.float16), requires_grad=param.requires_grad))
        return self

    @property
    def device(self) -> torch.device:
        return next(t for t in (*self.parameters(), *self.buffers())).device

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.compute_anchor.dtype if self.bits is not None else getattr(self, self._coord_name).dtype

    def _coords(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Coordinates (m, j) of the rows ``ids`` (all rows if None), dequantized if stored so."""
        if ids is not None:
            ids = self._coordinate_rows(ids)
        if self.bits is None:
            coords = getattr(self, self._coord_name)
            return coords if ids is None else F.embedding(ids, coords)
        q, scale = getattr(self, f"{self._coord_name}_q"), getattr(self, f"{self._coord_name}_scale")
        if ids is not None:
            q, scale = q[ids], scale[ids]
        return quantize.dequantize(q, scale, self.bits, self.rank, self.group_size).to(self.compute_dtype)

    def _coordinate_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the coordinates that hold the rows ``ids`` of the layer (here the same)."""
        return ids

    def coordinate_tokens(self) -> torch.Tensor | None:
        """Which rows the coordinates hold: None, all of them in order."""
        return None

    def _cached_plan(self, name: str, buffers: tuple[torch.Tensor, ...], build):
        """``build()``: a plan derived from the integer ``buffers`` (cluster labels, exact-row
        slots), kept in the attribute ``name`` until one of them changes (loading writes them in
        place); while traced for export, the cached plan is used as constants of the weights."""
        cached = getattr(self, name, None)
        if torch.compiler.is_compiling() and cached is not None:
            return cached[1]
        key = tuple((b.data_ptr(), b._version, b.device) for b in buffers)
        if cached is None or cached[0] != key:
            cached = (key, build())
            setattr(self, name, cached)
        return cached[1]

    def _basis(self, name: str) -> torch.Tensor:
        return getattr(self, name).to(self.compute_dtype)

    def materialize_anchor(self) -> None:
        """Build ``compute_anchor`` for real if it was made on the meta device (loading)."""
        if self.bits is not None and self.compute_anchor.is_meta:
            self.compute_anchor = torch.zeros(0, dtype=self.compute_anchor.dtype,
                                              device=getattr(self, f"{self._coord_name}_q").device)

    def storage_bytes(self) -> int:
        """Bytes of everything the layer stores (parameters and saved buffers)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())
