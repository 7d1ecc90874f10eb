"""Loading models: the class whose weights are really in the checkpoint, never random weights."""

import json

import pytest
import torch
import transformers

import messi
from messi import MessiError
from messi.models import cache_dir, load_hf_model


def _tiny_config(**kw):
    return transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=32, **kw)


@pytest.fixture
def encoder_only_folder(tmp_path):
    """A folder whose config.json names BertForMaskedLM while the weights are a bare BertModel's
    (what a sentence-transformers export without modules.json looks like)."""
    torch.manual_seed(0)
    model = transformers.BertModel(_tiny_config())
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["BertForMaskedLM"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path, model


def test_head_without_weights_falls_back_to_the_encoder(encoder_only_folder):
    path, original = encoder_only_folder
    model = load_hf_model(path)
    assert type(model) is transformers.BertModel
    assert "BertForMaskedLM" in model.messi_load_report["reason"]
    # every weight is the checkpoint's, none invented
    for name, t in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name
    ids = torch.tensor([[1, 5, 7, 2]])
    assert model(input_ids=ids).last_hidden_state.shape == (1, 4, 16)


def test_complete_head_checkpoint_keeps_its_class(tmp_path):
    torch.manual_seed(0)
    mlm = transformers.BertForMaskedLM(_tiny_config())
    mlm.save_pretrained(tmp_path)
    model = load_hf_model(tmp_path)
    assert type(model) is transformers.BertForMaskedLM
    assert torch.equal(model.cls.predictions.transform.dense.weight, mlm.cls.predictions.transform.dense.weight)


def test_modules_json_means_bare_encoder(encoder_only_folder):
    path, _ = encoder_only_folder
    (path / "modules.json").write_text("[]")
    model = load_hf_model(path)
    assert type(model) is transformers.BertModel
    assert "sentence-transformers" in model.messi_load_report["reason"]


def test_missing_encoder_weights_are_refused(tmp_path):
    torch.manual_seed(0)
    model = transformers.BertModel(_tiny_config())
    state = {k: v for k, v in model.state_dict().items() if "layer.0.output" not in k}
    model.config.save_pretrained(tmp_path)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(MessiError, match="lacks weights"):
        load_hf_model(tmp_path)


def test_compress_records_which_class_was_loaded(encoder_only_folder):
    path, _ = encoder_only_folder
    model = messi.compress(messi.load_pretrained(str(path)), method="svd", ratio=0.4)
    assert model.messi_config["source_load"]["class"] == "BertModel"


@pytest.mark.skipif(not (cache_dir() / "all-mpnet-base-v2" / "model.safetensors").is_file(),
                    reason="all-mpnet-base-v2 not fetched (run: messi fetch-model mpnet)")
def test_real_mpnet_loads_as_its_encoder():
    model = messi.load_pretrained("mpnet")
    assert type(model).__name__ == "MPNetModel"
    from safetensors import safe_open
    with safe_open(str(cache_dir() / "all-mpnet-base-v2" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        # every weight of the model comes from the checkpoint (position_ids is a stored buffer)
        for name, t in model.state_dict().items():
            assert name in names, name
            assert torch.equal(t, f.get_tensor(name)), name
    tok = messi.load_tokenizer("mpnet")
    out = model(**tok(["a sentence"], return_tensors="pt")).last_hidden_state
    assert out.shape[-1] == 768
