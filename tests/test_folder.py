"""A compressed folder is checked before it is trusted; outputs never destroy what messi did not write."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

import messi
from conftest import resign, svd_projection
from messi import CalibrationData, MessiError
from messi.io import atomic_dir, clean_stale


def tiny_model(vocab=60, tied=False):
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    return (transformers.BertForMaskedLM if tied else transformers.BertModel)(config).eval()


@pytest.fixture
def folder(tmp_path):
    model = messi.compress(tiny_model(), method="messi", ratio=0.4, k=2, n_init=1, max_iter=3)
    return messi.save(model, tmp_path / "m")


def edit_info(folder, **changes):
    info = json.loads((folder / "messi.json").read_text())
    for key, value in changes.items():
        if value is ...:
            info.pop(key)
        else:
            info[key] = value
    (folder / "messi.json").write_text(json.dumps(info))
    resign(folder)


@pytest.mark.parametrize("changes, words", [
    ({"k": "2"}, "k must be an integer"),
    ({"rank": 3.5}, "rank must be an integer"),
    ({"k": -1}, "k must be an integer"),
    ({"method": "foo"}, "method must be one of"),
    ({"padding_idx": 600}, "padding_idx"),
    ({"padding_idx": "0"}, "padding_idx"),
    ({"model_class": ["BertModel"]}, "model_class"),
    ({"model_class": "NotAModel"}, "not a transformers model class"),
    ({"tied_output": True}, "no output head"),
    ({"num_embeddings": 10**15}, "num_embeddings"),
    ({"num_embeddings": 61}, "coords|vocab_size"),
    ({"dtype": "int8"}, "dtype"),
    ({"rank": ...}, "rank must be an integer"),
    ({"weights_sha256": "0" * 64}, "sha256"),
])
def test_tampered_messi_json_is_one_clear_error(folder, changes, words):
    edit_info(folder, **changes)
    with pytest.raises(MessiError, match=words):
        messi.load(folder)


def test_flipped_bytes_in_weights_are_caught(folder):
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(MessiError, match="sha256"):
        messi.load(folder)


def test_config_vocab_must_match(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["base_config"]["vocab_size"] = 61
    (folder / "config.json").write_text(json.dumps(cfg))
    resign(folder)
    with pytest.raises(MessiError, match="vocab_size") as caught:
        messi.load(folder)
    assert str(folder) in str(caught.value)  # the message names the folder


def test_remote_code_in_a_folder_never_runs(folder, tmp_path):
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.Config", "AutoModel": "evil.Model", "AutoTokenizer": ["evil.Tokenizer", None]}
    (folder / "config.json").write_text(json.dumps(cfg))
    code = f"import messi; messi.load({str(folder)!r}); messi.load_tokenizer({str(folder)!r})"
    result = subprocess.run([sys.executable, "-c", code], input="y\n", capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert not marker.exists()
    assert "trust_remote_code" not in result.stdout  # no prompt


def test_save_refuses_existing_and_foreign_folders(tmp_path):
    model = messi.compress(tiny_model(), method="svd", ratio=0.4)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    with pytest.raises(MessiError, match="already exists"):
        messi.save(model, docs)
    with pytest.raises(MessiError, match="not written by messi"):
        messi.save(model, docs, overwrite=True)
    assert (docs / "thesis.txt").read_text() == "years of work"
    out = messi.save(model, tmp_path / "m")
    messi.save(model, out, overwrite=True)  # a messi folder may be replaced
    assert messi.load(out) is not None
    afile = tmp_path / "plain"
    afile.write_text("x")
    with pytest.raises(MessiError, match="not a folder"):
        messi.save(model, afile, overwrite=True)
    assert afile.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "m", "plain"]  # nothing stray


def test_a_folder_that_appears_meanwhile_is_kept(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(MessiError, match="appeared"):
        with atomic_dir(target, replace=False) as tmp:
            (tmp / "a").write_text("new")
            target.mkdir()
            (target / "theirs").write_text("keep me")
    assert (target / "theirs").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_leftovers_of_dead_runs_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.{pid}.abc123.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"0" * 1000)
    old = tmp_path / f".out.old-{pid}"
    old.write_text("x")
    alive = tmp_path / f".out.{os.getpid()}.live.tmp"  # ours, still running: kept
    alive.mkdir()
    users = tmp_path / f".out.{pid}"  # looks alike, but messi never makes such a name: kept
    users.write_text("mine")
    (tmp_path / "out").mkdir()  # the new output made it: the old copy is a leftover
    removed = clean_stale(tmp_path / "out")
    assert set(removed) == {stale, old}
    assert alive.exists() and users.exists() and not stale.exists() and not old.exists()
    (tmp_path / "out").rmdir()  # killed between the renames: the old copy is the only one
    old.write_text("only copy")
    assert clean_stale(tmp_path / "out") == []
    assert (tmp_path / "out").read_text() == "only copy" and not old.exists()


def test_info_exits_2_on_a_broken_folder(folder):
    edit_info(folder, rank="x")
    r = subprocess.run([sys.executable, "-m", "messi.cli", "info", str(folder)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "rank must be an integer" in r.stderr and "Traceback" not in r.stderr


def test_tied_head_round_trip(tmp_path):
    model = messi.compress(tiny_model(tied=True), method="messi", ratio=0.4, k=2, n_init=1, max_iter=3)
    path = messi.save(model, tmp_path / "t")
    again = messi.load(path)
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_save_refuses_a_model_that_was_not_compressed(tmp_path):
    with pytest.raises(MessiError, match="not compressed with messi.compress"):
        messi.save(tiny_model(), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_overwrite_replaces_the_folder_with_the_new_model(tmp_path):
    first = messi.save(messi.compress(tiny_model(), method="svd", ratio=0.4), tmp_path / "m")
    second = messi.compress(tiny_model(), method="messi", ratio=0.4, k=2, n_init=1, max_iter=3)
    messi.save(second, first, overwrite=True)
    assert messi.read_info(first)["method"] == "messi"
    assert type(messi.load(first).get_input_embeddings()).__name__ == "ProjectiveEmbedding"


def test_weights_carry_the_pt_format_tag_and_load_pretrained_reads_messi_folders(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "pt"  # what transformers' safetensors loading expects
    model = messi.load_pretrained(folder)
    assert model.messi_config["method"] == "messi" and not model.training


def test_a_sentence_transformers_source_keeps_its_modules(tmp_path, minilm_dir):
    out = messi.save(messi.compress(tiny_model(), method="svd", ratio=0.4), tmp_path / "m", source=minilm_dir)
    assert (out / "modules.json").read_text() == (minilm_dir / "modules.json").read_text()
    pooling = json.loads((minilm_dir / "modules.json").read_text())[1]["path"]
    assert (out / pooling / "config.json").read_text() == (minilm_dir / pooling / "config.json").read_text()


@pytest.mark.parametrize("method, weighted", [("messi", True), ("svd", False)])
def test_the_embedding_record_counts_what_the_layer_holds(method, weighted):
    model = tiny_model()
    A = model.get_input_embeddings().weight.detach().clone()
    w = torch.rand(60, generator=torch.Generator().manual_seed(0), dtype=torch.float64) if weighted else None
    messi.compress(model, method=method, ratio=0.4, k=2, n_init=1, max_iter=3, calibration=CalibrationData(row_weights=w))
    info, layer = model.messi_config, model.get_input_embeddings()
    held = sum(p.numel() for p in layer.parameters())
    with torch.no_grad():
        W = layer.weight.double()
    err = ((A.double() - W) ** 2).sum(1)
    assert (info["embedding_params_before"], info["embedding_params_after"]) == (60 * 16, held)
    assert info["compression"] == pytest.approx(1 - held / (60 * 16))
    assert info["label_bytes"] == (60 if method == "messi" else 0)  # one int8 cluster id per row
    assert info["rel_error"] == pytest.approx(float(err.sum() / (A.double() ** 2).sum()), rel=1e-6)
    if weighted:
        assert info["weighted_rel_error"] == pytest.approx(float((w * err).sum() / (w * (A.double() ** 2).sum(1)).sum()), rel=1e-6)
    else:
        assert "weighted_rel_error" not in info


def test_a_folder_whose_model_lacks_a_named_layer_is_one_clear_error(tmp_path):
    model = tiny_model()
    messi.compress(model, method="svd", ratio=0.3, target="linear")
    path = messi.save(model, tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["base_config"]["num_hidden_layers"] = 0  # the saved layers no longer exist in the model it builds
    (path / "config.json").write_text(json.dumps(cfg))
    resign(path)
    with pytest.raises(MessiError, match="names the layer encoder.layer.0.attention.self.query, which BertModel "
                                         "does not have as an nn.Linear"):
        messi.load(path)


def test_a_folder_written_before_tied_output_was_recorded_loads_untied(folder):
    edit_info(folder, tied_output=...)
    model = messi.load(folder)
    assert model.get_input_embeddings().num_embeddings == 60
    assert getattr(model, "get_output_embeddings", lambda: None)() is None


def _compressed_with_a_padding_row(tmp_path, model=None, **kw):
    """A tiny model whose padding row is not zero (BERT starts it at zero, which would hide a
    lost row), compressed with ``kw``; and the folder path to save it to."""
    model = model if model is not None else tiny_model()
    with torch.no_grad():
        model.get_input_embeddings().weight[0] = torch.linspace(-1, 1, 16)  # a padding row that is not zero
    kw = {"method": "messi", "ratio": 0.4, "k": 2, "n_init": 1, "max_iter": 3, **kw}
    return messi.compress(model, **kw), tmp_path / "m"


def test_the_padding_row_is_kept_exactly_and_reloaded(tmp_path):
    for method in ("svd", "messi"):
        model, path = _compressed_with_a_padding_row(tmp_path / method, method=method)
        again = messi.load(messi.save(model, path))
        with torch.no_grad():
            for m in (model, again):
                assert torch.equal(m.get_input_embeddings()(torch.tensor([0]))[0], torch.linspace(-1, 1, 16)), method


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tiny_round_trip_is_exact(tmp_path, dtype):
    model, path = _compressed_with_a_padding_row(tmp_path, tiny_model().to(dtype))
    assert model.messi_config["dtype"] == str(dtype).split(".")[1]
    again = messi.load(messi.save(model, path))
    assert {p.dtype for p in again.parameters()} == {dtype}
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, again(input_ids=ids).last_hidden_state)


def test_the_recorded_dtype_is_the_one_most_parameters_have(tmp_path):
    model = tiny_model().to(torch.bfloat16)
    model.get_input_embeddings().float()  # the largest single tensor, but fewer numbers than all the rest
    model.encoder.layer[0].intermediate.dense.float()
    messi.compress(model, method="svd", ratio=0.4)
    assert model.messi_config["dtype"] == "bfloat16"


def test_load_moves_the_model_only_when_asked(folder):
    assert {p.device.type for p in messi.load(folder).parameters()} == {"cpu"}
    assert {p.device.type for p in messi.load(folder, device="meta").parameters()} == {"meta"}


def test_weights_that_do_not_match_the_model_name_the_first_problem(tmp_path):
    from safetensors.torch import load_file, save_file

    from messi.folder import sha256_file

    model, path = _compressed_with_a_padding_row(tmp_path)
    path = messi.save(model, path)
    tensors = load_file(str(path / "model.safetensors"))
    tensors["stray.weight"] = torch.zeros(2)
    tensors.update({f"another.stray.tensor.with.a.long.name.{i}": torch.zeros(1) for i in range(20)})
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt", "aliases": "{}"})
    edit_info(path, weights_sha256=sha256_file(path / "model.safetensors"))
    with pytest.raises(MessiError, match=r"is corrupt or does not match messi.json \(Error\(s\) in loading state_dict") as e:
        messi.load(path)
    assert "Unexpected key(s)" in str(e.value) and "\n" not in str(e.value)  # the reason, on one line
    reason = str(e.value).split("messi.json (", 1)[1].rsplit("); re-run", 1)[0]
    assert len(reason) == 300  # and at most 300 characters of it


def test_a_tied_head_is_switched_to_the_factored_table(tmp_path):
    model = tiny_model(tied=True)
    messi.compress(model, method="messi", ratio=0.4, k=2, n_init=1, max_iter=3)
    assert model.messi_config["tied_output"] is True
    assert model.get_output_embeddings().embedding is model.get_input_embeddings()


def test_compress_records_its_documented_defaults_and_is_quiet(capsys):
    model = messi.compress(tiny_model())
    info = model.messi_config
    assert (info["method"], info["k"], info["seed"], info["n_init"], info["max_iter"], info["tol"], info["loss"],
            info["init_size"]) == ("messi", 3, 0, 4, 50, 1e-4, "l2", 32768)
    assert info["ratio"] == 0.4 and info["target"] == "embedding" and capsys.readouterr().err == ""
    assert info["messi_version"] == messi.__version__ and "calibration" not in info


def test_compress_hands_init_size_to_the_clustering_and_records_it(monkeypatch):
    import messi.clustering as clustering

    seen = []
    fit = clustering.ProjectiveClustering.fit

    def spy(self, *args, **kwargs):
        seen.append(self.init_size)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(clustering.ProjectiveClustering, "fit", spy)
    for size in (None, 50, 1):
        model = messi.compress(tiny_model(), k=2, n_init=1, max_iter=3, init_size=size)
        assert seen[-1] == size and model.messi_config["init_size"] == size
    with pytest.raises(messi.MessiError, match="^init_size must"):
        messi.compress(tiny_model(), init_size=0)


def test_compress_records_the_loss_it_used_and_the_fit_time():
    import time

    start = time.perf_counter()
    info = messi.compress(tiny_model(), method="messi", k=2, loss="huber", n_init=1, max_iter=3).messi_config
    assert info["loss"] == "huber" and 0 < info["fit_seconds"] <= time.perf_counter() - start
    assert messi.compress(tiny_model(), method="svd", loss="huber").messi_config["loss"] == "l2"  # SVD has no loss


def test_calibration_is_recorded_when_weights_or_moments_were_used():
    w = torch.ones(60, dtype=torch.float64)
    info = messi.compress(tiny_model(), method="svd", calibration=CalibrationData(row_weights=w)).messi_config
    assert info["calibration"] == {"sources": ["row_weights / activations given to compress()"]}
    given = {"sources": ["glue:sst2"], "texts": 10}
    assert messi.compress(tiny_model(), method="svd", calibration=CalibrationData(row_weights=w, record=given)).messi_config["calibration"] == given
    model = tiny_model()
    moments = {n: torch.eye(m.in_features, dtype=torch.float64) for n, m in messi.targets.linear_targets(model).items()}
    assert "calibration" in messi.compress(model, method="svd", target="linear", calibration=CalibrationData(activations=moments)).messi_config


def test_compress_fits_with_the_settings_it_is_given():
    from messi.factorize import messi_factorize

    model = tiny_model()
    A = model.get_input_embeddings().weight.detach().clone()
    w = torch.rand(60, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(seed=3, n_init=2, max_iter=7, tol=0.5, loss="huber")
    messi.compress(model, method="messi", k=2, rank=5, **kw, calibration=CalibrationData(row_weights=w))
    want = messi_factorize(A, 2, 5, sample_weight=w, **kw).reconstruct()
    with torch.no_grad():
        got = model.get_input_embeddings().weight
    assert torch.equal(got[1:], want[1:])  # row 0 is the padding row, kept as it was
    assert not torch.equal(want, messi_factorize(A, 2, 5, sample_weight=w).reconstruct())  # the settings matter


def test_compress_svd_fits_the_weighted_svd():
    model = tiny_model()
    A = model.get_input_embeddings().weight.detach().double().clone()
    w = torch.rand(60, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    messi.compress(model, method="svd", rank=4, calibration=CalibrationData(row_weights=w))
    with torch.no_grad():
        got = model.get_input_embeddings().weight.double()
    assert type(model.get_input_embeddings()).__name__ == "FactorizedEmbedding"
    assert torch.allclose(got[1:], svd_projection(A, 4, w)[1:], atol=1e-5)


@pytest.mark.parametrize("kwargs, words", [
    (dict(k=0), r"^k must be in \[1, inf\]"), (dict(n_init=0), r"^n_init must be in \[1, inf\]"),
    (dict(max_iter=0), r"^max_iter must be in \[1, inf\]"), (dict(seed=-1), r"^seed must be in \[0, ")])
def test_compress_settings_are_checked_by_name(kwargs, words):
    with pytest.raises(MessiError, match=words):
        messi.compress(tiny_model(), method="messi", **kwargs)
    if "k" not in kwargs:  # checked before any fit, whatever the method
        with pytest.raises(MessiError, match=words):
            messi.compress(tiny_model(), method="svd", **kwargs)
    assert messi.compress(tiny_model(), method="messi", k=1, n_init=1, max_iter=2).messi_config["k"] == 1


def test_save_never_replaces_a_folder_that_appears_while_it_writes(tmp_path, monkeypatch):
    compress_module = sys.modules["messi.persist"]
    real, target = compress_module._save_weights, tmp_path / "m"

    def racing(model, file):
        target.mkdir()
        (target / "theirs").write_text("keep me")
        real(model, file)

    monkeypatch.setattr(compress_module, "_save_weights", racing)
    with pytest.raises(MessiError, match="appeared"):
        messi.save(messi.compress(tiny_model(), method="svd", ratio=0.4), target)
    assert sorted(p.name for p in target.iterdir()) == ["theirs"]


def test_save_writes_the_tokenizer_it_is_given(tmp_path):
    tok = messi.load_tokenizer("minilm")
    path = messi.save(messi.compress(tiny_model(vocab=30522), method="svd", ratio=0.4), tmp_path / "m", tokenizer=tok)
    assert messi.load_tokenizer(path)("a cat")["input_ids"] == tok("a cat")["input_ids"]
    small = messi.save(messi.compress(tiny_model(), method="svd", ratio=0.4), tmp_path / "s", tokenizer=tok)
    with pytest.raises(MessiError, match="has 30,522 tokens but the table 60 rows"):
        messi.load_tokenizer(small)  # ids past the table: refused, not an IndexError later


def test_remote_code_named_by_a_folder_never_runs_in_process(folder, tmp_path):
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.Config", "AutoTokenizer": ["evil.Tokenizer", None]}
    (folder / "config.json").write_text(json.dumps(cfg))
    resign(folder)  # a crafted folder whose manifest matches: its code must still never run
    messi.load(folder)
    messi.load_tokenizer(folder)
    assert not marker.exists()


def test_compress_records_how_the_source_was_loaded():
    model = tiny_model()
    model.messi_load_report = {"class": "BertModel", "reason": "the checkpoint holds a bare encoder"}
    assert messi.compress(model, method="svd").messi_config["source_load"] == model.messi_load_report
    assert "source_load" not in messi.compress(tiny_model(), method="svd").messi_config


def test_a_weights_file_without_aliases_metadata_loads(folder):
    """Files written by other tools (or before aliases were recorded) carry no "aliases" entry:
    the weights load as they are, with no alias to tie."""
    from safetensors.torch import load_file, save_file

    from messi.persist import _load_weights

    plain = folder.parent / "plain.safetensors"
    save_file(load_file(str(folder / "model.safetensors")), str(plain))  # no metadata at all
    model = messi.load(folder)
    expected = {name: t.clone() for name, t in model.state_dict().items()}
    for p in model.parameters():
        p.data.zero_()
    _load_weights(model, plain, {}, mmap=False)
    assert all(torch.equal(model.state_dict()[name], t) for name, t in expected.items())


def test_a_mapped_model_maps_its_weights_and_training_it_leaves_the_file_intact(folder):
    """With ``mmap=True`` every parameter of a loaded folder is a view of the mapped weights file
    (nothing copied at load), and an optimiser step on the loaded model writes to private pages
    only: the file still matches its sha256, and a second load gives the saved weights."""
    size = (folder / "model.safetensors").stat().st_size
    model = messi.load(folder, mmap=True)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(p.untyped_storage().nbytes() == size for p in model.parameters())
    model.train()
    ids = torch.randint(0, 60, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert not torch.equal(model.embeddings.word_embeddings.coords, saved["embeddings.word_embeddings.coords"])
    again = messi.load(folder)  # checks the sha256 recorded at save
    for name, t in again.state_dict().items():
        assert torch.equal(t, saved[name]), name
