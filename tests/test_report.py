"""The report reads only the metrics files the report stage depends on."""

from __future__ import annotations

import json

from tests.ml.conftest import make_paths

from iotwatch.report import build_report


def test_report_reads_only_declared_metrics_files(tmp_path) -> None:
    paths = make_paths(tmp_path)
    paths.metrics_dir.mkdir(parents=True)
    (paths.metrics_dir / "flows.json").write_text(json.dumps({"seconds": 1.5}))
    # written after the report (export) or not a dep of it: never read
    (paths.metrics_dir / "export.json").write_text(json.dumps({"bundle_files": 9}))
    (paths.metrics_dir / "anomaly_headline.json").write_text(json.dumps({"x": {"auc": 1}}))
    text, summary = build_report(paths)
    assert summary["metrics_files"] == 1
    assert "## flows" in text and "seconds" in text
    assert "export" not in text and "anomaly_headline" not in text
