"""Baseline anomaly detectors on the same scaled features as the autoencoder.

Each has ``fit(train_x)`` (legitimate training flows only) and ``score(x)`` (higher = more
anomalous); the stage thresholds their scores with the same rules as the autoencoder's.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class IsolationForestBaseline:
    """sklearn IsolationForest; score = -score_samples (the negated normality)."""

    def __init__(self, seed: int = 0, **params: Any) -> None:
        from sklearn.ensemble import IsolationForest

        self.model = IsolationForest(random_state=seed, **params)

    def fit(self, x: np.ndarray) -> IsolationForestBaseline:
        self.model.fit(x)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return -self.model.score_samples(x).astype("float64")


class OneClassSVMBaseline:
    """sklearn OneClassSVM; score = -decision_function. Fitting is O(n^2): at most
    ``max_train`` training flows (a seeded random subsample) are used."""

    def __init__(self, seed: int = 0, max_train: int = 5000, **params: Any) -> None:
        from sklearn.svm import OneClassSVM

        self.model = OneClassSVM(**params)
        self.max_train = max_train
        self.seed = seed

    def fit(self, x: np.ndarray) -> OneClassSVMBaseline:
        x = np.asarray(x)
        if len(x) > self.max_train:
            rng = np.random.default_rng(self.seed)
            x = x[np.sort(rng.choice(len(x), self.max_train, replace=False))]
        self.model.fit(x)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return -self.model.decision_function(x).astype("float64")


class PCABaseline:
    """PCA fitted on training flows; score = mean squared error of the projection back."""

    def __init__(self, seed: int = 0, n_components: float | int = 0.95) -> None:
        self.n_components = n_components
        self.seed = seed
        self.model: Any = None

    def fit(self, x: np.ndarray) -> PCABaseline:
        from sklearn.decomposition import PCA

        x = np.asarray(x, dtype="float64")
        n = self.n_components
        if isinstance(n, int) or (isinstance(n, float) and n >= 1):
            n = int(min(n, x.shape[1], len(x)))
        self.model = PCA(n_components=n, svd_solver="full", random_state=self.seed).fit(x)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype="float64")
        back = self.model.inverse_transform(self.model.transform(x))
        return np.mean((x - back) ** 2, axis=1)


class KNNBaseline:
    """Mean Euclidean distance to the ``n_neighbors`` nearest training flows."""

    def __init__(self, seed: int = 0, n_neighbors: int = 5) -> None:
        self.n_neighbors = n_neighbors
        self.model: Any = None

    def fit(self, x: np.ndarray) -> KNNBaseline:
        from sklearn.neighbors import NearestNeighbors

        x = np.asarray(x, dtype="float64")
        self.model = NearestNeighbors(n_neighbors=min(self.n_neighbors, len(x))).fit(x)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        dist, _ = self.model.kneighbors(np.asarray(x, dtype="float64"))
        return dist.mean(axis=1).astype("float64")


BASELINES: dict[str, type] = {
    "isolation_forest": IsolationForestBaseline,
    "one_class_svm": OneClassSVMBaseline,
    "pca": PCABaseline,
    "knn": KNNBaseline,
}


def make_baseline(name: str, params: dict[str, Any], seed: int) -> Any:
    """Baseline ``name`` built with ``params`` (a bad parameter is a ConfigError naming it)."""
    from iotwatch.errors import ConfigError

    if name not in BASELINES:
        raise ConfigError(f"anomaly.baselines: unknown baseline '{name}'; known: {list(BASELINES)}")
    try:
        return BASELINES[name](seed=seed, **params)
    except TypeError as exc:
        raise ConfigError(f"anomaly.baselines.{name}.params: {exc}") from None
