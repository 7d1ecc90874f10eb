"""Reliability, round 3: --overwrite replaces only what messi wrote (never a home, root or the
current folder), a manifest covers every byte that changes outputs, the tokenizer must match."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import transformers

import messi
from messi import MessiError
from messi.folder import CONFIG_NAME, info_digest


@pytest.fixture()
def folder(tmp_path, minilm_dir):
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    model = messi.compress(transformers.BertModel(cfg).eval(), method="svd", ratio=0.5)
    return messi.save(model, tmp_path / "out", tokenizer=messi.load_tokenizer(), source=minilm_dir), model


def resave(model, path):
    return messi.save(model, path, overwrite=True)


def test_the_manifest_lists_every_file_and_a_fresh_folder_verifies(folder):
    path, _ = folder
    info = messi.read_info(path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "modules.json"} <= set(info["files"])
    assert info["messi_json_sha256"] == info_digest(info)
    messi.load(path)  # verifies


def test_files_beside_a_messi_folder_survive_overwrite(folder):
    path, model = folder
    (path / "notes.txt").write_text("mine")
    (path / "results").mkdir()
    (path / "results" / "r.json").write_text("{}")
    with pytest.raises(MessiError, match="holds 'notes.txt', which messi did not write"):
        resave(model, path)
    assert (path / "notes.txt").read_text() == "mine" and (path / "results" / "r.json").is_file()
    (path / "notes.txt").unlink()
    shutil.rmtree(path / "results")
    resave(model, path)  # exactly its own files: replaced


@pytest.mark.parametrize("where", ["home", "cwd", "parent"])
def test_overwrite_never_replaces_home_cwd_or_their_parents(tmp_path, monkeypatch, folder, where):
    path, model = folder
    (tmp_path / "inner").mkdir()
    target = {"home": path, "cwd": path, "parent": path}[where]
    if where == "home":
        monkeypatch.setenv("HOME", str(path))
    else:
        monkeypatch.chdir(path if where == "cwd" else path)
        if where == "parent":
            (path / "sub").mkdir()
            monkeypatch.chdir(path / "sub")
    with pytest.raises(MessiError, match="never replaces it"):
        resave(model, target)
    assert (path / CONFIG_NAME).is_file()


@pytest.mark.parametrize("file, edit", [
    ("config.json", lambda t: t.replace('"layer_norm_eps": 1e-12', '"layer_norm_eps": 1e-05')),
    ("config.json", lambda t: t.replace('"hidden_act": "gelu"', '"hidden_act": "relu"')),
    (CONFIG_NAME, lambda t: t.replace('"padding_idx": 0', '"padding_idx": 1')),
    ("tokenizer.json", lambda t: t.replace('"[UNK]": 100', '"[UNK]": 101', 1)),
    ("modules.json", lambda t: t.replace("Normalize", "Normalize ")),
])
def test_each_edited_byte_that_changes_outputs_is_detected(folder, file, edit):
    path, _ = folder
    text = (path / file).read_text()
    assert edit(text) != text, "the edit must change the file"
    (path / file).write_text(edit(text))
    with pytest.raises(MessiError, match="edited|changed"):
        messi.load(path)


def test_a_folder_without_its_tokenizer_is_refused_naming_the_file(folder):
    path, _ = folder
    (path / "tokenizer.json").unlink()
    with pytest.raises(MessiError, match="tokenizer.json is missing"):
        messi.load_tokenizer(path)
    with pytest.raises(MessiError, match="tokenizer.json is missing"):
        messi.eval_sts(str(path), limit=5)


def test_a_folder_from_before_the_manifest_still_loads(minilm_dir):
    legacy = Path(__file__).parent / "data" / "legacy_v1" / "tied_svd"
    assert "files" not in messi.read_info(legacy)
    messi.load(legacy)


def test_nan_and_deep_nesting_in_messi_json_are_one_clear_error(folder):
    path, _ = folder
    text = (path / CONFIG_NAME).read_text()
    (path / CONFIG_NAME).write_text(text.replace('"tol": 0.0001', '"tol": NaN'))
    with pytest.raises(MessiError, match="corrupt.*NaN"):
        messi.read_info(path)
    (path / CONFIG_NAME).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(MessiError, match="corrupt"):
        messi.read_info(path)


def test_info_json_prints_standard_json(folder):
    from typer.testing import CliRunner

    from messi.cli import app

    path, _ = folder
    result = CliRunner().invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    json.loads(result.output, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert os.path.isdir(path)


def test_wrong_answers_become_errors():
    tok = messi.load_tokenizer()
    with pytest.raises(MessiError, match="one string"):
        messi.token_counts(tok, "a string")
    with pytest.raises(MessiError, match="limit must be in"):
        messi.eval_sts(limit=-1)
    from messi.calibration import output_sensitivity

    with pytest.raises(MessiError, match="at least one calibration batch"):
        output_sensitivity(messi.load_pretrained(), [])


def test_nan_embeddings_are_an_error_not_a_score(tmp_path):
    from messi.evaluate import read_pooling, sts_pairs, sts_score

    model = messi.load_pretrained()
    with torch.no_grad():
        model.get_input_embeddings().weight[:] = float("nan")
    with pytest.raises(MessiError, match="NaN"):
        sts_score(model, messi.load_tokenizer(), read_pooling(None), sts_pairs("dev", limit=10))


def test_pipes_folders_and_byte_order_marks_as_calibration(tmp_path):
    from messi.calibration import read_texts

    with pytest.raises(MessiError, match="is a folder"):
        read_texts(str(tmp_path))
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(MessiError, match="not a regular file"):
        read_texts(str(fifo))
    csv = tmp_path / "excel.csv"
    csv.write_bytes("\ufefftext,label\nhello there,1\n".encode("utf-8"))
    assert read_texts(str(csv)) == ["hello there"]  # the BOM is not part of the column name
    txt = tmp_path / "notepad.txt"
    txt.write_bytes("\ufefffirst line\nsecond\n".encode("utf-8"))
    assert read_texts(str(txt)) == ["first line", "second"]


def test_a_config_json_that_is_a_pipe_is_refused_not_read(folder):
    path, _ = folder
    (path / "config.json").unlink()
    os.mkfifo(path / "config.json")
    with pytest.raises(MessiError, match="config.json"):
        messi.load(path)


def test_meta_models_and_ids_past_the_table_are_clear_errors():
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32)
    with torch.device("meta"):
        meta = transformers.BertModel(cfg)
    with pytest.raises(MessiError, match="meta device"):
        messi.compress(meta, method="svd", ratio=0.5)
    model = messi.compress(transformers.BertModel(cfg).eval(), method="svd", ratio=0.5)
    with pytest.raises(IndexError, match=r"token ids must be in \[0, 50\), got 0..77"):
        model.get_input_embeddings()(torch.tensor([[0, 77]]))
