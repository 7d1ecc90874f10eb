"""model.safetensors with every tensor at an aligned offset, so that loading maps it instead of copying.

safetensors' own writer packs tensors back to back (only the header is padded, to 8 bytes), so a
tensor can start at any multiple of 8 in the file. Mapped there, CPU kernels take other code paths
than on torch's own 64-byte-aligned allocations and round differently in the last bit, so a loader
that must reproduce the saved model exactly has to copy every tensor: the whole model is then
resident at load, though a forward pass may touch only part of it (the embedding rows of the tokens
it sees). The safetensors format allows what is needed to avoid that (its issue #695 asks for it):
the header may end in spaces, and gaps between tensors are filled by padding entries (uint8,
zeros, named ``messi.padding.N``) because readers reject holes. Any safetensors reader reads these
files. ``load_tensors`` reads the whole file once into one aligned allocation and hashes the very
bytes it keeps (so the model owns its memory: a later rewrite or truncation of the file can neither
change nor kill it, and the checksum covers what is used, not an earlier read); with ``mmap=True``
it maps the file copy-on-write instead (pages read when first used: less resident memory, but the
file must not change while the model lives).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch

#: Byte alignment of every tensor in the file: what torch's CPU allocator gives its own tensors.
ALIGNMENT = 64
#: Names of the entries that fill the gaps between tensors; never returned by ``load_tensors``.
PADDING_PREFIX = "messi.padding."

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


def _as_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor, without a copy."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def save_aligned(tensors: dict[str, torch.Tensor], file: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write ``tensors`` (name -> tensor, any shape) as a safetensors file in which every tensor's
    data starts at a multiple of ``ALIGNMENT`` bytes from the start of the file."""
    header: dict = {"__metadata__": metadata}
    chunks: list[torch.Tensor | bytes] = []
    offset = 0
    for name, t in tensors.items():
        if name.startswith(PADDING_PREFIX):
            raise ValueError(f"tensor name {name!r} is reserved for padding")
        if t.dtype not in _CODES:
            raise ValueError(f"{name}: dtype {t.dtype} cannot be saved; supported: {', '.join(map(str, _CODES))}")
        gap = -offset % ALIGNMENT
        if gap:
            header[f"{PADDING_PREFIX}{len(header) - 1}"] = {"dtype": "U8", "shape": [gap],
                                                            "data_offsets": [offset, offset + gap]}
            chunks.append(bytes(gap))
            offset += gap
        t = t.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        chunks.append(t)
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGNMENT)  # the data then starts aligned
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for chunk in chunks:
            f.write(chunk if isinstance(chunk, bytes) else _as_bytes(chunk))


def _parse_header(data: torch.Tensor) -> tuple[int, dict]:
    """(offset of the data section, header JSON) of a safetensors file's bytes ``data`` (uint8,
    1-D) that safetensors has already checked (``folder.check_weights``)."""
    if data.numel() < 8:
        raise OSError("the file is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", bytes(data[:8].numpy()))
    if 8 + length > data.numel():
        raise OSError("the file is shorter than its safetensors header says")
    return 8 + length, json.loads(bytes(data[8:8 + length].numpy()))


def _read_all(file: Path, chunk: int = 1 << 24) -> tuple[torch.Tensor, str]:
    """(the file's bytes in one torch allocation, which is 64-byte aligned; their sha256),
    read once: the digest is of exactly the bytes returned."""
    size = file.stat().st_size
    data = torch.empty(size, dtype=torch.uint8)
    view = memoryview(data.numpy())
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        done = 0
        while done < size:
            n = f.readinto(view[done:done + chunk])
            if not n:
                raise OSError(f"the file shrank while it was read ({done:,} of {size:,} bytes)")
            digest.update(view[done:done + n])
            done += n
    return data, digest.hexdigest()


def load_tensors(file: str | os.PathLike, mmap: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str], str | None]:
    """(name -> tensor, metadata, sha256 of the bytes the tensors came from) of a safetensors file.

    By default the file is read once into memory the tensors own, and hashed as it is read. With
    ``mmap`` a tensor that starts at a multiple of ``ALIGNMENT`` bytes is a copy-on-write view of
    the mapped file (pages read when first used; writing to it never changes the file, but a
    later change to the file can show through pages not yet written), and the digest is None
    (the caller hashes the file). A misaligned tensor is copied into an aligned allocation.
    """
    file = Path(file)
    if mmap:
        data = torch.from_file(str(file), shared=False, size=file.stat().st_size, dtype=torch.uint8)
        digest = None
    else:
        data, digest = _read_all(file)
    start, header = _parse_header(data)
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__" or name.startswith(PADDING_PREFIX):
            continue
        begin, end = (start + o for o in entry["data_offsets"])
        raw = data[begin:end]
        if begin % ALIGNMENT:
            raw = raw.clone()
        tensors[name] = raw.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return tensors, header.get("__metadata__") or {}, digest
