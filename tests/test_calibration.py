"""Calibration: real text -> token counts -> row weights; bad sources give one clear error."""

import hashlib

import pytest
import torch

import messi
from messi import CalibrationData, MessiError
from messi.calibration import Calibration, calibrate, read_texts, token_counts, weights_from_counts


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return messi.load_tokenizer(minilm_dir)


def test_token_counts_on_real_text(tokenizer):
    texts = read_texts("glue:rte")[:50]
    counts = token_counts(tokenizer, texts)
    assert counts.shape == (30522,) and counts.dtype == torch.int64
    # an independent count: tokenise text by text and tally in Python
    expected = {}
    for t in texts:
        for i in tokenizer(t)["input_ids"]:
            expected[i] = expected.get(i, 0) + 1
    assert int(counts.sum()) == sum(expected.values())
    for i, c in expected.items():
        assert int(counts[i]) == c
    assert int(counts[tokenizer.cls_token_id]) == 50  # one [CLS] per text
    assert int((counts > 0).sum()) == len(expected)


def test_glue_source_reads_both_sentences_of_a_pair():
    texts = read_texts("glue:mrpc")
    assert len(texts) == 2 * 3668
    # first data row of MRPC/train.tsv, columns 3 and 4, read by hand
    assert texts[0].startswith("Amrozi accused his brother")
    assert texts[1].startswith("Referring to him as only")


def test_weights_rule():
    counts = torch.tensor([0, 3, 8, 0])
    w = weights_from_counts(counts, alpha=1.0, power=0.5)
    raw = torch.tensor([1.0, 2.0, 3.0, 1.0], dtype=torch.float64)
    assert torch.allclose(w, raw / raw.mean())
    assert torch.allclose(weights_from_counts(counts, power=0.0), torch.ones(4, dtype=torch.float64))
    assert float(w.min()) > 0  # unseen tokens keep a weight


def test_calibration_record(tokenizer, tmp_path):
    f = tmp_path / "texts.txt"
    f.write_text("the cat sat\n\nthe dog ran\n")
    cal = calibrate(tokenizer, [str(f)], 30522, alpha=2.0, power=0.25)
    rec = cal.record()
    assert rec["texts"] == 2 and rec["tokens"] == 2 * 5  # [CLS] the x y [SEP]
    assert rec["distinct_tokens"] == 7
    assert rec["weighting"] == {"rule": "(count + alpha) ** power", "alpha": 2.0, "power": 0.25}
    assert rec["counts_sha256"] == hashlib.sha256(cal.counts.numpy().astype("<i8").tobytes()).hexdigest()
    assert Calibration(["x"], cal.counts, 2, 2.0, 0.25).counts_sha256 == rec["counts_sha256"]


