"""Threshold rules on hand-made score lists (attack when score > threshold)."""

from __future__ import annotations

import numpy as np
import pytest

from iotwatch.anomaly.threshold import (
    auc_wins,
    best_f1_threshold,
    evaluate,
    fpr_threshold,
    weighted_auc,
)


def below(v: float) -> float:
    return float(np.nextafter(v, -np.inf))


@pytest.mark.parametrize(
    ("scores", "y", "want"),
    [
        # perfectly separable: the largest legitimate score
        ([0.1, 0.2, 0.3, 0.8, 0.9], [0, 0, 0, 1, 1], 0.3),
        # unsorted input, same answer
        ([0.9, 0.3, 0.8, 0.1, 0.2], [1, 0, 1, 0, 0], 0.3),
        # tied scores across classes: t=1 flags 2,2,3 (F1 0.8) beats t=2 (F1 2/3)
        ([1, 2, 2, 3], [0, 0, 1, 1], 1.0),
        # equal F1 (2/3) at "flag everything" and at t=3: the smaller threshold wins
        ([1, 2, 3, 4], [1, 0, 0, 1], below(1.0)),
        # all scores equal: only "flag everything" has F1 > 0
        ([5, 5, 5, 5], [0, 1, 0, 1], below(5.0)),
        # malicious outnumber legitimate: t=2 (tp 7, fp 1: F1 14/15) is the best
        ([1, 2, 3, 2.5, 4, 5, 6, 7, 8, 9], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1], 2.0),
        # one legitimate flow amid attacks: flagging everything (F1 16/17) wins
        ([5, 1, 2, 3, 4, 6, 7, 8, 9], [0, 1, 1, 1, 1, 1, 1, 1, 1], below(1.0)),
        # only attacks
        ([3, 1, 2], [1, 1, 1], below(1.0)),
    ],
)
def test_best_f1_threshold(scores, y, want) -> None:
    got = best_f1_threshold(scores, y)
    assert got == want
    # and no threshold (among all scores +- tiny) gives a higher F1
    best = evaluate(scores, y, got)["f1"]
    for t in [*scores, *(below(s) for s in scores)]:
        assert evaluate(scores, y, t)["f1"] <= best


