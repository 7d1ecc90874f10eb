"""Round-to-nearest symmetric quantization of a matrix's rows, and what it costs in bytes.

Used two ways: on MESSI / SVD coordinates (``--bits``: the factored table stored as integers
with fp16 scales, so that low rank and quantization multiply), and on a whole table as the
baseline users already know (int8 per row, 4/3/2 bits with group scales: what GGUF, torchao and
OpenVINO store).

A row of ``j`` numbers is cut into groups of at most ``group_size`` (the whole row when None); each group
keeps one fp16 scale = max |x| / (2^(bits-1) - 1) and integers in [-(2^(bits-1) - 1),
2^(bits-1) - 1]. Rounding uses the fp16 scale itself, so ``dequantize`` gives back exactly the
values the fit was measured on. 4-bit values are packed two to a byte; 3 and 2 bits are counted
at their packed size (``quantized_bytes``) and held one to a byte in memory.
"""

from __future__ import annotations

import math

import torch

from .errors import MessiError

#: Bits a table or coordinates can be stored in.
SUPPORTED_BITS = (2, 3, 4, 8)
#: Bytes of one scale (fp16).
SCALE_BYTES = 2


def check_bits(bits: int, group_size: int | None) -> None:
    """MessiError unless ``bits`` is supported and ``group_size`` is None or >= 1."""
    if bits not in SUPPORTED_BITS:
        raise MessiError(f"bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {bits!r}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise MessiError(f"group_size must be a whole number >= 1 or None (one scale per row), got {group_size!r}")


def _groups(j: int, group_size: int | None) -> tuple[int, int]:
    """(group size, number of groups) for rows of ``j`` numbers: as many groups as groups of at
    most ``group_size`` need, evenly sized (j = 65 in groups of 32: 3 groups of 22, one padding
    zero), so that a rank just past a multiple does not pay for a nearly empty group."""
    groups = 1 if group_size is None else math.ceil(j / min(group_size, j))
    return math.ceil(j / groups), groups


def packed_width(j: int, bits: int, group_size: int | None) -> int:
    """Stored integer columns of one row: bytes for 4 bits (two values a byte), else values."""
    g, groups = _groups(j, group_size)
    padded = g * groups
    return (padded + 1) // 2 if bits == 4 else padded


def quantized_bytes(n: int, j: int, bits: int, group_size: int | None) -> int:
    """Bytes of an (n, j) matrix quantized to ``bits`` with ``group_size``: packed integers
    (bits x values, rounded up to whole bytes per row) plus one fp16 scale per group."""
    g, groups = _groups(j, group_size)
    return n * (math.ceil(g * groups * bits / 8) + groups * SCALE_BYTES)


def quantize_rows(X: torch.Tensor, bits: int, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the rows of ``X`` (n, j).

    Returns ``q`` (n, packed_width) int8 (uint8 two-per-byte for 4 bits) and ``scale``
    (n, groups) float16.
    """
    check_bits(bits, group_size)
    n, j = X.shape
    g, groups = _groups(j, group_size)
    padded = torch.nn.functional.pad(X.detach().float(), (0, g * groups - j)).reshape(n, groups, g)
    qmax = 2 ** (bits - 1) - 1
    scale = (padded.abs().amax(-1) / qmax).to(torch.float16)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group keeps q = 0
    q = torch.round(padded / scale.float()[..., None]).clamp(-qmax, qmax).to(torch.int8).reshape(n, groups * g)
    if bits == 4:
        q = _pack4(q)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, bits: int, j: int, group_size: int | None = None) -> torch.Tensor:
    """The float32 (n, j) matrix that ``quantize_rows`` stored (exactly its rounded values)."""
    g, groups = _groups(j, group_size)
    values = _unpack4(q, g * groups) if bits == 4 else q
    out = values.reshape(values.shape[0], groups, g).float() * scale.float()[..., None]
    return out.reshape(values.shape[0], groups * g)[:, :j]


def _pack4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-7, 7] (n, m) -> uint8 (n, ceil(m / 2)), low nibble first."""
    if q.shape[1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    u = (q + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def _unpack4(packed: torch.Tensor, m: int) -> torch.Tensor:
    """The inverse of ``_pack4``: int8 (n, m)."""
    wide = packed.to(torch.int16)  # arithmetic, not bit operators: exported graphs keep one dtype
    low = (wide % 16 - 8).to(torch.int8)
    high = (wide // 16 - 8).to(torch.int8)
    return torch.stack([low, high], -1).reshape(packed.shape[0], -1)[:, :m]


def round_trip(X: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """``X`` as quantize-then-dequantize gives it back (float32): the table a quantized model sees."""
    q, scale = quantize_rows(X, bits, group_size)
    return dequantize(q, scale, bits, X.shape[1], group_size)


def refit_bases(A: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor, k: int,
                weights: torch.Tensor | None = None, damping: float = 1e-8) -> torch.Tensor:
    """Bases (k, j, d) that best rebuild the rows of ``A`` (n, d) from fixed (quantized)
    ``coords`` (n, j): per cluster the (row-weighted) least squares B = (U^T W U)^-1 U^T W A.
    The answer does not depend on an output metric G applied on the right, so it is also the
    best refit under ``compress``'s output-aware error."""
    A, U = A.double(), coords.double()
    w = torch.ones(A.shape[0], dtype=torch.float64) if weights is None else weights.double()
    bases = []
    for i in range(k):
        rows = labels == i
        Ui, Ai, wi = U[rows], A[rows], w[rows][:, None]
        gram = Ui.T @ (Ui * wi)
        gram += damping * gram.diagonal().mean().clamp_min(1e-30) * torch.eye(gram.shape[0], dtype=gram.dtype)
        bases.append(torch.linalg.solve(gram, Ui.T @ (Ai * wi)))
    return torch.stack(bases)


def factored_bytes(n: int, d: int, k: int, rank: int, bits: int | None, group_size: int | None,
                   float_bytes: int = 4) -> int:
    """Bytes a factored (n, d) table stores at rank ``rank`` with k subspaces: coordinates
    (``bits``-bit with fp16 scales, or floats of ``float_bytes``), bases (fp16 when quantized)
    and, for k > 1, one cluster id per row (one byte up to 256 subspaces)."""
    coords = n * rank * float_bytes if bits is None else quantized_bytes(n, rank, bits, group_size)
    bases = k * rank * d * (float_bytes if bits is None else 2)
    labels = 0 if k == 1 else n * (1 if k <= 256 else 2 if k <= 32768 else 4)
    return coords + bases + labels


def rank_for_bytes(n: int, d: int, k: int, budget: int, bits: int | None, group_size: int | None,
                   float_bytes: int = 4) -> int:
    """Largest rank in 1..d-1 whose ``factored_bytes`` fit ``budget``; 0 if none does."""
    best = 0
    for j in range(1, d):
        if factored_bytes(n, d, k, j, bits, group_size, float_bytes) > budget:
            break
        best = j
    return best
