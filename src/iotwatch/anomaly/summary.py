"""The anomaly stage: gathers each device type's detector metrics into one table.

dvc.yaml trains one autoencoder per device type (``autoencoder@TYPE``, each writing
``<anomaly_models>/TYPE/metrics.json``) so that a type retrains alone when only its data or
parameters change; this stage merges them into ``reports/metrics/anomaly.json``
(``{"<type>": {"f1", "recall", "fpr", "auc", ..., "baselines": {...}}, "skipped": {...}}``),
logs the comparison to its MLflow run and draws it (``<anomaly_plots>/summary.png``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotwatch.anomaly.stage import CURVE_AXES, METRICS_FILE, SKIPPED, device_types
from iotwatch.errors import InputError

if TYPE_CHECKING:
    from iotwatch.anomaly.stage import AnomalyConfig
    from iotwatch.context import StageContext
    from iotwatch.tracking import StageRun

log = logging.getLogger(__name__)

HEADLINE_FILE = "anomaly_headline.json"  # DVC metrics: auc, fpr, recall, f1 per type and detector
# The figures a reader compares across detectors (test set, best-F1 threshold).
HEADLINE = ("recall", "fpr", "f1", "auc", "tpr_at_1pct_fpr")


def gather(ctx: StageContext, device: str | None = None) -> dict[str, Any]:
    """Every device type's metrics.json (``skipped`` lists the types without a model): the
    types of dataset.device_types, or ``device`` alone (``anomaly.device``, as in a sweep)."""
    from iotwatch.features import metric_key

    models = Path(ctx.paths.anomaly_models)
    out: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    for name in device_types(ctx, device):
        key = metric_key(name)
        path = models / key / METRICS_FILE
        if not path.is_file():
            raise InputError(f"{path}: not found (run `dvc repro autoencoder@{key}` first)")
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a metrics file ({exc})") from None
        if SKIPPED in m:
            skipped[key] = m[SKIPPED]
        else:
            out[key] = m
    out[SKIPPED] = skipped
    return out


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (device type, detector): the headline test figures."""
    rows = []
    for device, m in metrics.items():
        if device == SKIPPED:
            continue
        detectors = {"autoencoder": m, **m.get("baselines", {})}
        for name, dm in detectors.items():
            rows.append({"device": device, "detector": name, **{k: dm.get(k) for k in HEADLINE}})
    return rows


def plot_summary(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Grouped bars: recall and false positive rate per device type and detector."""
    if not rows:
        return None
    import numpy as np

    from iotwatch.viz import _pyplot

    plt = _pyplot()
    devices = sorted({r["device"] for r in rows})
    detectors = list(dict.fromkeys(r["detector"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(len(detectors), 1)
    for ax, metric, title in zip(
        axes, ("recall", "fpr"), ("recall (test)", "false positive rate (test)"), strict=True
    ):
        for i, det in enumerate(detectors):
            vals = [
                next((r[metric] for r in rows if r["device"] == d and r["detector"] == det), None)
                for d in devices
            ]
            ys = [np.nan if v is None else float(v) for v in vals]
            ax.bar(np.arange(len(devices)) + i * width, ys, width, label=det)
        ax.set_xticks(np.arange(len(devices)) + 0.4 - width / 2)
        ax.set_xticklabels(devices, rotation=15, fontsize=8)
        ax.set_title(title)
    axes[0].set_ylim(0, 1.02)
    axes[1].axhline(0.01, color="black", lw=0.8, ls="--", label="target 0.01")
    axes[1].legend(fontsize=7, frameon=False)
    fig.suptitle("Step 2 detectors per device type (threshold: best validation F1)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_curves(ctx: StageContext, metrics: dict[str, Any]) -> None:
    """Every modelled type's test ROC and PR curves (written by the autoencoder stage beside its
    model) in one CSV each, ``<anomaly_curves>/{roc,pr}.csv`` with a ``device`` column (`dvc
    plots`, one line per type: template .dvc/plots/by_device.json)."""
    models, out = Path(ctx.paths.anomaly_models), Path(ctx.paths.anomaly_curves)
    out.mkdir(parents=True, exist_ok=True)
    for kind, axes in CURVE_AXES.items():
        rows = []
        for key in sorted(k for k in metrics if k != SKIPPED):
            path = models / key / f"{kind}.csv"
            if path.is_file():
                rows += [f"{key},{line}\n" for line in path.read_text().splitlines()[1:]]
        (out / f"{kind}.csv").write_text(f"device,{','.join(axes)}\n" + "".join(rows))


def run(cfg: AnomalyConfig, ctx: StageContext, sr: StageRun) -> dict[str, Any]:
    """Anomaly stage: merge the per-type metrics, log and draw the comparison."""
    metrics = gather(ctx, cfg.device)
    rows = summary_rows(metrics)
    for r in rows:
        if r["detector"] == "autoencoder":
            log.info(
                "anomaly %s: recall %s, FPR %s, F1 %s, AUC %s",
                r["device"], *(_fmt(r[k]) for k in ("recall", "fpr", "f1", "auc")),
            )  # fmt: skip
    if metrics[SKIPPED]:
        log.warning("anomaly: skipped device types: %s", sorted(metrics[SKIPPED]))
    sr.record(metrics)
    # What `dvc metrics show` registers: the figures people compare, per type and detector.
    headline: dict[str, dict[str, Any]] = {}
    for r in rows:
        figures = {k: r[k] for k in ("auc", "fpr", "recall", "f1")}
        headline.setdefault(r["device"], {})[r["detector"]] = figures
    path = Path(ctx.paths.metrics_dir) / HEADLINE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(headline, indent=2, sort_keys=True) + "\n")
    write_curves(ctx, metrics)
    png = plot_summary(rows, Path(ctx.paths.anomaly_plots) / "summary.png")
    if png is not None:
        sr.log_artifact(png)
    return metrics


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4f}"
