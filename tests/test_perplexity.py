"""eval-ppl: perplexity by hand on a tiny causal LM, windows, the held-out text, refusals."""

import math

import pytest
import torch
import transformers

import messi
from messi.perplexity import held_out_texts, perplexity, windows


class Tok:
    """A character tokenizer with a BOS: enough to check windows and the sums by hand."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (ord(c) % 50) for c in text]}


def tiny_lm(tied=True):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_windows_start_with_bos_and_cover_the_text_once():
    chunks = windows(Tok(), ["abcdefghij", "klm"], window=5)
    ids = Tok()("abcdefghij\n\nklm")["input_ids"]
    assert all(c[0] == 1 and len(c) <= 5 for c in chunks)
    assert [t for c in chunks for t in c[1:].tolist()] == ids


def test_perplexity_equals_the_mean_nll_computed_by_hand():
    model, texts = tiny_lm(), ["hello world, this is a test", "and another line"]
    got = perplexity(model, Tok(), texts, window=8)
    nll, n, hits = 0.0, 0, 0
    for ids in windows(Tok(), texts, 8):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), -1)
        for pos in range(len(ids) - 1):
            nll -= float(logp[pos, ids[pos + 1]])
            hits += int(logp[pos].argmax() == ids[pos + 1])
            n += 1
    assert got["tokens"] == n and got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert got["next_token_accuracy"] == hits / n


def test_an_encoder_is_refused():
    with pytest.raises(messi.MessiError, match="not a causal LM"):
        perplexity(messi.load_pretrained(), messi.load_tokenizer(), ["a text"])


def test_the_held_out_text_is_rte_and_qnli_dev():
    texts = held_out_texts()
    assert len(texts) == 2 * 277 + 2 * 250


def test_a_compressed_causal_lm_keeps_its_family_and_generates(tmp_path):
    model = tiny_lm()
    messi.compress(model, method="messi", k=2, ratio=0.5, n_init=1, max_iter=5)
    messi.save(model, tmp_path / "o")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)
    out = again.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 8)


def test_gemma_scaled_embedding_is_kept(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=8, sliding_window=8)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    emb = model.get_input_embeddings()
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        want = emb(ids)
    messi.compress(model, method="svd", ratio=0.3)
    layer = model.get_input_embeddings()
    assert layer.embed_scale == pytest.approx(16 ** 0.5) == float(emb.embed_scale)
    with torch.no_grad():
        table = layer.weight  # the table itself, unscaled: what the tied head reads
        assert torch.allclose(layer(ids)[0], table[ids[0]] * 16 ** 0.5, atol=1e-6)
        assert torch.allclose(model.get_output_embeddings().weight, table)
        # the scale is applied as Gemma applies it: the original table's rows scale the same way
        assert torch.allclose(want[0], emb.weight[ids[0]] * 16 ** 0.5, atol=1e-6)
    messi.save(model, tmp_path / "g")
    again = messi.load(tmp_path / "g")
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_tied_lm_is_calibrated_with_the_head_side_metric():
    from messi.calibration import output_metric

    model = tiny_lm(tied=True)
    batches = [{"input_ids": torch.tensor([[1, 5, 7, 9], [1, 3, 0, 0]]),
                "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])}]
    G, record = output_metric(model, batches)
    with torch.no_grad():
        h = model.model(**batches[0])[0][batches[0]["attention_mask"].bool()].double()
    assert torch.allclose(G, h.T @ h / 6)
    assert record["output"] == "tied LM head logits"
    _, untied = output_metric(tiny_lm(tied=False), batches)
    assert untied["output"] != "tied LM head logits"  # an untied table is felt through the model
