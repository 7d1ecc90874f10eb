"""Compressed folders through transformers' AutoModel and sentence-transformers, no remote code."""

import pytest
import torch
import transformers

import messi
from messi.evaluate import encode, read_pooling

TEXTS = ["The cat sat on the mat.", "Projective clustering compresses embeddings.", "hello"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, minilm_dir):
    model = messi.compress(messi.load_pretrained(), method="messi", ratio=0.6, k=3, n_init=1, max_iter=5)
    path = tmp_path_factory.mktemp("st") / "out"
    messi.save(model, path, tokenizer=messi.load_tokenizer(), source=minilm_dir)
    return path


def test_folder_keeps_sentence_transformers_settings(folder, minilm_dir):
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json"):
        assert (folder / name).read_bytes() == (minilm_dir / name).read_bytes()


def test_automodel_loads_the_compressed_model(folder):
    model = transformers.AutoModel.from_pretrained(folder)
    assert isinstance(model.get_input_embeddings(), messi.ProjectiveEmbedding)
    ref = messi.load(folder)
    tok = messi.load_tokenizer(folder)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, ref(**batch).last_hidden_state)


def test_sentence_transformer_encodes_like_messi_load(folder):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)  # no trust_remote_code
    got = st.encode(TEXTS, convert_to_tensor=True)
    want = encode(messi.load(folder), messi.load_tokenizer(folder), TEXTS, read_pooling(folder))
    assert torch.allclose(got, want, atol=1e-5)
    assert isinstance(st[0].auto_model.get_input_embeddings(), messi.ProjectiveEmbedding)


def test_custom_module_classes_are_not_copied(tmp_path, minilm_dir):
    import json
    import shutil

    src = tmp_path / "src"
    shutil.copytree(minilm_dir, src)
    modules = json.loads((src / "modules.json").read_text())
    modules[1]["type"] = "evil_module.Pooling"
    (src / "modules.json").write_text(json.dumps(modules))
    model = messi.compress(messi.load_pretrained(str(src)), method="svd", ratio=0.5)
    with pytest.raises(messi.MessiError, match="not part of sentence-transformers"):
        messi.save(model, tmp_path / "out", source=src)
    assert not (tmp_path / "out").exists()
