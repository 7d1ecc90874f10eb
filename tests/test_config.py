"""CompressionConfig: validated where it is made, round-tripped through messi.json."""

import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st

import messi
from messi import CalibrationSettings, CompressionConfig, MessiError


def tiny(vocab=64):
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


@pytest.mark.parametrize("bad, words", [
    (dict(method="pca"), ["method", "svd, messi"]),
    (dict(ratio=1.0), ["ratio", "between 0 and 1"]),
    (dict(ratio=True), ["ratio"]),
    (dict(k=0), ["k must be in"]),
    (dict(target="head"), ["target"]),
    (dict(allocation="greedy"), ["allocation"]),
    (dict(bits=3), ["bits", "8, 4"]),
    (dict(seed=-1), ["seed"]),
    (dict(n_init=0), ["n_init"]),
    (dict(tol=float("nan")), ["tol", "finite"]),
    (dict(loss="l3"), ["loss"]),
    (dict(init_size=0), ["init_size"]),
    (dict(rank=4, target="all"), ["rank is chosen per layer"]),
    (dict(bits=None, group_size=32), ["group_size needs bits"]),
    (dict(size=1.0), ["size"]),
    (dict(size=0.1, target="linear"), ["size chooses the rank"]),
])
def test_a_bad_field_is_refused_where_the_config_is_made(bad, words):
    with pytest.raises(MessiError) as e:
        CompressionConfig(**bad)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_calibration_settings_are_checked_where_made():
    with pytest.raises(MessiError, match="alpha"):
        CalibrationSettings(("glue:sst2",), alpha=0)
    with pytest.raises(MessiError, match="non-empty strings"):
        CalibrationSettings(("",))


def test_svd_has_one_subspace_whatever_k_says():
    assert CompressionConfig(method="svd", k=7).k == 1


@given(method=st.sampled_from(["svd", "messi"]), ratio=st.floats(0.01, 0.99), k=st.integers(1, 9),
       target=st.sampled_from(["embedding", "linear", "all"]), bits=st.sampled_from([None, 8, 4]),
       init_size=st.one_of(st.none(), st.integers(1, 10**6)),
       sources=st.lists(st.sampled_from(["glue:sst2", "a.txt", "b.jsonl"]), max_size=3))
def test_to_dict_from_dict_round_trips(method, ratio, k, target, bits, init_size, sources):
    cal = CalibrationSettings(tuple(sources), output_texts=5) if sources else None
    bits = bits if target == "embedding" else None
    cfg = CompressionConfig(method=method, ratio=ratio, k=k, target=target, bits=bits, init_size=init_size,
                            calibration=cal)
    assert CompressionConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_fields_are_refused():
    with pytest.raises(MessiError, match="unknown compression config field 'fancy'"):
        CompressionConfig.from_dict({"method": "svd", "fancy": 1})
    with pytest.raises(MessiError, match="unknown argument 'row_weights'.*CalibrationData"):
        messi.compress(tiny(), method="svd", row_weights=torch.ones(64))


def test_config_compress_save_load_gives_the_same_config(tmp_path):
    cfg = CompressionConfig(method="messi", ratio=0.5, k=2, n_init=1, max_iter=5, seed=3,
                            calibration=CalibrationSettings(("glue:rte",), alpha=2.0, power=0.5, output_texts=0))
    model = messi.compress(tiny(), cfg)
    assert model.compression_config == cfg
    messi.save(model, tmp_path / "out")
    assert messi.load(tmp_path / "out").compression_config == cfg
    assert messi.read_info(tmp_path / "out")["config"] == cfg.to_dict()


def test_keyword_fields_override_a_given_config():
    model = messi.compress(tiny(), CompressionConfig(method="messi", ratio=0.4, k=3), method="svd", ratio=0.6)
    assert model.compression_config == CompressionConfig(method="svd", ratio=0.6)


def test_a_folder_from_before_the_config_yields_the_config_its_fields_imply():
    info = messi.read_info("tests/data/legacy_v1/all_messi")
    cfg = CompressionConfig.from_info(info)
    assert (cfg.method, cfg.ratio, cfg.k, cfg.target, cfg.allocation) == ("messi", 0.5, 2, "all", "uniform")
    emb = CompressionConfig.from_info(messi.read_info("tests/data/legacy_v1/embedding_messi"))
    assert (emb.method, emb.k, emb.rank, emb.target) == ("messi", 3, messi.read_info("tests/data/legacy_v1/embedding_messi")["rank"], "embedding")
