"""Folders written before the CompressionConfig (messi 04f1480, tests/data/legacy_v1) still load
exactly: the same outputs as the model that was saved."""

from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import messi

LEGACY = Path(__file__).parent / "data" / "legacy_v1"


@pytest.mark.parametrize("name, output", [("embedding_messi", "last_hidden_state"), ("tied_svd", "logits"),
                                          ("all_messi", "last_hidden_state")])
def test_folders_written_before_the_config_reload_exactly(name, output):
    expected = load_file(str(LEGACY / "expected.safetensors"))
    model = messi.load(LEGACY / name)
    with torch.no_grad():
        got = getattr(model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]), output)
    assert torch.equal(got, expected[name])
    assert "config" not in messi.read_info(LEGACY / name)  # really an old folder
    assert model.compression_config.method == messi.read_info(LEGACY / name).get("method", "messi") or name == "all_messi"


def test_auto_classes_load_a_compressed_folder(tmp_path):
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = messi.compress(transformers.BertForMaskedLM(cfg).eval(), method="svd", ratio=0.5)
    messi.save(model, tmp_path / "o")
    ids = torch.tensor([[1, 2, 3, 4]])
    for auto in (transformers.AutoModel, transformers.AutoModelForMaskedLM):
        again = auto.from_pretrained(tmp_path / "o")
        assert type(again).__name__ == "BertForMaskedLM"
        with torch.no_grad():
            assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)