def test_best_f1_threshold_errors() -> None:
    with pytest.raises(ValueError, match="at least one attack"):
        best_f1_threshold([1, 2], [0, 0])
    with pytest.raises(ValueError, match="2 scores for 3"):
        best_f1_threshold([1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="finite"):
        best_f1_threshold([1, float("nan")], [0, 1])


def test_fpr_threshold() -> None:
    legit = np.arange(1, 101, dtype=float)[::-1]
    assert fpr_threshold(legit, 0.05) == 95.0  # 5 of 100 above it
    assert fpr_threshold(legit, 0.01) == 99.0
    assert fpr_threshold(legit, 0.0) == 100.0
    assert fpr_threshold(np.arange(1, 11), 0.25) == 8.0  # 2/10 above; 7 would give 3/10
    assert fpr_threshold([1, 1, 1, 1], 0.1) == 1.0  # ties: nobody above
    assert fpr_threshold([7.0], 0.5) == 7.0
    for f in (0.01, 0.05, 0.1, 0.3):
        t = fpr_threshold(legit, f)
        assert (legit > t).mean() <= f
    with pytest.raises(ValueError):
        fpr_threshold([], 0.1)
    with pytest.raises(ValueError):
        fpr_threshold([1.0], 1.0)


def test_evaluate_by_hand() -> None:
    scores = [0.1, 0.2, 0.6, 0.7, 0.9]
    y = [0, 0, 1, 0, 1]
    types = ["", "", "scan", "", "flood/x"]
    m = evaluate(scores, y, 0.5, types)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(0.8)
    assert m["fpr"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["auc"] == pytest.approx(5 / 6)
    assert m["tpr_at_1pct_fpr"] == 0.5
    assert m["threshold"] == 0.5
    assert m["recall_per_attack"] == {"flood_x": 1.0, "scan": 1.0}
    assert (m["flows"], m["attacks"]) == (5, 2)
    # a score equal to the threshold is legitimate
    assert evaluate([1.0, 2.0], [0, 1], 2.0)["recall"] == 0.0


def test_evaluate_one_class() -> None:
    m = evaluate([0.1, 0.5], [0, 0], 0.3)
    assert m["auc"] is None and m["recall"] is None and m["f1"] is None
    assert m["fpr"] == 0.5 and m["recall_per_attack"] == {}
    m = evaluate([0.1, 0.5], [1, 1], 0.3, ["a", "b"])
    assert m["fpr"] is None and m["recall"] == 0.5
    assert m["recall_per_attack"] == {"a": 0.0, "b": 1.0}


def test_midpoint_placement_keeps_validation_predictions_and_centres_the_gap() -> None:
    from iotwatch.anomaly.threshold import best_f1_threshold

    s = [0.1, 0.2, 0.4, 1.6, 3.0]
    y = [False, False, False, True, True]
    assert best_f1_threshold(s, y) == 0.4
    mid = best_f1_threshold(s, y, placement="midpoint")
    assert mid == pytest.approx(0.8)  # sqrt(0.4 * 1.6)
    # same predictions on the validation scores
    assert [v > mid for v in s] == [v > 0.4 for v in s]
    # zero and negative scores: the arithmetic middle
    assert best_f1_threshold([0.0, 2.0], [False, True], placement="midpoint") == 1.0
    # nothing above the best threshold (all flagged as legit is best?) stays at the smallest
    assert best_f1_threshold([1.0, 1.0], [True, True], placement="midpoint") < 1.0
    with pytest.raises(ValueError, match="placement"):
        best_f1_threshold(s, y, placement="middle")


def test_auc_wins_on_hand_made_scores() -> None:
    y = np.array([0] * 50 + [1] * 50, dtype=bool)
    rng = np.random.default_rng(3)
    separates = np.where(y, 2.0, 1.0) + rng.uniform(0, 0.5, 100)  # AUC 1
    noisy = np.where(y, 1.2, 1.0) + rng.uniform(0, 0.5, 100)  # AUC well below 1
    assert auc_wins(y, separates, noisy, 200, seed=0) == 1.0
    assert auc_wins(y, noisy, separates, 200, seed=0) == 0.0
    # the same scores never win (strictly higher needed); seeded: the same share twice
    assert auc_wins(y, noisy, noisy, 50) == 0.0
    a = noisy + rng.normal(0, 0.01, 100)
    assert auc_wins(y, a, noisy, 300, seed=7) == auc_wins(y, a, noisy, 300, seed=7)
    # one flow of difference out of 100 is no evidence: far from 0.95 either way
    b = noisy.copy()
    b[np.argmin(np.where(y, noisy, np.inf))] += 1.0  # lift the lowest attack above every legit
    assert 0.2 < auc_wins(y, b, noisy, 400, seed=1) < 0.95


def test_auc_wins_needs_both_classes() -> None:
    assert np.isnan(auc_wins(np.zeros(5, bool), np.arange(5.0), np.arange(5.0)))
    with pytest.raises(ValueError):
        auc_wins(np.array([0, 1], bool), [0.1, 0.2], [0.1, 0.2, 0.3])


def test_weighted_auc_equals_scikit_learn_with_ties_and_weights() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    y = rng.random(300) < 0.4
    s = np.round(rng.normal(np.where(y, 1.0, 0.0), 1.0), 1)  # rounded: many ties across classes
    w = rng.integers(0, 4, (20, 300)).astype(float)
    got = weighted_auc(y, s, w)
    want = [roc_auc_score(y, s, sample_weight=row) for row in w]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert weighted_auc(y, s, np.ones(300))[0] == pytest.approx(roc_auc_score(y, s))
    assert weighted_auc([0, 1], [1.0, 1.0], [[1.0, 1.0]])[0] == 0.5  # a tie is half a pair
