"""The compiled forest's numba kernel: every tree for every flow, one flow at a time.

Built into the flow meter's ahead-of-time module (``iotwatch.flowmeter.build_aot``, run by
``make setup``), so the monitor calls compiled code without importing numba. ``forest.Forest``
uses it only when that module is loaded; otherwise (no C compiler, ``IOTWATCH_KERNELS=jit``)
it walks the trees with numpy, level by level (same probabilities: JIT-compiling one kernel
would cost a monitor more than it saves).

Exactness: like scikit-learn, the leaf frequencies of the trees are summed in tree order, then
divided by the number of trees (``RandomForestClassifier.predict_proba``).
"""

from __future__ import annotations

import numpy as np

from iotwatch.flowmeter._jit import njit, use_aot


@njit(nogil=True, cache=False)
def forest_proba(
    x: np.ndarray,  # float64 (flows, features), already rounded to float32 like scikit-learn
    roots: np.ndarray,  # int64 (trees,)
    left: np.ndarray,  # int64 (nodes,), -1 at leaves
    right: np.ndarray,  # int64 (nodes,)
    feature: np.ndarray,  # int64 (nodes,)
    threshold: np.ndarray,  # float64 (nodes,)
    proba: np.ndarray,  # float64 (nodes, classes)
    out: np.ndarray,  # float64 (flows, classes): written
) -> None:
    n_trees = roots.shape[0]
    n_classes = proba.shape[1]
    for i in range(x.shape[0]):
        for c in range(n_classes):
            out[i, c] = 0.0
        for t in range(n_trees):
            nd = roots[t]
            while left[nd] >= 0:
                nd = left[nd] if x[i, feature[nd]] <= threshold[nd] else right[nd]
            for c in range(n_classes):
                out[i, c] += proba[nd, c]
        for c in range(n_classes):
            out[i, c] /= n_trees


EXPORTS = ("forest_proba",)  # the functions the ahead-of-time module provides
use_aot(globals(), EXPORTS)
