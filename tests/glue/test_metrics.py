"""Metrics against values computed by hand."""

import numpy as np
import pytest

from messi.datasets import get_task
from messi.glue.metrics import compute_metrics, glue_score


def test_accuracy_from_logits():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])
    assert compute_metrics(get_task("rte"), logits, np.array([0, 1, 1, 1])) == {"accuracy": 0.5}


def test_mrpc_f1_and_accuracy():
    # pred 1,1,0,0 vs label 1,0,1,0: TP=1 FP=1 FN=1 -> F1 = 2/(2+1+1) = 0.5; accuracy 0.5
    pred = np.array([[0, 1], [0, 1], [1, 0], [1, 0]], dtype=float)
    m = compute_metrics(get_task("mrpc"), pred, np.array([1, 0, 1, 0]))
    assert m == pytest.approx({"f1": 0.5, "accuracy": 0.5})


def test_cola_matthews():
    # TP=2 TN=1 FP=1 FN=0: (2*1 - 1*0) / sqrt(3*2*2*1) = 2/sqrt(12)
    pred = np.array([1, 1, 1, 0])
    m = compute_metrics(get_task("cola"), np.eye(2)[pred], np.array([1, 1, 0, 0]))
    assert m["matthews"] == pytest.approx(2 / np.sqrt(12))


def test_stsb_pearson_spearman():
    scores = np.array([[1.0], [2.0], [3.0], [5.0]])
    m = compute_metrics(get_task("stsb"), scores, np.array([1.0, 2.0, 3.0, 4.0]))
    # Spearman: same order -> 1. Pearson of (1,2,3,5) and (1,2,3,4): cov 4.1667/ (1.7078*1.2910)
    assert m["spearman"] == pytest.approx(1.0)
    x, y = np.array([1, 2, 3, 5.0]), np.array([1, 2, 3, 4.0])
    hand = ((x - x.mean()) * (y - y.mean())).sum() / np.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert m["pearson"] == pytest.approx(hand)
    assert glue_score({"pearson": 0.8, "spearman": 0.9}) == pytest.approx(85.0)


def test_mrpc_f1_is_binary_f1_of_the_positive_class():
    # asymmetric: labels 1,1,1,0,0,0 ; predictions 1,1,0,1,0,0 -> TP=2 FP=1 FN=1 TN=2
    # positive-class F1 = 2*2/(2*2+1+1) = 4/6; macro F1 would be (4/6 + 4/6)/2 here too, so add a skew:
    # labels 1,1,1,1,0,0 ; predictions 1,1,1,0,1,0 -> TP=3 FP=1 FN=1 TN=1
    # positive F1 = 6/8 = 0.75; negative-class F1 = 2/4 = 0.5; macro 0.625; accuracy 4/6
    pred = np.eye(2)[[1, 1, 1, 0, 1, 0]]
    m = compute_metrics(get_task("mrpc"), pred, np.array([1, 1, 1, 1, 0, 0]))
    assert m["f1"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_spearman_with_ties_by_hand():
    # gold ranks with a tie: (1, 2.5, 2.5, 4); scores ranks (1, 2, 3, 4)
    m = compute_metrics(get_task("stsb"), np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.0, 1.0, 1.0, 3.0]))
    r1, r2 = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4.0])
    hand = ((r1 - r1.mean()) * (r2 - r2.mean())).sum() / np.sqrt(((r1 - r1.mean()) ** 2).sum() * ((r2 - r2.mean()) ** 2).sum())
    assert m["spearman"] == pytest.approx(hand)


def test_matthews_on_an_asymmetric_matrix():
    # labels 1,1,1,0,0 ; predictions 1,0,0,0,0 -> TP=1 FN=2 TN=2 FP=0
    m = compute_metrics(get_task("cola"), np.eye(2)[[1, 0, 0, 0, 0]], np.array([1, 1, 1, 0, 0]))
    tp, tn, fp, fn = 1, 2, 0, 2
    hand = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["matthews"] == pytest.approx(hand)


def test_class_id_predictions_score_like_their_logits():
    # (m,) class ids are taken as they are, not arg-maxed; same numbers as the one-hot logits
    ids, labels = np.array([1, 0, 0, 1, 1]), np.array([1, 0, 1, 1, 0])
    task = get_task("mrpc")
    assert compute_metrics(task, ids, labels) == compute_metrics(task, np.eye(2)[ids], labels)
    assert compute_metrics(task, ids, labels)["accuracy"] == pytest.approx(3 / 5)
