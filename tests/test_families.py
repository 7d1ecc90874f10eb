"""Model families: the right one per kind of model, its embedding, head, tying and blocks, on tiny
random configs of the shapes we support (encoders and decoders, tied and untied)."""

import pytest
import torch
import transformers

import messi
from messi.families import CausalLM, MaskedLM, SentenceEncoder, SequenceClassifier, family_of


def bert(cls):
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, num_labels=2)
    torch.manual_seed(0)
    return cls(cfg).eval()


def decoder(kind, tied):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
        return transformers.LlamaForCausalLM(cfg).eval()
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
        return transformers.Qwen2ForCausalLM(cfg).eval()
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=60, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                      tie_word_embeddings=tied)
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.Gemma3TextConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                        tie_word_embeddings=tied, sliding_window=8)
    return transformers.Gemma3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("cls, family", [(transformers.BertModel, SentenceEncoder),
                                         (transformers.BertForMaskedLM, MaskedLM),
                                         (transformers.BertForSequenceClassification, SequenceClassifier)])
def test_encoders_get_their_family(cls, family):
    model = bert(cls)
    fam = family_of(model)
    assert type(fam) is family
    assert fam.is_tied(model, fam.input_embedding(model)) == (cls is transformers.BertForMaskedLM)
    names = list(fam.linear_layers(model))
    assert len(names) == 12 and all(".layer." in n for n in names)  # 6 per block, no pooler or head


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2", "gemma3"])
@pytest.mark.parametrize("tied", [True, False])
def test_decoders_are_causal_lms_with_their_tying_and_blocks(kind, tied):
    model = decoder(kind, tied)
    fam = family_of(model)
    assert isinstance(fam, CausalLM)
    assert fam.is_tied(model, fam.input_embedding(model)) == tied
    if kind == "gpt2":  # GPT-2's blocks use transformers' Conv1D, not nn.Linear: said in one line
        with pytest.raises(messi.MessiError, match="no nn.Linear inside numbered blocks"):
            fam.linear_layers(model)
        return
    layers = fam.linear_layers(model)
    assert layers and all(any(p.isdigit() for p in n.split(".")) for n in layers)
    assert {n.rsplit(".", 1)[-1] for n in layers} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"}


def test_gemma_reports_its_embedding_scale():
    model = decoder("gemma3", True)
    fam = family_of(model)
    assert fam.embedding_scale(fam.input_embedding(model)) == pytest.approx(16 ** 0.5)
    assert fam.embedding_scale(bert(transformers.BertModel).get_input_embeddings()) is None


def test_reference_outputs_follow_the_family():
    batch = {"input_ids": torch.tensor([[1, 2, 3, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    clf = bert(transformers.BertForSequenceClassification)
    assert family_of(clf).reference_outputs(clf, batch).shape == (1, 2)      # logits
    enc = bert(transformers.BertModel)
    assert family_of(enc).reference_outputs(enc, batch).shape == (3, 16)     # real tokens' states
    lm = decoder("llama", True)
    assert family_of(lm).reference_outputs(lm, batch).shape == (3, 16)


def test_an_already_compressed_model_is_refused():
    model = messi.compress(bert(transformers.BertModel), method="svd", ratio=0.5)
    with pytest.raises(messi.MessiError, match="already compressed"):
        family_of(model).input_embedding(model)


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_a_tied_head_is_measured_for_the_whole_model_too(kind):
    """`--target all` on a tied causal LM measures E[h h^T] for its table (the head's logits are
    not fitted blind); an untied one and a sentence encoder keep their whole-model defaults."""
    from messi.calibration import _measures_table_metric

    assert _measures_table_metric(decoder(kind, True), "all")
    assert not _measures_table_metric(decoder(kind, False), "all")
    assert not _measures_table_metric(decoder(kind, True), "linear")
    assert not _measures_table_metric(bert(transformers.BertModel), "all")
    assert _measures_table_metric(bert(transformers.BertModel), "embedding")
