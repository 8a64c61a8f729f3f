"""Baselines on toy sets whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from iotwatch.anomaly.baselines import BASELINES, KNNBaseline, PCABaseline, make_baseline
from iotwatch.errors import ConfigError

PARAMS = {
    "isolation_forest": {"n_estimators": 50},
    "one_class_svm": {"nu": 0.05, "gamma": "scale", "max_train": 200},
    "pca": {"n_components": 2},
    "knn": {"n_neighbors": 3},
}


@pytest.mark.parametrize("name", list(BASELINES))
def test_far_cluster_scores_higher(name) -> None:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(2, 6))
    train = rng.normal(size=(300, 2)) @ basis + 0.05 * rng.normal(size=(300, 6))
    legit = rng.normal(size=(50, 2)) @ basis + 0.05 * rng.normal(size=(50, 6))
    attack = rng.normal(loc=6.0, size=(50, 6))
    model = make_baseline(name, PARAMS[name], seed=0).fit(train)
    s = model.score(np.concatenate([legit, attack]))
    assert s.shape == (100,) and s.dtype == np.float64
    assert roc_auc_score(np.r_[np.zeros(50), np.ones(50)], s) == 1.0
    again = make_baseline(name, PARAMS[name], seed=0).fit(train)
    assert np.array_equal(s, again.score(np.concatenate([legit, attack])))  # seeded


def test_knn_exact_distances() -> None:
    m = KNNBaseline(n_neighbors=2).fit(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    # (0,0): neighbours at 0 and 1 -> 0.5; (3,0): (1,0) at 2 and (0,0) at 3 -> 2.5
    assert m.score(np.array([[0.0, 0.0], [3.0, 0.0]])) == pytest.approx([0.5, 2.5])


def test_pca_reconstruction_error_exact() -> None:
    train = np.array([[x, 0.0] for x in (-2.0, -1.0, 0.0, 1.0, 2.0)])
    m = PCABaseline(n_components=1).fit(train)
    # the line is y = 0: (0, 3) loses 3^2 over 2 features; (5, 0) is on the line
    assert m.score(np.array([[0.0, 3.0], [5.0, 0.0]])) == pytest.approx([4.5, 0.0], abs=1e-12)


def test_one_class_svm_subsamples() -> None:
    m = make_baseline("one_class_svm", {"max_train": 20}, seed=1)
    m.fit(np.random.default_rng(0).normal(size=(100, 3)))
    assert m.model.support_vectors_.shape[0] <= 20


def test_bad_baseline_config() -> None:
    with pytest.raises(ConfigError, match="unknown baseline"):
        make_baseline("lof", {}, 0)
    with pytest.raises(ConfigError, match=r"anomaly\.baselines\.knn\.params"):
        make_baseline("knn", {"k": 3}, 0)
