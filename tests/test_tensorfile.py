"""Aligned safetensors files: any reader reads them, every tensor is mapped aligned, the file is never written."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from messi.folder import sha256_file
from messi.tensorfile import ALIGNMENT, PADDING_PREFIX, load_tensors, save_aligned

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]


def _tensor(dtype, shape, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(0, 100, shape, generator=g).to(dtype)


def _mixed():
    """Odd sizes in every dtype, a scalar and an empty tensor: gaps of every length."""
    tensors = {f"t{i}": _tensor(dtype, (3, 5 + i), i) for i, dtype in enumerate(DTYPES)}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 7)
    tensors["transposed"] = torch.arange(12.0).reshape(3, 4).T  # not contiguous
    return tensors


def _assert_same(got, expected):
    assert sorted(got) == sorted(expected)
    for name, t in expected.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert torch.equal(got[name], t), name


def _without_padding(read):
    """What safetensors' own reader returned, less the padding entries."""
    return {k: v for k, v in read.items() if not k.startswith(PADDING_PREFIX)}


def test_safetensors_reads_the_aligned_file(tmp_path):
    tensors, file = _mixed(), tmp_path / "w.safetensors"
    save_aligned(tensors, file, {"format": "pt", "note": "x"})
    read = load_file(str(file))
    assert sorted(k for k in read if k.startswith(PADDING_PREFIX))  # the gaps are there, as entries
    _assert_same(_without_padding(read), tensors)
    assert all(not v.any() for k, v in read.items() if k.startswith(PADDING_PREFIX))


def test_every_tensor_is_mapped_at_an_aligned_address(tmp_path):
    tensors, file = _mixed(), tmp_path / "w.safetensors"
    save_aligned(tensors, file, {"format": "pt"})
    loaded, metadata, digest = load_tensors(file, mmap=True)
    assert metadata == {"format": "pt"} and digest is None  # mapped: the caller hashes the file
    _assert_same(loaded, tensors)
    size = file.stat().st_size
    for name, t in loaded.items():
        assert t.data_ptr() % ALIGNMENT == 0, name
        assert t.untyped_storage().nbytes() == size, name  # a view of the mapped file, not a copy


def test_writing_to_a_loaded_tensor_never_changes_the_file(tmp_path):
    file = tmp_path / "w.safetensors"
    save_aligned({"a": torch.ones(1000), "b": torch.arange(5)}, file, {})
    before = sha256_file(file)
    loaded, _, _ = load_tensors(file, mmap=True)
    loaded["a"].add_(1)
    loaded["b"].zero_()
    assert torch.equal(loaded["a"], torch.full((1000,), 2.0))
    del loaded
    assert sha256_file(file) == before
    assert torch.equal(load_tensors(file)[0]["a"], torch.ones(1000))


def test_files_written_by_safetensors_are_copied_into_aligned_memory(tmp_path):
    tensors = {k: v.contiguous() for k, v in _mixed().items()}
    file = tmp_path / "plain.safetensors"
    save_file(tensors, str(file))
    loaded, _, _ = load_tensors(file, mmap=True)
    _assert_same({k: loaded[k] for k in tensors}, tensors)
    assert all(t.data_ptr() % ALIGNMENT == 0 for t in loaded.values())
    # safetensors packs tensors back to back, so some start unaligned: those were copied
    assert any(t.untyped_storage().nbytes() != file.stat().st_size for t in loaded.values())


def test_by_default_the_tensors_own_their_memory_and_the_digest_is_of_those_bytes(tmp_path):
    tensors, file = _mixed(), tmp_path / "w.safetensors"
    save_aligned(tensors, file, {})
    loaded, _, digest = load_tensors(file)
    assert digest == sha256_file(file)
    _assert_same(loaded, tensors)
    assert all(t.data_ptr() % ALIGNMENT == 0 for t in loaded.values())
    file.write_bytes(bytes(file.stat().st_size))  # rewritten in place, then truncated
    _assert_same(loaded, tensors)
    file.write_bytes(b"")
    _assert_same(loaded, tensors)


def test_a_file_shorter_than_its_header_is_an_os_error(tmp_path):
    file = tmp_path / "w.safetensors"
    save_aligned({"a": torch.ones(100)}, file, {})
    file.write_bytes(file.read_bytes()[:20])
    with pytest.raises(OSError, match="shorter"):
        load_tensors(file)


def test_the_padding_names_are_reserved(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_aligned({f"{PADDING_PREFIX}0": torch.zeros(1)}, tmp_path / "w.safetensors", {})


def test_an_unsupported_dtype_is_named(tmp_path):
    with pytest.raises(ValueError, match="complex64") as error:
        save_aligned({"c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "w.safetensors", {})
    assert "supported: torch.float64, torch.float32, torch.float16" in str(error.value)  # the list that works


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 9), max_size=3)), min_size=1, max_size=6))
def test_any_tensors_round_trip(tmp_path_factory, specs):
    tensors = {f"n{i}": _tensor(dtype, tuple(shape), i) for i, (dtype, shape) in enumerate(specs)}
    file = tmp_path_factory.mktemp("rt") / "w.safetensors"
    save_aligned(tensors, file, {})
    for mmap in (False, True):
        _assert_same(load_tensors(file, mmap=mmap)[0], tensors)
    assert (8 + int.from_bytes(file.read_bytes()[:8], "little")) % ALIGNMENT == 0
    _assert_same(_without_padding(load_file(str(file))), tensors)
