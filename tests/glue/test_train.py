"""Which rows a GLUE run trains on and which it scores on (real RTE rows)."""

import pytest

from messi import MessiError
from messi.datasets import read_split
from messi.glue.train import TrainConfig, evaluated_on, train_and_eval_rows


@pytest.fixture(scope="module")
def rte():
    return read_split("rte", "train"), read_split("rte", "dev")


def _keys(rows):
    return [(r.text_a, r.text_b, r.label) for r in rows]


def test_without_holdout_scores_on_dev(rte):
    train, dev = rte
    used, scored = train_and_eval_rows(train, dev, TrainConfig())
    assert _keys(used) == _keys(train) and _keys(scored) == _keys(dev)
    assert evaluated_on(None) == "dev"


def test_holdout_splits_train_into_disjoint_parts_and_never_touches_dev(rte):
    train, dev = rte
    used, scored = train_and_eval_rows(train, dev, TrainConfig(), holdout=0.15)
    assert len(scored) == round(0.15 * len(train)) and len(used) + len(scored) == len(train)
    assert sorted(_keys(used) + _keys(scored)) == sorted(_keys(train))
    by_identity = {id(r) for r in used}
    assert not any(id(r) in by_identity for r in scored)
    assert not set(map(id, scored)) & set(map(id, dev))
    assert "train holdout" in evaluated_on(0.15) and "0.15" in evaluated_on(0.15)


def test_holdout_rows_do_not_depend_on_the_training_seed(rte):
    train, dev = rte
    first = train_and_eval_rows(train, dev, TrainConfig(seed=1), holdout=0.1)
    second = train_and_eval_rows(train, dev, TrainConfig(seed=2), holdout=0.1)
    assert _keys(first[1]) == _keys(second[1]) and _keys(first[0]) == _keys(second[0])
    # not simply the first or last rows of the file
    assert _keys(first[1]) != _keys(train[:len(first[1])]) and _keys(first[1]) != _keys(train[-len(first[1]):])


def test_subsampling_applies_within_each_side(rte):
    train, dev = rte
    cfg = TrainConfig(max_train_samples=50, max_eval_samples=20)
    used, scored = train_and_eval_rows(train, dev, cfg, holdout=0.2)
    _, full_held = train_and_eval_rows(train, dev, TrainConfig(), holdout=0.2)
    assert len(used) == 50 and len(scored) == 20
    assert set(map(id, scored)) <= set(map(id, full_held))
    assert not set(map(id, used)) & set(map(id, full_held))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.6, float("nan"), True])
def test_bad_holdout_names_the_flag(rte, fraction):
    with pytest.raises(MessiError, match="--holdout"):
        train_and_eval_rows(*rte, TrainConfig(), holdout=fraction)


def test_holdout_that_leaves_no_train_row_is_refused(rte):
    train, dev = rte
    with pytest.raises(MessiError, match="leaves no train row"):
        train_and_eval_rows(train[:1], dev, TrainConfig(), holdout=0.5)


def test_a_new_head_is_drawn_from_the_seed_alone(minilm_dir, tmp_path):
    """The same seed gives the same new classification head whatever the process drew before
    (built-in model and a compressed messi folder alike); another seed another head; the global
    generator is left where it was."""
    import torch

    import messi
    from messi.datasets import get_task
    from messi.glue.train import load_classifier

    task = get_task("rte")

    def head(ref, seed):
        model = load_classifier(ref, task, seed)
        return torch.cat([p.detach().flatten() for n, p in model.named_parameters()
                          if n.startswith(("classifier.", "bert.pooler."))])

    torch.manual_seed(123)
    first = head(minilm_dir, 7)
    after = torch.rand(3)
    torch.manual_seed(123)
    torch.rand(1000)  # whatever ran before in the process
    assert torch.equal(head(minilm_dir, 7), first)
    assert not torch.equal(head(minilm_dir, 8), first)
    torch.manual_seed(123)
    head(minilm_dir, 7)
    assert torch.equal(torch.rand(3), after)

    folder = tmp_path / "small"
    messi.save(messi.compress(messi.load_pretrained(minilm_dir), method="svd", ratio=0.5), folder,
               messi.load_tokenizer(minilm_dir))
    torch.rand(5)
    assert torch.equal(head(folder, 3), head(folder, 3))
