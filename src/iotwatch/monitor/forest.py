"""A fitted tree classifier as plain arrays, evaluated with numpy (no scikit-learn at run time).

Importing scikit-learn costs 1-2 s on the target machine, more than metering a 2 M packet
capture. When the best classifier is a random forest or a decision tree (behind the optional
log1p and StandardScaler steps of ``classify.make_pipeline``), ``compile_pipeline`` flattens
its trees into one node table; ``Forest.predict_proba`` walks every tree for every flow at once
and gives scikit-learn's probabilities (the export checks they are equal on the validation
flows before writing the arrays; other models are loaded from the skops file instead).

Exactness: scikit-learn compares ``float32(x) <= threshold`` (float64 threshold) and averages
per-tree leaf frequencies; the same is done here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FOREST_FORMAT = "iotwatch-forest/1"


def _compiled_kernel() -> Any:
    """``_forest_kernel.forest_proba`` from the ahead-of-time module, or None (not built)."""
    from iotwatch.flowmeter import _jit

    if _jit.AOT is None or not hasattr(_jit.AOT, "forest_proba"):
        return None
    from iotwatch.monitor._forest_kernel import forest_proba

    return forest_proba


@dataclass
class Forest:
    """Trees of one classifier, nodes of all trees in one table (children are global indices)."""

    roots: np.ndarray  # int64 (trees,)
    left: np.ndarray  # int64 (nodes,), -1 at leaves
    right: np.ndarray  # int64 (nodes,)
    feature: np.ndarray  # int64 (nodes,)
    threshold: np.ndarray  # float64 (nodes,)
    proba: np.ndarray  # float64 (nodes, classes): leaf class frequencies
    depth: int  # the deepest tree's depth
    classes: list[str]
    log1p: bool = False
    mean: np.ndarray | None = None  # StandardScaler (after log1p), when the pipeline had one
    scale: np.ndarray | None = None

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.log1p:
            x = np.log1p(x)
        if self.mean is not None and self.scale is not None:
            x = (x - self.mean) / self.scale
        return x.astype(np.float32).astype(np.float64)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (rows: flows, columns: ``classes``): the compiled kernel when
        the ahead-of-time module is built (``_forest_kernel``), else numpy (same values)."""
        kernel = _compiled_kernel()
        if kernel is None:
            return self.predict_proba_numpy(x)
        x = np.ascontiguousarray(self._prepare(x))
        out = np.empty((len(x), len(self.classes)), np.float64)
        kernel(x, self.roots, self.left, self.right, self.feature, self.threshold, self.proba,
               out)  # fmt: skip
        return out

    def predict_proba_numpy(self, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """``predict_proba`` in numpy: all (flow, tree) pairs descend one level per step; pairs
        that reached a leaf drop out of the active set; per-tree frequencies summed in tree
        order (as scikit-learn does), then divided by the number of trees."""
        x = self._prepare(x)
        n_trees = len(self.roots)
        out = np.empty((len(x), len(self.classes)), np.float64)
        for lo in range(0, len(x), chunk):
            xs = x[lo : lo + chunk]
            k = len(xs)
            flat = xs.ravel()
            node = np.tile(self.roots, k)  # pair p = flow p // n_trees, tree p % n_trees
            base = np.repeat(np.arange(k, dtype=np.int64) * xs.shape[1], n_trees)
            active = np.arange(k * n_trees)
            nd = node
            for _ in range(self.depth):
                left = self.left[nd]
                inner = left >= 0
                if not inner.all():
                    active, nd, left = active[inner], nd[inner], left[inner]
                if not len(active):
                    break
                go_left = flat[base[active] + self.feature[nd]] <= self.threshold[nd]
                nd = np.where(go_left, left, self.right[nd])
                node[active] = nd
            leaves = self.proba[node].reshape(k, n_trees, -1)
            total = leaves[:, 0].copy()
            for t in range(1, n_trees):
                total += leaves[:, t]
            out[lo : lo + k] = total / n_trees
        return out

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        arrays = {"roots": self.roots, "left": self.left, "right": self.right,
                  "feature": self.feature, "threshold": self.threshold, "proba": self.proba}  # fmt: skip
        if self.mean is not None and self.scale is not None:
            arrays.update(mean=self.mean, scale=self.scale)
        meta = {"format": FOREST_FORMAT, "depth": str(self.depth), "log1p": str(self.log1p),
                "classes": "\n".join(self.classes)}  # fmt: skip
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> Forest:
        if meta.get("format") != FOREST_FORMAT:
            raise ValueError(f"not format {FOREST_FORMAT}")
        f = cls(
            roots=arrays["roots"].astype(np.int64), left=arrays["left"].astype(np.int64),
            right=arrays["right"].astype(np.int64), feature=arrays["feature"].astype(np.int64),
            threshold=arrays["threshold"].astype(np.float64),
            proba=arrays["proba"].astype(np.float64), depth=int(meta["depth"]),
            classes=meta["classes"].split("\n"), log1p=meta.get("log1p") == "True",
            mean=arrays.get("mean"), scale=arrays.get("scale"),
        )  # fmt: skip
        n = len(f.left)
        if not (len(f.right) == len(f.feature) == len(f.threshold) == len(f.proba) == n):
            raise ValueError("node arrays differ in length")
        if f.proba.shape[1] != len(f.classes):
            raise ValueError("leaf probabilities do not match the classes")
        kids = np.concatenate([f.left[f.left >= 0], f.right[f.left >= 0], f.roots])
        if len(kids) and (kids.min() < 0 or kids.max() >= n):
            raise ValueError("a child index is outside the node table")
        return f


def compile_pipeline(pipe: Any) -> Forest | None:
    """The pipeline's trees as a ``Forest``, or None when it is not one this module evaluates
    (another estimator, or preprocessing other than log1p / StandardScaler)."""
    steps = getattr(pipe, "steps", None)
    if not steps:
        return None
    log1p, mean, scale = False, None, None
    for name, step in steps[:-1]:
        cls = type(step).__name__
        if name == "log1p" and cls == "FunctionTransformer" and step.func is np.log1p:
            if mean is not None:
                return None
            log1p = True
        elif cls == "StandardScaler":
            mean = np.asarray(step.mean_ if step.with_mean else np.zeros(step.n_features_in_))
            scale = np.asarray(step.scale_ if step.with_std else np.ones(step.n_features_in_))
        else:
            return None
    est = steps[-1][1]
    kind = type(est).__name__
    if kind == "RandomForestClassifier":
        trees = [t.tree_ for t in est.estimators_]
    elif kind == "DecisionTreeClassifier":
        trees = [est.tree_]
    else:
        return None
    if getattr(est, "n_outputs_", 1) != 1:
        return None
    roots, lefts, rights, feats, thrs, probas = [], [], [], [], [], []
    base = 0
    for t in trees:
        left = t.children_left.astype(np.int64)
        right = t.children_right.astype(np.int64)
        inner = left >= 0
        roots.append(base)
        lefts.append(np.where(inner, left + base, -1))
        rights.append(np.where(inner, right + base, -1))
        feats.append(np.where(inner, t.feature, 0).astype(np.int64))
        thrs.append(t.threshold.astype(np.float64))
        v = t.value[:, 0, :].astype(np.float64)
        total = v.sum(axis=1, keepdims=True)
        probas.append(np.divide(v, total, out=np.zeros_like(v), where=total > 0))
        base += t.node_count
    return Forest(
        roots=np.asarray(roots, np.int64), left=np.concatenate(lefts),
        right=np.concatenate(rights), feature=np.concatenate(feats),
        threshold=np.concatenate(thrs), proba=np.concatenate(probas),
        depth=max(int(t.max_depth) for t in trees), classes=[str(c) for c in est.classes_],
        log1p=log1p,
        mean=None if mean is None else mean.astype(np.float64),
        scale=None if scale is None else scale.astype(np.float64),
    )  # fmt: skip
