"""compress / save / load on the real shipped model and on small models of other architectures."""

import json
from pathlib import Path

import pytest
import torch
import transformers

import messi
from conftest import resign
from messi import CalibrationData, MessiError


@pytest.fixture(scope="module")
def tokens(minilm_dir):
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    return tok(["The cat sat on the mat.", "Projective clustering compresses embeddings."],
               padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, minilm_dir):
    """SVD and MESSI (k=3) at 40% on all-MiniLM-L6-v2, saved with the tokenizer."""
    out = {}
    tok = messi.load_tokenizer(minilm_dir)
    for method in ("svd", "messi"):
        model = messi.compress(messi.load_pretrained(), method=method, ratio=0.4, k=3, seed=0,
                               n_init=1, max_iter=15)
        path = tmp_path_factory.mktemp(method) / "model"
        messi.save(model, path, tokenizer=tok)
        out[method] = (model, path)
    return out


def hidden(model, tokens):
    with torch.no_grad():
        return model(**tokens).last_hidden_state


@pytest.mark.slow
@pytest.mark.parametrize("method", ["svd", "messi"])
def test_save_load_gives_identical_outputs(compressed, tokens, method):
    model, path = compressed[method]
    assert {"config.json", "model.safetensors", "messi.json", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    again = messi.load(path)
    assert type(again) is type(model)
    assert torch.equal(hidden(model, tokens), hidden(again, tokens))
    assert torch.equal(hidden(again, tokens), hidden(messi.load(path), tokens))
    tok = transformers.AutoTokenizer.from_pretrained(path)
    assert tok("hello world")["input_ids"] == transformers.AutoTokenizer.from_pretrained(path)("hello world")["input_ids"]


@pytest.mark.slow
def test_messi_beats_svd_at_forty_percent(compressed):
    svd = json.loads((compressed["svd"][1] / "messi.json").read_text())
    ms = json.loads((compressed["messi"][1] / "messi.json").read_text())
    for info in (svd, ms):
        assert 0.40 <= info["compression"] < 0.41
        assert info["embedding_params_before"] == 30522 * 384
    assert (svd["k"], svd["rank"], ms["k"], ms["rank"]) == (1, 227, 3, 222)
    assert ms["rel_error"] < 0.95 * svd["rel_error"]
    assert ms["label_bytes"] == 30522


@pytest.mark.slow
def test_compressed_model_stays_close_to_original(compressed, tokens):
    original = hidden(messi.load_pretrained(), tokens)
    for method in ("svd", "messi"):
        out = hidden(compressed[method][0], tokens)
        cos = torch.nn.functional.cosine_similarity(out, original, dim=-1)
        assert cos.mean() > 0.8, method


@pytest.mark.slow
def test_tied_masked_lm_head_uses_the_factored_table(minilm_dir):
    model = transformers.BertForMaskedLM.from_pretrained(minilm_dir).eval()
    full = sum(p.numel() for p in model.parameters())
    messi.compress(model, method="messi", ratio=0.4, k=2, n_init=1, max_iter=5)
    assert model.messi_config["tied_output"]
    emb = model.get_input_embeddings()
    assert model.get_output_embeddings().embedding is emb
    assert sum(p.numel() for p in model.parameters()) < full - 0.39 * 30522 * 384
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        h = model.cls.predictions.transform(model.bert(input_ids=ids).last_hidden_state)
    assert torch.allclose(logits, h @ emb.weight.T + model.cls.predictions.bias, atol=1e-4)


TINY = {
    "bert": (transformers.BertConfig, transformers.BertModel),
    "distilbert": (transformers.DistilBertConfig, transformers.DistilBertModel),
    "roberta": (transformers.RobertaConfig, transformers.RobertaForMaskedLM),
    "mpnet": (transformers.MPNetConfig, transformers.MPNetModel),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_other_architectures_roundtrip(tmp_path, name):
    config_cls, model_cls = TINY[name]
    kw = dict(vocab_size=300, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    if name == "distilbert":
        kw = dict(vocab_size=300, dim=32, n_heads=2, hidden_dim=64, n_layers=2)
    else:
        kw["num_hidden_layers"] = 2
    torch.manual_seed(0)
    model = model_cls(config_cls(**kw)).eval()
    with torch.no_grad():  # biases start at zero: a lost or untied bias would go unseen
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    messi.compress(model, method="messi", ratio=0.3, k=2, n_init=1, max_iter=5)
    messi.save(model, tmp_path / name)
    again = messi.load(tmp_path / name)
    ids = torch.tensor([[3, 17, 42, 5, 1]])
    with torch.no_grad():
        a, b = model(input_ids=ids), again(input_ids=ids)
    first = a.logits if hasattr(a, "logits") else a.last_hidden_state
    second = b.logits if hasattr(b, "logits") else b.last_hidden_state
    assert torch.equal(first, second)


def test_compress_bad_inputs(minilm_dir):
    model = messi.load_pretrained()
    with pytest.raises(MessiError, match="ratio"):
        messi.compress(model, ratio=1.2)
    with pytest.raises(MessiError, match="k must be"):
        messi.compress(model, k=0)
    with pytest.raises(MessiError, match="rank"):
        messi.compress(model, rank=384)
    with pytest.raises(MessiError, match="no rank"):
        messi.compress(model, ratio=0.999, k=3)
    with pytest.raises(MessiError, match="no input embedding"):
        messi.compress(torch.nn.Linear(3, 3))
    with torch.no_grad():
        model.get_input_embeddings().weight[7, 3] = float("nan")
    with pytest.raises(MessiError, match="NaN"):
        messi.compress(model, method="svd")


def test_compress_twice_is_refused():
    model = messi.compress(messi.load_pretrained(), method="svd", ratio=0.5)
    with pytest.raises(MessiError, match="already compressed"):
        messi.compress(model)


@pytest.mark.parametrize("damage, match", [
    ("no_weights", "no model.safetensors"),
    ("bad_weights", "sha256|not a readable safetensors file"),  # truncated: the header check sees it first
    ("bad_json", "corrupt"),
    ("no_json", "not a messi folder"),
    ("no_config", "config.json"),
])
@pytest.mark.slow
def test_broken_folder_gives_clear_error(compressed, tmp_path, damage, match):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(compressed["svd"][1], path)
    if damage == "no_weights":
        (path / "model.safetensors").unlink()
    elif damage == "bad_weights":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "bad_json":
        (path / "messi.json").write_text("{not json")
    elif damage == "no_json":
        (path / "messi.json").unlink()
    elif damage == "no_config":
        (path / "config.json").unlink()
    with pytest.raises(MessiError, match=match):
        messi.load(path)


def test_missing_model_folder():
    with pytest.raises(MessiError, match="does not exist"):
        messi.load_pretrained("/no/such/folder")


def test_mpnet_not_fetched_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MESSI_CACHE", str(tmp_path))
    with pytest.raises(MessiError, match="messi fetch-model mpnet"):
        messi.load_pretrained("mpnet")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_half_precision_round_trip_is_exact(tmp_path, tokens, dtype):
    model = messi.load_pretrained().to(dtype)
    messi.compress(model, method="messi", ratio=0.4, k=2, n_init=1, max_iter=3)
    assert model.get_input_embeddings().coords.dtype == dtype  # cast back to the model's dtype
    messi.save(model, tmp_path / "m")
    again = messi.load(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "messi.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    assert {p.dtype for p in again.parameters()} == {dtype}
    assert torch.equal(hidden(model, tokens), hidden(again, tokens))


@pytest.mark.slow
def test_load_honours_the_device(compressed):
    _, path = compressed["svd"]
    model = messi.load(path, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.device.type for p in messi.load(path, device="cpu").parameters()} == {"cpu"}


@pytest.mark.slow
def test_padding_row_is_kept_exactly(compressed):
    original = messi.load_pretrained().get_input_embeddings().weight[0]
    for method in ("svd", "messi"):
        model, path = compressed[method]
        for m in (model, messi.load(path)):
            row = m.get_input_embeddings()(torch.tensor([0]))[0]
            assert torch.equal(row, original), method


def test_many_clusters_keep_their_ids(tmp_path):
    """k > 256 needs wider cluster ids than a byte; they must survive save/load."""
    config = transformers.BertConfig(vocab_size=700, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    messi.compress(model, method="messi", ratio=0.3, k=300, rank=1, n_init=1, max_iter=2)
    emb = model.get_input_embeddings()
    assert emb.labels.dtype == torch.int16 and int(emb.labels.max()) >= 256
    messi.save(model, tmp_path / "m")
    again = messi.load(tmp_path / "m").get_input_embeddings()
    assert torch.equal(again.labels, emb.labels)
    assert torch.equal(again.weight, emb.weight)


@pytest.mark.parametrize("method", ["svd", "messi"])
@pytest.mark.parametrize("name", ["bert", "roberta"])  # roberta: a tied masked-LM head
def test_install_empty_then_copying_the_weights_rebuilds_the_compressed_model(name, method):
    config_cls, model_cls = TINY[name]
    config = config_cls(vocab_size=300, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                        num_hidden_layers=2, pad_token_id=1)
    torch.manual_seed(0)
    original = model_cls(config).eval().double()  # not the default dtype: the layer must follow
    other = model_cls(config).eval().double()
    other.load_state_dict(original.state_dict())
    messi.compress(original, method=method, ratio=0.3, k=2, n_init=1, max_iter=5)
    from messi.persist import install_empty

    install_empty(other, original.messi_config)
    layer = other.get_input_embeddings()
    assert type(layer) is type(original.get_input_embeddings())
    assert layer.padding_idx == 1 and not layer.coords.any()  # the structure, not the weights yet
    assert layer.coords.dtype == torch.float64
    assert other.state_dict().keys() == original.state_dict().keys()
    other.load_state_dict(original.state_dict())
    ids = torch.tensor([[3, 17, 1, 42, 5]])
    with torch.no_grad():
        a, b = original(input_ids=ids), other(input_ids=ids)
    first = a.logits if hasattr(a, "logits") else a.last_hidden_state
    assert torch.equal(first, b.logits if hasattr(b, "logits") else b.last_hidden_state)
    assert other.messi_config == original.messi_config


@pytest.mark.slow
def test_load_tokenizer_from_a_folder_a_built_in_name_or_nothing(compressed, tmp_path, minilm_dir):
    _, path = compressed["svd"]
    ids = messi.load_tokenizer(minilm_dir)("a cat")["input_ids"]
    assert messi.load_tokenizer(path)("a cat")["input_ids"] == ids  # saved with the compressed folder
    assert messi.load_tokenizer("minilm")("a cat")["input_ids"] == ids
    assert messi.load_tokenizer(None)("a cat")["input_ids"] == ids  # the built-in default
    assert messi.load_tokenizer(tmp_path) is None  # a folder without tokenizer files
    with pytest.raises(MessiError, match="no-such-model"):
        messi.load_tokenizer("no-such-model")  # neither a folder nor a built-in name


def _rewrite_weights(folder, change):
    """Apply ``change`` to the folder's tensors and metadata, and record the new sha256."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from messi.folder import sha256_file

    file = folder / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata()
    tensors, metadata = change(load_file(str(file)), metadata)
    save_file(tensors, str(file), metadata=metadata)
    info = json.loads((folder / "messi.json").read_text())
    (folder / "messi.json").write_text(json.dumps({**info, "weights_sha256": sha256_file(file)}))
    resign(folder)


@pytest.mark.slow
def test_weights_written_without_alias_metadata_load(compressed, tmp_path, tokens):
    import shutil

    model, path = compressed["svd"]
    copy = Path(shutil.copytree(path, tmp_path / "plain"))
    _rewrite_weights(copy, lambda tensors, metadata: (tensors, {"format": "pt"}))  # untied: no aliases needed
    assert torch.equal(hidden(messi.load(copy), tokens), hidden(model, tokens))


@pytest.mark.slow
def test_a_tensor_the_model_does_not_have_is_refused(compressed, tmp_path):
    import shutil

    copy = Path(shutil.copytree(compressed["svd"][1], tmp_path / "extra"))
    _rewrite_weights(copy, lambda tensors, metadata: ({**tensors, "stray.weight": torch.zeros(2)}, metadata))
    with pytest.raises(MessiError, match="is corrupt or does not match messi.json"):
        messi.load(copy)


def test_embedding_metric_is_what_the_fit_minimises(minilm_embedding):
    """On the real table: with a metric that weighs some dimensions 100x, the SVD fitted under
    it has a lower error in that metric than the plain fit (and a higher plain error); the
    identity metric gives the plain fit back; both errors are recorded."""
    from messi.factorize import relative_error

    d = minilm_embedding.shape[1]
    scale = torch.ones(d, dtype=torch.float64)
    scale[: d // 4] = 100.0
    G = torch.diag(scale)
    plain = messi.compress(messi.load_pretrained(), method="svd", ratio=0.6)
    metric = messi.compress(messi.load_pretrained(), method="svd", ratio=0.6, calibration=CalibrationData(embedding_metric=G))
    same = messi.compress(messi.load_pretrained(), method="svd", ratio=0.6, calibration=CalibrationData(embedding_metric=torch.eye(d)))
    A = minilm_embedding
    with torch.no_grad():
        approx = {name: m.get_input_embeddings().weight for name, m in
                  (("plain", plain), ("metric", metric), ("same", same))}
    assert relative_error(A, approx["metric"], moments=G) < 0.9 * relative_error(A, approx["plain"], moments=G)
    assert metric.messi_config["rel_error"] > plain.messi_config["rel_error"]
    assert metric.messi_config["output_rel_error"] == pytest.approx(relative_error(A, approx["metric"], moments=G))
    assert "output_rel_error" not in plain.messi_config and "calibration" in metric.messi_config
    assert torch.allclose(approx["same"], approx["plain"], atol=1e-4)


@pytest.mark.parametrize("bad", [torch.eye(3), torch.full((384, 384), float("nan")), "eye"])
def test_bad_embedding_metric_is_named(bad):
    with pytest.raises(MessiError, match="embedding_metric must be a finite \\(384, 384\\) tensor"):
        messi.compress(messi.load_pretrained(), method="svd", ratio=0.6, calibration=CalibrationData(embedding_metric=bad))


def _tiny_llama(vocab=300):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("method", ["svd", "messi"])
def test_exact_rows_are_the_most_used_paid_for_and_reload_exactly(tmp_path, method):
    model = _tiny_llama()
    A = model.get_input_embeddings().weight.detach().clone()
    w = torch.rand(300, generator=torch.Generator().manual_seed(0)) + 1
    config = messi.CompressionConfig(method=method, k=3, ratio=0.5, n_init=1, max_iter=5, exact_rows=20)
    messi.compress(model, config, CalibrationData(row_weights=w))
    info, emb = model.messi_config, model.get_input_embeddings()
    top = torch.argsort(w, descending=True)[:20]
    assert torch.equal(emb(top[None])[0], A[top]) and info["exact_rows"] == 20
    # the budget pays for them: they carry no coordinates, and the rank is the largest that fits
    # with 20 x 32 more numbers
    k, j = info["k"], info["rank"]
    assert emb.coords.shape == (280, j) and torch.equal(emb.coordinate_tokens(), torch.sort(
        torch.argsort(w, descending=True)[20:]).values)
    assert info["embedding_params_after"] == 280 * j + k * j * 32 + 20 * 32 <= 0.5 * 300 * 32
    assert 280 * (j + 1) + k * (j + 1) * 32 + 20 * 32 > 0.5 * 300 * 32
    assert info["embedding_params_after"] == emb.num_factor_parameters()
    # the factored rows read their own coordinates, in lookups and in the tied head alike
    rest = emb.coordinate_tokens()
    assert torch.allclose(emb(rest[None])[0], emb.weight[rest])
    for positions in (3, 40):  # every subspace in one product, and one product per subspace
        hidden = torch.randn(positions, 32, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(emb.attend(hidden), hidden @ emb.weight.T, atol=1e-5)
    ids = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(1))
    messi.save(model, tmp_path / "out")
    again = messi.load(tmp_path / "out")
    assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)
    assert torch.equal(again.get_input_embeddings().exact_ids, emb.exact_ids)


@pytest.mark.parametrize("value, match", [(7, "coords|exact_values"), (300, "exact_rows"), (-1, "exact_rows")])
def test_a_folder_whose_exact_rows_disagree_with_its_tensors_is_refused(tmp_path, value, match):
    model = _tiny_llama()
    config = messi.CompressionConfig(method="messi", k=2, ratio=0.5, n_init=1, max_iter=3, exact_rows=10)
    messi.compress(model, config, CalibrationData(row_weights=torch.rand(300) + 1))
    messi.save(model, tmp_path / "out")
    info = json.loads((tmp_path / "out" / "messi.json").read_text())
    info["exact_rows"] = value
    (tmp_path / "out" / "messi.json").write_text(json.dumps(info))
    with pytest.raises(MessiError, match=match):
        messi.load(resign(tmp_path / "out"))


def test_exact_rows_need_calibration_and_a_table_to_spare():
    with pytest.raises(MessiError, match="--calibration"):
        messi.compress(_tiny_llama(), method="messi", k=2, ratio=0.5, exact_rows=5)
    with pytest.raises(MessiError, match="whole table"):
        messi.compress(_tiny_llama(), None, CalibrationData(row_weights=torch.rand(300) + 1), k=2, ratio=0.5, exact_rows=300)
    with pytest.raises(MessiError, match="same calibration weight"):
        messi.compress(_tiny_llama(), None, CalibrationData(row_weights=torch.ones(300)), k=2, ratio=0.5, exact_rows=5)
    with pytest.raises(MessiError, match="target embedding"):
        messi.CompressionConfig(target="all", exact_rows=5)
