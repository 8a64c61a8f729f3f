"""Plots: t-SNE of the test features coloured by device type, and confusion matrices.

Matplotlib runs headless (Agg backend) and is imported only inside the functions.
t-SNE input: log1p of every feature (packet sizes span 40..1500 bytes and inter-arrival times
span microseconds..minutes, so raw values let a few large ones dominate distances), then
standardised per column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


log = logging.getLogger(__name__)


@dataclass
class TsneConfig:
    """conf/tsne/*.yaml: sklearn TSNE settings and the subsample size (no defaults: conf/ has them)."""

    perplexity: float
    # Stratified subsample of the test set (t-SNE is O(n log n) but slow past a few thousand).
    max_points: int
    learning_rate: float | str
    max_iter: int
    log1p: bool

    def __post_init__(self) -> None:
        if self.perplexity <= 0:
            raise ValueError(f"perplexity must be > 0, got {self.perplexity}")
        if self.max_points < 10:
            raise ValueError(f"max_points must be >= 10, got {self.max_points}")
        if self.max_iter < 250:
            raise ValueError(f"max_iter must be >= 250 (sklearn's minimum), got {self.max_iter}")
        if isinstance(self.learning_rate, str) and self.learning_rate != "auto":
            raise ValueError(
                f"learning_rate must be a number or 'auto', got {self.learning_rate!r}"
            )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def stratified_sample(labels: pd.Series, max_points: int, seed: int) -> np.ndarray:
    """Row positions of a class-proportional subsample of at most ``max_points`` (>= 1 per class)."""
    import numpy as np

    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    values = labels.astype(str).to_numpy()
    picks = []
    for cls in sorted(set(values)):
        pos = np.flatnonzero(values == cls)
        k = max(1, int(round(max_points * len(pos) / n)))
        picks.append(rng.choice(pos, size=min(k, len(pos)), replace=False))
    return np.sort(np.concatenate(picks))


def embed(x: np.ndarray, cfg: TsneConfig, seed: int) -> tuple[np.ndarray, float, float]:
    """2-D t-SNE of ``x`` (log1p + standardised); returns (points, KL divergence or NaN, perplexity)."""
    import numpy as np
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype="float64")
    if cfg.log1p:
        x = np.log1p(np.clip(x, 0.0, None))
    x = StandardScaler().fit_transform(x)
    # sklearn requires perplexity < n_samples; tiny test sets get a smaller one.
    perplexity = float(min(cfg.perplexity, max(1.0, (len(x) - 1) / 3)))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        learning_rate=cfg.learning_rate,
        max_iter=cfg.max_iter,
        init="pca",
        random_state=seed,
    )
    points = tsne.fit_transform(x)
    kl = float(tsne.kl_divergence_)
    # sklearn leaves KL at float max when the optimisation never left the exaggeration phase.
    return points, (kl if kl < 1e300 else float("nan")), perplexity


def plot_tsne(points: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    """Scatter plot of 2-D points coloured by label, saved as PNG."""
    import numpy as np

    plt = _pyplot()
    classes = sorted(set(labels))
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(8, 6.5))
    lab = np.asarray(labels)
    for i, cls in enumerate(classes):
        sel = lab == cls
        ax.scatter(
            points[sel, 0],
            points[sel, 1],
            s=6,
            alpha=0.7,
            color=cmap(i % cmap.N),
            label=f"{cls} ({sel.sum()})",
        )
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="best", frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    """Confusion-matrix heat map (rows actual, columns predicted) with counts, saved as PNG."""
    import numpy as np

    plt = _pyplot()
    n = len(labels)
    size = max(4.5, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    cm = np.asarray(cm)
    row = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row, out=np.zeros(cm.shape, dtype=float), where=row > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
