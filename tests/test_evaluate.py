"""Zero-shot STS-B against sentence-transformers' own encoding of the same real pairs."""

import numpy as np
import pytest
import torch
from scipy import stats

import messi
from messi.evaluate import Pooling, pool, read_pooling, sts_pairs, sts_score


@pytest.fixture(scope="module")
def pairs():
    return sts_pairs("dev", limit=40)


def test_pairs_are_the_real_first_rows(pairs):
    a, b, gold = pairs
    assert len(a) == len(b) == len(gold) == 40
    # STS-B/dev.tsv first data row, columns 7, 8, 9, read by hand
    assert a[0] == "A man with a hard hat is dancing."
    assert b[0] == "A man wearing a hard hat is dancing."
    assert gold[0] == 5.0


def test_minilm_pooling_is_read_from_its_folder(minilm_dir):
    assert read_pooling(minilm_dir) == Pooling("mean", True, 256)


def test_score_equals_sentence_transformers(minilm_dir, pairs):
    from sentence_transformers import SentenceTransformer

    ours = sts_score(messi.load_pretrained(), messi.load_tokenizer(), read_pooling(minilm_dir), pairs)
    st = SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)
    a, b, gold = pairs
    ea, eb = st.encode(a, convert_to_tensor=True), st.encode(b, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(ea, eb).numpy()
    assert ours["spearman"] == pytest.approx(100 * stats.spearmanr(cos, gold).statistic, abs=1e-3)
    assert ours["pearson"] == pytest.approx(100 * stats.pearsonr(cos, gold).statistic, abs=1e-3)
    assert ours["pairs"] == 40


def test_pool_modes_by_hand():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    m = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(h, m, "mean"), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(pool(h, m, "cls"), torch.tensor([[1.0, 2.0]]))
    assert torch.equal(pool(h, m, "max"), torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(pool(h, m, "mean_sqrt_len"), torch.tensor([[4.0, 6.0]]) / np.sqrt(2))
