"""Quantized storage: the math (round trip, packing, byte counts, the bases' refit) and the layers
that compute from it (equal to their dequantized tables, exact reloads in every precision)."""

import json
import subprocess
import sys

import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st

import messi
from messi.quantize import (
    dequantize,
    factored_bytes,
    quantize_rows,
    quantized_bytes,
    rank_for_bytes,
    refit_bases,
    round_trip,
)


@given(n=st.integers(1, 20), j=st.integers(1, 70), bits=st.sampled_from([2, 3, 4, 8]),
       group=st.sampled_from([None, 1, 7, 16, 32]), seed=st.integers(0, 1000))
def test_round_trip_is_within_half_a_step_and_bytes_are_what_is_stored(n, j, bits, group, seed):
    X = torch.randn(n, j, generator=torch.Generator().manual_seed(seed)) * 3
    q, scale = quantize_rows(X, bits, group)
    back = dequantize(q, scale, bits, j, group)
    assert back.shape == (n, j)
    groups = 1 if group is None else -(-j // min(group, j))
    assert scale.shape == (n, groups)
    g = -(-j // groups)  # evenly sized groups of at most group_size
    assert g <= (group or j)
    steps = scale.float().repeat_interleave(g, 1)[:, :j]
    assert bool(((back - X).abs() <= steps / 2 + 1e-6 * X.abs().max()).all())
    if bits in (4, 8):  # stored as packed as they are counted
        assert q.numel() * q.element_size() + scale.numel() * 2 == quantized_bytes(n, j, bits, group)
    assert torch.equal(round_trip(back, bits, group), back)  # the stored values are a fixed point


def test_4bit_packing_is_two_values_a_byte():
    X = torch.arange(-7, 8, dtype=torch.float32)[None].repeat(3, 1)
    q, scale = quantize_rows(X, 4, None)
    assert q.dtype == torch.uint8 and q.shape == (3, 8)
    assert torch.equal(dequantize(q, scale, 4, 15, None), X)


def test_refit_bases_lowers_the_error_of_quantized_coordinates():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(300, 12, generator=g, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    coords, basis = (U[:, :4] * S[:4]), Vh[:4]
    Uq = round_trip(coords.float(), 4, 2).double()
    labels = torch.zeros(300, dtype=torch.long)
    before = (A - Uq @ basis).square().sum()
    after = (A - Uq @ refit_bases(A, Uq, labels, 1)[0]).square().sum()
    assert after < before


@pytest.mark.parametrize("bits, group", [(None, None), (8, None), (4, 32), (4, 5)])
def test_rank_for_bytes_is_the_largest_that_fits(bits, group):
    n, d, k = 1000, 64, 3
    budget = factored_bytes(n, d, k, 17, bits, group) + 1
    j = rank_for_bytes(n, d, k, budget, bits, group)
    assert j == 17 and factored_bytes(n, d, k, j + 1, bits, group) > budget


def tiny(cls=transformers.BertForMaskedLM, vocab=300):
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    return cls(cfg).eval()


@pytest.mark.parametrize("method", ["svd", "messi"])
@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_layers_equal_their_dequantized_tables(method, bits):
    model = messi.compress(tiny(), method=method, k=3, ratio=0.5, bits=bits, n_init=1, max_iter=5)
    layer = model.get_input_embeddings()
    assert "coords" not in dict(layer.named_parameters()) and layer.coords_q.dtype in (torch.int8, torch.uint8)
    coords = dequantize(layer.coords_q, layer.coords_scale, bits, layer.rank, layer.group_size)
    bases = (layer.basis[None] if method == "svd" else layer.bases).float()
    labels = torch.zeros(300, dtype=torch.long) if method == "svd" else layer.labels.long()
    table = torch.stack([coords[r] @ bases[labels[r]] for r in range(300)])
    table[layer.padding_idx] = layer.padding_vector
    ids = torch.tensor([[0, 5, 17, 299, 42]])
    assert torch.equal(layer._coords(), coords)  # the storage gives back exactly what was fitted
    with torch.no_grad():
        assert torch.allclose(layer(ids)[0], table[ids[0]], atol=1e-6, rtol=0)
        hidden = torch.randn(2, 3, 32)
        assert torch.allclose(model.get_output_embeddings()(hidden) - model.get_output_embeddings().bias,
                              hidden @ table.T, atol=1e-5)
    info = model.messi_config
    padding = 32 * 4
    assert info["embedding_bytes_after"] == layer.storage_bytes() == factored_bytes(
        300, 32, info["k"], info["rank"], bits, layer.group_size) + padding


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_quantized_folders_reload_exactly_in_every_precision(tmp_path, dtype):
    model = tiny(transformers.BertModel).to(dtype)
    messi.compress(model, method="messi", k=2, ratio=0.6, bits=4, n_init=1, max_iter=5)
    messi.save(model, tmp_path / "o")
    again = messi.load(tmp_path / "o")
    ids = torch.tensor([[1, 2, 3, 4, 0]])
    with torch.no_grad():
        want, got = model(input_ids=ids).last_hidden_state, again(input_ids=ids).last_hidden_state
    assert got.dtype == dtype and torch.equal(got, want)
    assert again.get_input_embeddings().coords_q.dtype == torch.uint8
    assert again.compression_config.bits == 4 and again.compression_config.group_size == 32


@pytest.mark.parametrize("method", ["svd", "messi"])
def test_exact_rows_with_quantized_coordinates_store_only_the_factored_rows_and_reload_exactly(tmp_path, method):
    from messi.calibration import CalibrationData
    model = tiny(transformers.BertModel)
    n, d = model.get_input_embeddings().weight.shape
    weights = CalibrationData(row_weights=torch.rand(n, generator=torch.Generator().manual_seed(0)) + 1)
    messi.compress(model, None, weights, method=method, k=2, ratio=0.5, bits=8, n_init=1, max_iter=5, exact_rows=10)
    emb = model.get_input_embeddings()
    assert emb.coords_q.shape[0] == emb.coords_scale.shape[0] == n - 10
    messi.save(model, tmp_path / "o")
    again = messi.load(tmp_path / "o")
    ids = torch.arange(n)[None, :30]
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)


def test_the_bases_refit_with_exact_rows_is_judged_on_the_whole_table(monkeypatch):
    """The refit of the bases after quantization is kept only if it lowers the error of the
    table: every row, compared with its own factored or exact row (not the first n - m rows)."""
    import messi.fit as fit
    from messi.calibration import CalibrationData
    model = tiny(transformers.BertModel)
    n, _ = model.get_input_embeddings().weight.shape
    seen = []
    measure = fit.relative_error

    def recording(A, approx, *args, **kwargs):
        if callable(approx):
            seen.append(A.shape[0])
        return measure(A, approx, *args, **kwargs)

    monkeypatch.setattr(fit, "relative_error", recording)
    weights = CalibrationData(row_weights=torch.rand(n, generator=torch.Generator().manual_seed(0)) + 1)
    messi.compress(model, None, weights, method="messi", k=2, ratio=0.5, bits=8, n_init=1, max_iter=5, exact_rows=10)
    assert seen and set(seen) == {n}


def test_size_meets_its_budget_and_records_its_candidates():
    model = messi.compress(tiny(transformers.BertModel), method="messi", k=2, size=0.15, n_init=1, max_iter=5)
    info = model.messi_config
    assert info["embedding_bytes_after"] <= 0.15 * info["embedding_bytes_before"]
    assert {c["bits"] for c in info["size_candidates"]} == {8, 4}
    best = min(info["size_candidates"], key=lambda c: c["error"])
    assert (info["bits"], info["rank"]) == (best["bits"], best["rank"])
    with pytest.raises(messi.MessiError, match="no rank fits"):
        messi.compress(tiny(transformers.BertModel), method="messi", k=2, size=0.001)


@pytest.mark.slow
def test_cli_bits_and_size_on_the_built_in_model(tmp_path):
    """`messi compress --bits 8 --ratio 0.8` and `--size 0.05`: byte counts against the file, exact
    reload keeping integer storage, and the folder through SentenceTransformer and AutoModel."""
    from sentence_transformers import SentenceTransformer

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "messi.cli", *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    cli("compress", "--bits", "8", "--ratio", "0.8", "--n-init", "1", "--max-iter", "10", tmp_path / "b8")
    cli("compress", "--size", "0.05", "--n-init", "1", "--max-iter", "10", tmp_path / "s5")
    for name in ("b8", "s5"):
        info = json.loads(cli("info", tmp_path / name, "--json"))
        file = (tmp_path / name / "model.safetensors").stat().st_size
        # the file holds exactly the counted tensors, plus its JSON header and 64-byte alignment
        assert info["model_bytes_after"] <= file <= info["model_bytes_after"] + 64 * 300 + 40_000
        assert info["embedding_bytes_after"] < info["embedding_bytes_before"] * (0.06 if name == "s5" else 0.3)
        model = messi.load(tmp_path / name)
        assert model.get_input_embeddings().coords_q.dtype in (torch.int8, torch.uint8)
        st = SentenceTransformer(str(tmp_path / name), device="cpu")
        auto = transformers.AutoModel.from_pretrained(tmp_path / name)
        tok = messi.load_tokenizer(tmp_path / name)
        batch = tok(["a quantized sentence"], return_tensors="pt")
        with torch.no_grad():
            assert torch.equal(auto(**batch).last_hidden_state, model(**batch).last_hidden_state)
        assert st.encode(["a quantized sentence"]).shape == (1, 384)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("bits", [8, 4])
def test_whole_model_with_quantized_factors_reloads_exactly(tmp_path, allocation, bits):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    model = transformers.BertForSequenceClassification(cfg).eval()
    messi.compress(model, method="messi", k=2, ratio=0.5, target="all", allocation=allocation, bits=bits,
                   n_init=1, max_iter=5)
    info = model.messi_config
    factored = [e for e in info["linear_layers"] if e["method"] != "dense"]
    assert factored and all(e["bits"] == bits and e["bytes_after"] < e["bytes_before"] for e in factored)
    assert info["dtype"] == "float32"  # the fp16 bases do not decide the model's precision
    assert info["model_bytes_after"] < info["model_bytes_before"]
    messi.save(model, tmp_path / "o")
    again = messi.load(tmp_path / "o")
    ids = torch.tensor([[1, 2, 3, 4, 0]])
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)
    layer = again.get_submodule(factored[0]["name"])
    assert getattr(layer, f"{layer._coord_name}_q").dtype in (torch.int8, torch.uint8)
