"""The Markdown report: dataset summary, the classifier table laid out like the method's, plots.

It only reads what the other stages recorded (reports/metrics/*.json, the classify stage's
detail file beside its plots, and figures), so it never disagrees with `dvc metrics show` or
MLflow.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotwatch.paths import PathsConfig
from iotwatch.tracking import flat_items

if TYPE_CHECKING:
    from iotwatch.context import StageContext
    from iotwatch.tracking import StageRun

log = logging.getLogger(__name__)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("skipping %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _rel(target: Path, report: Path) -> str:
    return Path(os.path.relpath(target, report.parent)).as_posix()


def dataset_section(features: dict[str, Any]) -> list[str]:
    """Markdown lines: flows per class in train/validation/test, held-out devices, dropped
    classes, malicious flows."""
    lines = ["## Dataset", ""]
    parts = {
        name: features.get(name, {}).get("per_class", {})
        for name in ("train", "validation", "test")
    }
    lines.append(
        f"{features.get('flows_total', '?')} flows, {features.get('flows_known', '?')} of known "
        f"devices; {features.get('classes', len(parts['train']))} device types, "
        f"{features.get('n_features', '?')} features per flow."
    )
    lines += [
        "",
        "| device type | train flows | validation flows | test flows |",
        "|---|---:|---:|---:|",
    ]
    for cls in sorted(set().union(*parts.values())):
        cells = " | ".join(str(parts[n].get(cls, 0)) for n in parts)
        lines.append(f"| {cls} | {cells} |")
    totals = " | ".join(str(sum(parts[n].values())) for n in parts)
    lines.append(f"| **total** | {totals} |")
    held = (features.get("devices") or {}).get("per_device") or {}
    if held:
        lines += [
            "",
            "Held out whole (device split): "
            + ", ".join(f"{k} ({v} flows)" for k, v in held.items()),
        ]
    dropped = features.get("dropped_classes") or {}
    if dropped:
        lines += [
            "",
            "Dropped (too few flows): " + ", ".join(f"{k} ({v})" for k, v in dropped.items()),
        ]
    mal = features.get("malicious") or {}
    if mal.get("flows"):
        lines += [
            "",
            f"Malicious captures: {mal['flows']} flows, {mal.get('matched', 0)} matched the ground "
            f"truth, {mal.get('unmatched', 0)} unmatched.",
        ]
        per = mal.get("per_attack") or {}
        if per:
            lines += ["", "| attack type | flows |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in per.items()]
    return lines + [""]


def classifier_section(classify: dict[str, Any], paths: PathsConfig) -> list[str]:
    """Markdown lines: the model table (validation and test), the held-out devices, the best
    model's per-class report on test and the confusion matrices. Every figure names its split."""
    from iotwatch.classify import BEST_KEY, metrics_table, model_label

    models = metrics_table(classify)
    lines = [
        "## Device-type recognition",
        "",
        "Every model is fitted on the train split; the best one is chosen by **validation** "
        "accuracy, and **test** figures are only reported. *Held-out devices* are whole device "
        "units never seen in training (the device split).",
        "",
        "| model | validation accuracy | test accuracy | test micro F1 | test macro F1 | "
        "held-out devices accuracy | fit time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in models:
        val, test, dev = m.get("validation", {}), m.get("test", {}), m.get("devices", {})
        lines.append(
            f"| {model_label(name)} | {_fmt(val.get('accuracy'))} | "
            f"{_fmt(test.get('accuracy'))} | {_fmt(test.get('f1_micro'))} | "
            f"{_fmt(test.get('f1_macro'))} | {_fmt(dev.get('accuracy')) if dev else 'n/a'} | "
            f"{_fmt(m.get('fit_seconds'), 2)} |"
        )
    best = (classify.get(BEST_KEY) or {}).get("name")
    if best and best in classify:
        lines += [
            "",
            f"Best model on validation: **{model_label(best)}** (`{best}`), saved to "
            f"`{paths.classifier}`.",
            "",
        ]
        per = classify[best].get("test", {}).get("per_class") or {}
        if per:
            lines += [
                "Per device type, test split:",
                "",
                "| device type | precision | recall | F1 | support |",
                "|---|---:|---:|---:|---:|",
            ]
            for cls, r in per.items():
                lines.append(
                    f"| {cls} | {_fmt(r.get('precision'))} | {_fmt(r.get('recall'))} | "
                    f"{_fmt(r.get('f1'))} | {r.get('support', '')} |"
                )
        devices = classify[best].get("devices", {}).get("per_device") or {}
        if devices:
            lines += [
                "",
                "Held-out device units (device split):",
                "",
                "| device | device type | flows | accuracy |",
                "|---|---|---:|---:|",
            ]
            for dev, r in devices.items():
                lines.append(
                    f"| {dev} | {r.get('device_type', '')} | {r.get('flows', '')} | "
                    f"{_fmt(r.get('accuracy'))} |"
                )
    report = Path(paths.report)
    pics = [(n, Path(paths.plots_dir) / f"confusion_{n}.png") for n, _ in models]
    pics = [(n, p) for n, p in pics if p.is_file()]
    if pics:
        lines += ["", "### Confusion matrices", ""]
        lines += [f"![{n}]({_rel(p, report)})" for n, p in pics]
    return lines + [""]


def anomaly_section(anomaly: dict[str, Any], paths: PathsConfig) -> list[str]:
    """Markdown lines: per device type, the autoencoder's test figures under both threshold
    rules, the baselines' under the same rule, and the pictures."""
    devices = {k: v for k, v in anomaly.items() if k != "skipped" and isinstance(v, dict)}
    lines = [
        "## Anomaly detection (one sparse autoencoder per device type)",
        "",
        "Trained on each device type's legitimate train flows; thresholds chosen on "
        "**validation** (legitimate + malicious); every figure below is on **test**. "
        "*best-F1*: the smallest threshold with the best validation F1; *FPR rule*: the "
        "target-FPR quantile of legitimate validation errors. *features*: the autoencoder's "
        "feature order (*both*: one autoencoder per order, errors combined; `anomaly.order`).",
        "",
        "| device type | features | F1 | recall | FPR | AUC | TPR at 1 % FPR | recall (FPR rule) | "
        "FPR (FPR rule) | train (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dev, m in devices.items():
        fr = m.get("fpr_rule") or {}
        lines.append(
            f"| {dev} | {m.get('order', 'n/a')} | {_fmt(m.get('f1'))} | {_fmt(m.get('recall'))} | "
            f"{_fmt(m.get('fpr'))} | "
            f"{_fmt(m.get('auc'))} | {_fmt(m.get('tpr_at_1pct_fpr'))} | "
            f"{_fmt(fr.get('recall'))} | {_fmt(fr.get('fpr'))} | "
            f"{_fmt(m.get('train_seconds'), 1)} |"
        )
    lines += [
        "",
        "The detector the monitor runs beside the method (`anomaly=paper` is the method alone), "
        "same test split: a service profile per type (a flow outside it is an alert of its own) "
        "and the threshold rule of `anomaly.threshold_rule` (*budget*: legitimate validation "
        "flows held to `anomaly.alert_budget` false alerts per device-day).",
        "",
        "| device type | method recall / FPR | detector recall / FPR | rule | services | "
        "outside profile (test legit / attack) | flows per device-day |",
        "|---|---:|---:|---|---|---:|---:|",
    ]
    for dev, m in devices.items():
        det = m.get("detector") or {}
        out = det.get("outside_profile") or {}
        lines.append(
            f"| {dev} | {_fmt(m.get('recall'))} / {_fmt(m.get('fpr'))} | "
            f"{_fmt(det.get('recall'))} / {_fmt(det.get('fpr'))} | {det.get('rule', 'n/a')} | "
            f"{'on' if det.get('services') else 'off'} | "
            f"{out.get('test_legit', 'n/a')} / {out.get('test_attack', 'n/a')} | "
            f"{_fmt(det.get('flows_per_device_day'), 1)} |"
        )
    names = sorted({b for m in devices.values() for b in (m.get("baselines") or {})})
    if names:
        lines += [
            "",
            "Baselines, same splits and best-F1 rule (test F1 / AUC):",
            "",
            "| device type | autoencoder | " + " | ".join(names) + " |",
            "|---|---:|" + "---:|" * len(names),
        ]
        for dev, m in devices.items():
            base = m.get("baselines") or {}
            cells = [
                f"{_fmt(base.get(n, {}).get('f1'))} / {_fmt(base.get(n, {}).get('auc'))}"
                for n in names
            ]
            ae = f"{_fmt(m.get('f1'))} / {_fmt(m.get('auc'))}"
            lines.append(f"| {dev} | {ae} | " + " | ".join(cells) + " |")
    skipped = anomaly.get("skipped") or {}
    if skipped:
        lines += [
            "",
            "Skipped: " + ", ".join(f"{k} ({v.get('reason', '')})" for k, v in skipped.items()),
        ]
    report = Path(paths.report)
    summary_png = Path(paths.anomaly_plots) / "summary.png"
    if summary_png.is_file():
        lines += ["", f"![recall and FPR per type and detector]({_rel(summary_png, report)})"]
    for dev in devices:
        pics = [Path(paths.anomaly_plots) / dev / f"{n}.png" for n in ("roc", "pr", "errors")]
        pics = [q for q in pics if q.is_file()]
        if pics:
            lines += ["", f"### {dev}", ""]
            lines += [f"![{q.stem}]({_rel(q, report)})" for q in pics]
    return lines + [""]


def watch_section(w: dict[str, Any], paths: PathsConfig) -> list[str]:
    """Markdown lines: the deployment evaluation (the watch stage)."""
    if not w.get("enabled"):
        return []
    lines = [
        "## Watch period (the exported monitor after training)",
        "",
        f"{w.get('watch_days', 0):.2f} days after `dataset.train_days`; {w.get('flows')} flows, "
        f"{w.get('alerts')} alerts, {w.get('incidents')} incidents. False alerts are alerts on "
        "flows the ground truth does not name; budget "
        f"{_fmt(w.get('alert_budget'), 2)} per device-day.",
        "",
        "| device | type | placed as | flows | false alerts | per day | false incidents | "
        "per week |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, d in (w.get("devices") or {}).items():
        per_day = _fmt(d["false_alerts_per_day"], 2) if d.get("modelled") else d.get("note")
        lines.append(
            f"| {name} | {d['device_type']} | {d.get('placed_as')} | {d['flows']} | "
            f"{d['false_alerts']} | {per_day} | {d['false_incidents']} | "
            f"{_fmt(d['false_incidents_per_week'], 2)} |"
        )
    infections = w.get("infections") or {}
    if infections:
        lines += ["", "| infected device | attack | attack flows | recall | first alert after (s) |",
                  "|---|---|---:|---:|---:|"]  # fmt: skip
        for name, v in infections.items():
            lines.append(f"| {name} | {v['attack']} | {v['flows']} | {_fmt(v['recall'])} | "
                         f"{_fmt(v['seconds_to_first_alert'], 1)} |")  # fmt: skip
    png = Path(paths.watch_plots) / "watch.png"
    if png.is_file():
        lines += ["", f"![false alerts per device-day]({_rel(png, Path(paths.report))})"]
    html = Path(paths.watch_plots) / "monitor.html"
    if html.is_file():
        lines += ["", f"The monitor's own report: [{html.name}]({_rel(html, Path(paths.report))})"]
    return lines + [""]


REPORTED = ("flows", "features", "tsne", "classify", "anomaly", "watch")  # metrics files read


def build_report(paths: PathsConfig, exclude: str = "report") -> tuple[str, dict[str, Any]]:
    """Markdown text of the report and its summary numbers, from metrics files and figures."""
    metrics_dir = Path(paths.metrics_dir)
    found: dict[str, dict[str, Any]] = {}
    # only the files dvc.yaml lists as the report's deps (others, e.g. export.json written after
    # the report, would make it depend on undeclared and possibly stale inputs)
    for path in sorted(metrics_dir.glob("*.json")) if metrics_dir.is_dir() else []:
        if path.stem == exclude or path.stem not in REPORTED:
            continue
        data = _load(path)
        if data is not None:
            found[path.stem] = data
    lines = ["# iotwatch report", ""]
    summary: dict[str, Any] = {"metrics_files": len(found)}
    if "features" in found:
        lines += dataset_section(found["features"])
    tsne = Path(paths.figures_dir) / "tsne.png"
    if tsne.is_file():
        t = found.get("tsne", {})
        lines += [
            "## t-SNE of the test flows (test split)",
            "",
            f"log1p + standardised features; {t.get('points', '?')} points, "
            f"KL divergence {_fmt(t.get('kl_divergence'), 3)}, "
            f"perplexity {_fmt(t.get('perplexity'), 1)}.",
            "",
            f"![t-SNE]({_rel(tsne, Path(paths.report))})",
            "",
        ]
    if "classify" in found:
        from iotwatch.classify import BEST_KEY, DETAIL_FILE, metrics_table

        # classify.json keeps the compared figures; the per-class detail is beside the plots.
        detail = Path(paths.plots_dir) / DETAIL_FILE
        if detail.is_file():
            found["classify"] = _load(detail) or found["classify"]
        lines += classifier_section(found["classify"], paths)
        summary["models"] = len(metrics_table(found["classify"]))
        best = found["classify"].get(BEST_KEY) or {}
        for key in ("validation_accuracy", "test_accuracy"):
            if key in best:
                summary[f"best_{key}"] = best[key]
    if "anomaly" in found:
        lines += anomaly_section(found["anomaly"], paths)
    if "watch" in found:
        lines += watch_section(found["watch"], paths)
    others = [k for k in found if k not in ("features", "tsne", "classify", "anomaly", "watch")]
    for stage in others:
        lines += [f"## {stage}", "", "| metric | value |", "|---|---:|"]
        rows = [(k, v) for k, v in flat_items(found[stage], ".") if not isinstance(v, list)]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in rows[:60]]
        if len(rows) > 60:
            lines.append(f"| … | {len(rows) - 60} more in `{metrics_dir / (stage + '.json')}` |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n", summary


def run(cfg: None, ctx: StageContext, sr: StageRun) -> dict[str, Any]:
    """Report stage: writes paths.report (Markdown) and logs it as an MLflow artifact."""
    paths = ctx.paths
    text, summary = build_report(paths, exclude=sr.stage)
    out = Path(paths.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    log.info("wrote %s (%d lines)", out, text.count("\n"))
    sr.record(summary)
    sr.log_artifact(out)
    return summary