def test_jsonl_and_csv_sources(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": "two", "x": 1}\n')
    (tmp_path / "b.csv").write_text('id,body\n1,"hello, world"\n2,bye\n')
    assert read_texts(str(tmp_path / "a.jsonl")) == ["one", "two"]
    assert read_texts(str(tmp_path / "b.csv"), text_column="body") == ["hello, world", "bye"]


@pytest.mark.parametrize("content, name, column, match", [
    ("", "empty.txt", "text", "has no text"),
    (None, "missing.txt", "text", "does not exist"),
    ('{"text": "a"}\n', "a.jsonl", "body", "no 'body' field"),
    ("id,text\n1,a\n", "b.csv", "body", "no column 'body'"),
    ("not json\n", "c.jsonl", "text", "not valid JSON"),
])
def test_bad_sources(tmp_path, content, name, column, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(MessiError, match=match):
        read_texts(str(path), text_column=column)


def test_unknown_glue_task():
    with pytest.raises(MessiError, match="unknown GLUE task"):
        read_texts("glue:nope")


def test_calibrated_compress_protects_frequent_rows(minilm_dir, tokenizer):
    """On the real table: calibrated SVD has lower weighted error and higher plain error."""
    cal = calibrate(tokenizer, ["glue:rte"], 30522)
    plain = messi.compress(messi.load_pretrained(), method="svd", ratio=0.6).messi_config
    weighted = messi.compress(messi.load_pretrained(), method="svd", ratio=0.6, calibration=CalibrationData(row_weights=cal.weights, record=cal.record())).messi_config
    assert weighted["calibration"]["sources"] == ["glue:rte"]
    assert weighted["rel_error"] > plain["rel_error"]
    model = messi.load_pretrained()
    A = model.get_input_embeddings().weight.detach()
    approx_plain = messi.svd_factorize(A, plain["rank"]).reconstruct()
    from messi.factorize import relative_error
    assert weighted["weighted_rel_error"] < relative_error(A, approx_plain, cal.weights)


def test_input_moments_are_the_second_moments_of_the_real_tokens():
    """Oracle: layer 0's query reads the embedding block's output; padding rows do not count."""
    import transformers

    from messi.calibration import input_moments

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=16)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(1, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        x = model.embeddings(input_ids=ids)[mask.bool()].double()
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"]
    got = input_moments(model, [{"input_ids": ids, "attention_mask": mask}], names)
    expected = x.T @ x / 8
    assert torch.allclose(got[names[0]], expected, atol=1e-10) and torch.equal(got[names[0]], got[names[1]])
    # a later layer sees what the earlier ones made of it: not the embedding output
    later = input_moments(model, [{"input_ids": ids, "attention_mask": mask}], ["encoder.layer.1.output.dense"])
    assert later["encoder.layer.1.output.dense"].shape == (16, 16)


def test_calibration_batches_take_each_chosen_text_once_in_batches_of_similar_length():
    """Real SST-2 and RTE train text (short and long sentences mixed): every chosen text is in
    exactly one batch, batches are padded to their own longest text, and sorting by length pads
    fewer positions than the texts' own order would."""
    from messi import load_tokenizer
    from messi.calibration import calibration_batches, read_all

    tok = load_tokenizer()
    texts = read_all(["glue:sst2", "glue:rte"])
    batches = calibration_batches(tok, texts, max_texts=96, batch_size=16)
    chosen = texts[::len(texts) // 96][:96]
    real = sorted(tok.decode(ids[m.bool()], skip_special_tokens=True)
                  for b in batches for ids, m in zip(b["input_ids"], b["attention_mask"]))
    assert real == sorted(tok.decode(tok(t, truncation=True, max_length=128)["input_ids"], skip_special_tokens=True)
                          for t in chosen)
    lengths = [int(b["attention_mask"].sum(1).max()) for b in batches]
    assert lengths == sorted(lengths) and all(b["input_ids"].shape[1] == n for b, n in zip(batches, lengths))
    padded = sum(b["input_ids"].numel() for b in batches)
    unsorted = sum(len(chosen[i:i + 16]) * max(len(tok(t)["input_ids"]) for t in chosen[i:i + 16])
                   for i in range(0, 96, 16))
    assert padded < unsorted


def test_model_outputs_are_a_classifiers_logits_and_an_encoders_real_token_states():
    import transformers

    from messi.calibration import has_sequence_head, model_outputs

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, num_labels=3)
    ids = torch.randint(1, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batches = [{"input_ids": ids, "attention_mask": mask}]
    classifier = transformers.BertForSequenceClassification(config).eval()
    assert has_sequence_head(classifier) and not has_sequence_head(classifier.bert)
    with torch.no_grad():
        logits = classifier(input_ids=ids, attention_mask=mask).logits
        states = classifier.bert(input_ids=ids, attention_mask=mask)[0][mask.bool()]
    assert torch.equal(model_outputs(classifier, batches), logits)
    assert model_outputs(classifier.bert, batches).shape == (8, 8)
    assert torch.equal(model_outputs(classifier.bert, batches), states)


def _tiny_bert(num_labels=3, seed=0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, num_labels=num_labels)
    return transformers.BertForSequenceClassification(config).eval()


def _exact_probe_metric(model, batch, out_fn, seed=0):
    """The output metric computed the long way: every token's full Jacobian (out, d) by
    torch.autograd.functional.jacobian, times the same seeded probe, summed as g g^T."""
    emb = model.get_input_embeddings()
    with torch.no_grad():
        rows = emb(batch["input_ids"])
    out_shape = out_fn(rows).shape
    z = torch.randn(out_shape, generator=torch.Generator().manual_seed(seed))
    J = torch.autograd.functional.jacobian(out_fn, rows)  # (texts, out, texts, tokens, d)
    total, tokens = torch.zeros(rows.shape[-1], rows.shape[-1], dtype=torch.float64), 0
    for i in range(rows.shape[0]):
        for t in range(rows.shape[1]):
            if batch["attention_mask"][i, t]:
                g = (z.unsqueeze(-1) * J[:, :, i, t, :]).sum((0, 1)).double()
                total += torch.outer(g, g)
                tokens += 1
    return total / tokens


def test_output_sensitivity_equals_the_jacobian_computed_the_long_way():
    """Oracle on a tiny BERT, both outputs: mean-pooled normalised sentence embeddings of an
    encoder, and a classifier's logits; padding tokens do not count."""
    from messi.calibration import output_sensitivity
    from messi.evaluate import Pooling

    classifier = _tiny_bert()
    ids = torch.randint(1, 40, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": mask}
    encoder = classifier.bert

    def sentence(rows):
        hidden = encoder(inputs_embeds=rows, attention_mask=mask)[0]
        m = mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)

    def logits(rows):
        return classifier(inputs_embeds=rows, attention_mask=mask).logits

    got = output_sensitivity(encoder, [batch], Pooling("mean", True))
    assert torch.allclose(got, _exact_probe_metric(encoder, batch, sentence), rtol=1e-4, atol=1e-9)
    got = output_sensitivity(classifier, [batch])
    assert torch.allclose(got, _exact_probe_metric(classifier, batch, logits), rtol=1e-4, atol=1e-9)
    assert got.shape == (8, 8) and torch.allclose(got, got.T) and float(torch.linalg.eigvalsh(got).min()) > -1e-12
    assert classifier.training is False and all(p.grad is None for p in classifier.parameters())


def test_output_metric_predicts_what_the_real_model_feels(minilm_dir, tokenizer):
    """On all-MiniLM-L6-v2 and real RTE text: moving every embedding row a little along the
    metric's top eigenvector changes the sentence embeddings far more than the same move along
    its bottom one; and the metric is deterministic for a seed."""
    from messi.calibration import calibration_batches, output_sensitivity
    from messi.evaluate import encode, read_pooling

    model = messi.load_pretrained(minilm_dir)
    pooling = read_pooling(minilm_dir)
    texts = read_texts("glue:rte")[:64]
    G = output_sensitivity(model, calibration_batches(tokenizer, texts, max_texts=64), pooling)
    assert torch.equal(G, output_sensitivity(model, calibration_batches(tokenizer, texts, max_texts=64), pooling))
    _, Q = torch.linalg.eigh(G)
    reference = encode(model, tokenizer, texts, pooling)
    emb = model.get_input_embeddings()
    saved = emb.weight.data.clone()

    def change(direction):
        emb.weight.data = saved + 0.05 * saved.norm(dim=1, keepdim=True) * direction.float()
        moved = encode(model, tokenizer, texts, pooling)
        emb.weight.data = saved
        return float((moved - reference).square().sum())

    assert change(Q[:, -1]) > 10 * change(Q[:, 0])


def test_calibration_batches_read_pairs_as_pairs(tokenizer):
    """A pair task's inputs (real MRPC train pairs) are tokenised as the model reads them: both
    sentences, separated, the second one in segment 1."""
    from messi.calibration import calibration_batches
    from messi.datasets import read_split

    pairs = [(ex.text_a, ex.text_b) for ex in read_split("mrpc", "train")][:40]
    batches = calibration_batches(tokenizer, pairs, max_texts=40, batch_size=16)
    assert sum(len(b["input_ids"]) for b in batches) == 40
    for b in batches:
        for ids, types, mask in zip(b["input_ids"], b["token_type_ids"], b["attention_mask"]):
            real = ids[mask.bool()]
            assert int((real == tokenizer.sep_token_id).sum()) == 2 and int(types[mask.bool()].sum()) > 0
    decoded = sorted(tokenizer.decode(ids[m.bool()]) for b in batches for ids, m in zip(b["input_ids"], b["attention_mask"]))
    assert decoded == sorted(tokenizer.decode(tokenizer(a, b, truncation=True, max_length=128)["input_ids"])
                             for a, b in pairs)


def test_output_sensitivity_of_an_unnormalised_cls_output_and_a_model_left_as_found():
    """CLS pooling without normalisation against the long way; a model in training mode comes
    back in training mode, and the hook on its embedding is gone."""
    from messi.calibration import output_sensitivity
    from messi.evaluate import Pooling

    encoder = _tiny_bert().bert
    ids = torch.randint(1, 40, (3, 4), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    batch = {"input_ids": ids, "attention_mask": mask}

    def cls(rows):
        return encoder(inputs_embeds=rows, attention_mask=mask)[0][:, 0]

    encoder.train()
    got = output_sensitivity(encoder, [batch], Pooling("cls", False), seed=5)
    assert encoder.training and not encoder.get_input_embeddings()._forward_hooks
    encoder.eval()
    expected = _exact_probe_metric(encoder, batch, cls, seed=5)
    # unnormalised outputs: entries up to ~1e3, so float32's rounding is measured against the scale
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    # another seed is another probe: a different (still unbiased) estimate
    assert not torch.allclose(got, output_sensitivity(encoder, [batch], Pooling("cls", False), seed=6))


def test_output_sensitivity_averages_over_the_real_tokens_of_every_batch():
    """Two batches give the token-weighted mean of their separate estimates (the probe of the
    second batch is the generator's next draw, so it is checked through the sum, not per batch)."""
    from messi.calibration import output_sensitivity

    classifier = _tiny_bert()
    g = torch.Generator().manual_seed(2)
    a = {"input_ids": torch.randint(1, 40, (2, 5), generator=g), "attention_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]])}
    b = {"input_ids": torch.randint(1, 40, (1, 3), generator=g), "attention_mask": torch.ones(1, 3, dtype=torch.int64)}
    both = output_sensitivity(classifier, [a, b])
    first = output_sensitivity(classifier, [a])
    assert not torch.allclose(both, first)
    # the first batch alone, scaled by its 7 of the 10 real tokens, is part of the mean of both
    rest = (both * 10 - first * 7) / 3
    assert float(torch.linalg.eigvalsh(rest).min()) > -1e-9  # a sum of g g^T: positive semi-definite
    assert torch.linalg.matrix_rank(rest, atol=1e-10) <= 3  # 3 tokens, one g each


def test_output_metric_records_what_it_measured():
    from messi.calibration import output_metric, output_sensitivity
    from messi.evaluate import Pooling

    classifier = _tiny_bert()
    batches = [{"input_ids": torch.randint(1, 40, (n, 4), generator=torch.Generator().manual_seed(n)),
                "attention_mask": torch.ones(n, 4, dtype=torch.int64)} for n in (3, 2)]
    G, record = output_metric(classifier, batches)
    assert record == {"texts": 5, "output": "task head logits", "probe": "one Gaussian probe per text, seed 0"}
    assert torch.equal(G, output_sensitivity(classifier, batches))
    _, record = output_metric(classifier.bert, batches, Pooling("mean", True))
    assert record["output"] == "sentence embedding (mean pooling, normalised)"
    _, record = output_metric(classifier.bert, batches, Pooling("cls", False))
    assert record["output"] == "sentence embedding (cls pooling)"
    _, record = output_metric(classifier.bert, batches)
    assert record["output"] == "sentence embedding (mean pooling)"


def test_calibration_batches_truncate_spread_and_refuse_empty_text(tokenizer):
    from messi.calibration import calibration_batches

    texts = [f"text number {i} " + "word " * (3 * i) for i in range(10)]
    batches = calibration_batches(tokenizer, texts, max_texts=100, batch_size=4, max_length=16)
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 2]  # all 10 when fewer than max_texts
    assert max(b["input_ids"].shape[1] for b in batches) == 16
    spread = calibration_batches(tokenizer, texts, max_texts=3, batch_size=8)
    firsts = sorted(tokenizer.decode(ids[m.bool()], skip_special_tokens=True).split()[2]
                    for b in spread for ids, m in zip(b["input_ids"], b["attention_mask"]))
    assert firsts == ["0", "3", "6"]  # every third text, the first three of them
    with pytest.raises(MessiError, match="no text"):
        calibration_batches(tokenizer, ["  ", ""])
    with pytest.raises(MessiError, match="no text"):
        calibration_batches(tokenizer, [(" ", "second")])


def test_more_sources_tsv_blank_rows_and_bad_bytes(tmp_path):
    (tmp_path / "a.tsv").write_text("id\ttext\n1\tone, with a comma\n2\t\n3\tthree\n")
    assert read_texts(str(tmp_path / "a.tsv")) == ["one, with a comma", "three"]
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n   \n{"text": "  "}\n{"text": "two"}\n')
    assert read_texts(str(tmp_path / "b.jsonl")) == ["one", "two"]
    (tmp_path / "c.txt").write_text("first\n   \nsecond\n")
    assert read_texts(str(tmp_path / "c.txt")) == ["first", "second"]
    (tmp_path / "d.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(MessiError, match="not a string"):
        read_texts(str(tmp_path / "d.jsonl"))
    (tmp_path / "e.jsonl").write_text('["text"]\n')
    with pytest.raises(MessiError, match="no 'text' field"):
        read_texts(str(tmp_path / "e.jsonl"))
    (tmp_path / "f.txt").write_bytes(b"ok\n\xff\xfe bad\n")
    with pytest.raises(MessiError, match="not UTF-8"):
        read_texts(str(tmp_path / "f.txt"))


def test_token_counts_batches_and_a_too_small_table(tokenizer):
    texts = read_texts("glue:rte")[:30]
    assert torch.equal(token_counts(tokenizer, texts, batch_size=7), token_counts(tokenizer, texts))
    assert token_counts(tokenizer, texts, num_embeddings=40000).shape == (40000,)
    with pytest.raises(MessiError, match="embedding has 1000 rows"):
        token_counts(tokenizer, texts, num_embeddings=1000)


def test_calibrate_checks_its_settings_before_reading(tokenizer, tmp_path):
    with pytest.raises(MessiError, match="no calibration source"):
        calibrate(tokenizer, [], 30522)
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(MessiError, match="alpha"):
        calibrate(tokenizer, [missing], 30522, alpha=0.0)
    with pytest.raises(MessiError, match="power"):
        calibrate(tokenizer, [missing], 30522, power=4.5)
    calibrate(tokenizer, ["glue:wnli"], 30522, alpha=1e-6, power=4.0)  # both edges are allowed
    (tmp_path / "t.txt").write_text("a b\n")
    given = calibrate(tokenizer, [str(tmp_path / "t.txt")], 30522, texts=["the cat", "the dog"])
    assert given.n_texts == 2 and int(given.counts.sum()) == 8  # the texts given, not the file's


def test_table_and_count_edges(tokenizer, tmp_path):
    (tmp_path / "UP.TSV").write_text("text\tid\na, b\t1\nshort\n")  # upper-case suffix: still tabs
    assert read_texts(str(tmp_path / "UP.TSV")) == ["a, b", "short"]
    (tmp_path / "ragged.csv").write_text("id,text\n1,kept\n2\n3,\n")  # a row without the column: left out
    assert read_texts(str(tmp_path / "ragged.csv")) == ["kept"]
    (tmp_path / "UP.JSONL").write_text('{"text": "json"}\n')
    assert read_texts(str(tmp_path / "UP.JSONL")) == ["json"]
    texts = ["the cat sat"]
    top = int(max(tokenizer(texts)["input_ids"][0]))
    assert token_counts(tokenizer, texts, num_embeddings=top + 1)[top] == 1  # the largest id fits exactly
    with pytest.raises(MessiError, match=f"produced id {top} but the embedding has {top} rows"):
        token_counts(tokenizer, texts, num_embeddings=top)


def test_every_setting_reaches_the_reader_and_the_counts(tokenizer, tmp_path):
    """data_dir, text_column and num_embeddings travel from calibrate to the reader and the counts;
    alpha and power make the weights; the record names the output metric only when there is one."""
    wnli = tmp_path / "glue" / "WNLI"
    wnli.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (wnli / "train.tsv").write_text(header + "0\tA cat sat.\tIt sat.\t1\n1\tA dog ran.\tIt ran.\t0\n")
    (wnli / "dev.tsv").write_text(header + "0\tx\ty\t1\n")
    cal = calibrate(tokenizer, ["glue:wnli"], 40000, data_dir=tmp_path / "glue", alpha=2.0, power=0.5)
    assert cal.n_texts == 4 and cal.counts.shape == (40000,)  # the copy's 2 pairs, not the real 635
    assert torch.equal(cal.weights, weights_from_counts(cal.counts, 2.0, 0.5))
    (tmp_path / "t.csv").write_text("id,body\n1,the cat\n")
    assert calibrate(tokenizer, [str(tmp_path / "t.csv")], 30522, text_column="body").n_texts == 1
    (tmp_path / "t.jsonl").write_text('{"text": "a b"}\n')  # the default column is "text"
    assert calibrate(tokenizer, [str(tmp_path / "t.jsonl")], 30522).n_texts == 1
    from messi.calibration import read_all
    assert read_all([str(tmp_path / "t.jsonl"), str(tmp_path / "t.jsonl")]) == ["a b", "a b"]
    assert "output_metric" not in cal.record()
    cal.output_metric = {"texts": 4}
    assert cal.record()["output_metric"] == {"texts": 4}


def test_readers_keep_each_text_as_written_and_name_the_bad_line(tmp_path):
    (tmp_path / "a.txt").write_text("ends in X\ntrailing space  \n")
    assert read_texts(str(tmp_path / "a.txt")) == ["ends in X", "trailing space  "]
    long = "word " * 40
    (tmp_path / "b.csv").write_bytes(f'id,text\n1,"two\r\nlines"\n2,{long}\n'.encode())
    assert read_texts(str(tmp_path / "b.csv")) == ["two\r\nlines", long]  # quoted newlines kept, long fields read
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(MessiError, match=r"c\.jsonl:2: not valid JSON"):
        read_texts(str(tmp_path / "c.jsonl"))


def test_weighting_errors_name_their_flag():
    from messi.calibration import check_weighting

    with pytest.raises(MessiError, match=r"^--weight-alpha \(the weighting's alpha\) must be"):
        check_weighting(0.0, 1.0)
    with pytest.raises(MessiError, match=r"^--weight-power \(the weighting's power\) must be"):
        check_weighting(1.0, 5.0)
    with pytest.raises(MessiError, match=r"^--weight-power"):
        check_weighting(1.0, -0.5)
    check_weighting(1.0, 0.0)


def test_calibration_batches_defaults_and_ties_kept_in_source_order(tokenizer):
    """Defaults: 256 texts, batches of 32, 128 tokens. Texts cut to the same length keep their
    order in the sources (a stable sort on the truncated length, not on the text)."""
    from messi.calibration import calibration_batches

    batches = calibration_batches(tokenizer, [f"sentence {i} " + "word " * (i % 200) for i in range(300)])
    assert sum(len(b["input_ids"]) for b in batches) == 256
    assert [len(b["input_ids"]) for b in batches] == [32] * 8
    assert max(b["input_ids"].shape[1] for b in batches) == 128
    # both cut to 16 tokens; uncut, "zebra" (longer) would sort after "apple"
    texts = ["zebra " * 60, "apple " * 30, "short"]
    order = [tokenizer.decode(b["input_ids"][0], skip_special_tokens=True).split()[0]
             for b in calibration_batches(tokenizer, texts, batch_size=1, max_length=16)]
    assert order == ["short", "zebra", "apple"]


def test_output_metric_is_quiet_by_default_uses_its_pooling_and_counts_one_token(capfd):
    """No progress bar unless asked; the pooling given reaches the metric; a batch with one real
    token is that token's g g^T, not a share of it."""
    from messi.calibration import output_metric, output_sensitivity
    from messi.evaluate import Pooling

    classifier = _tiny_bert()
    batches = [{"input_ids": torch.randint(1, 40, (2, 4), generator=torch.Generator().manual_seed(3)),
                "attention_mask": torch.ones(2, 4, dtype=torch.int64)}]
    cls = Pooling("cls", False)
    G, _ = output_metric(classifier.bert, batches, cls)
    output_sensitivity(classifier.bert, batches)
    assert capfd.readouterr().err == ""
    assert torch.equal(G, output_sensitivity(classifier.bert, batches, cls))
    assert not torch.allclose(G, output_metric(classifier.bert, batches)[0])
    output_sensitivity(classifier.bert, batches, progress=True)
    assert "output metric" in capfd.readouterr().err
    output_metric(classifier.bert, batches, progress=True)  # the CLI asks for the bar
    assert "output metric" in capfd.readouterr().err

    one = {"input_ids": torch.tensor([[5, 7, 9]]), "attention_mask": torch.tensor([[1, 0, 0]])}

    def logits(rows):
        return classifier(inputs_embeds=rows, attention_mask=one["attention_mask"]).logits

    assert torch.allclose(output_sensitivity(classifier, [one]), _exact_probe_metric(classifier, one, logits),
                          rtol=1e-4, atol=1e-12)


def test_the_encoder_of_a_model_with_another_head_or_of_a_plain_module():
    """A model with a head other than a sequence classifier (masked LM) is read through its
    encoder's hidden states, like the encoder itself; a module without ``base_model`` is its own
    encoder."""
    import transformers

    from messi.calibration import input_moments, model_outputs, output_sensitivity

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16)
    mlm = transformers.BertForMaskedLM(config).eval()
    batches = [{"input_ids": torch.randint(1, 40, (2, 5), generator=torch.Generator().manual_seed(4)),
                "attention_mask": torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])}]
    assert torch.equal(model_outputs(mlm, batches), model_outputs(mlm.bert, batches))
    assert torch.equal(output_sensitivity(mlm, batches), output_sensitivity(mlm.bert, batches))

    class Plain(torch.nn.Module):  # input_ids -> (hidden,), as an encoder answers
        def __init__(self):
            super().__init__()
            self.emb, self.proj = torch.nn.Embedding(40, 6), torch.nn.Linear(6, 6)

        def get_input_embeddings(self):
            return self.emb

        def forward(self, input_ids, attention_mask=None, **_):
            return (self.proj(self.emb(input_ids)),)

    plain = Plain().eval()
    mask = batches[0]["attention_mask"].bool()
    with torch.no_grad():
        x = plain.emb(batches[0]["input_ids"])[mask].double()
        assert torch.equal(model_outputs(plain, batches), plain.proj(plain.emb(batches[0]["input_ids"]))[mask])
    assert torch.allclose(input_moments(plain, batches, ["proj"])["proj"], x.T @ x / 8, atol=1e-12)


def test_input_moments_of_a_layer_that_reads_one_vector_per_text():
    """BERT's pooler reads the [CLS] state of each text: its moment is the mean over texts of
    h h^T, however many tokens the texts have."""
    from messi.calibration import input_moments

    encoder = _tiny_bert().bert
    ids = torch.randint(1, 40, (3, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        h = encoder(input_ids=ids, attention_mask=mask)[0][:, 0].double()
    got = input_moments(encoder, [{"input_ids": ids, "attention_mask": mask}], ["pooler.dense"])["pooler.dense"]
    assert torch.allclose(got, h.T @ h / 3, atol=1e-10)
