"""The t-SNE stage: a picture of the device classes in the test split's feature space."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotwatch.viz import TsneConfig, embed, plot_tsne, stratified_sample

if TYPE_CHECKING:
    from iotwatch.context import StageContext
    from iotwatch.tracking import StageRun

log = logging.getLogger(__name__)


def run(cfg: TsneConfig, ctx: StageContext, sr: StageRun) -> dict[str, Any]:
    """t-SNE stage: embeds the test features, writes figures_dir/tsne.png, records KL and timing."""
    paths, seed = ctx.paths, ctx.seed
    from iotwatch.errors import InputError
    from iotwatch.features import LABEL, model_columns, read_table

    test = read_table(paths.features_test, "test feature table")
    if len(test) < 5:
        raise InputError(f"{paths.features_test}: {len(test)} rows; t-SNE needs at least 5")
    rows = stratified_sample(test[LABEL], cfg.max_points, seed)
    sub = test.iloc[rows]
    x = sub[model_columns(test)].to_numpy(dtype="float64")
    log.info(
        "t-SNE of %d of %d test flows (%d features, max_iter=%d)...",
        len(sub),
        len(test),
        x.shape[1],
        cfg.max_iter,
    )
    t0 = time.perf_counter()
    points, kl, perplexity = embed(x, cfg, seed)
    seconds = time.perf_counter() - t0
    log.info("t-SNE done in %.1f s (KL divergence %.3f)", seconds, kl)
    out = Path(paths.figures_dir) / "tsne.png"
    labels = sub[LABEL].astype(str).tolist()
    plot_tsne(
        points, labels, out, f"t-SNE of test flows ({len(sub)} points, perplexity {perplexity:g})"
    )
    metrics = {
        "kl_divergence": kl if math.isfinite(kl) else None,
        "points": len(sub),
        "test_flows": len(test),
        "classes": len(set(labels)),
        "perplexity": perplexity,
        "seconds": seconds,
    }
    sr.record(metrics)
    sr.log_artifact(out, "figures")
    return metrics
