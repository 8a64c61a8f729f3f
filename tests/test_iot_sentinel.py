"""The IoT Sentinel captures (31 real devices) through flows → features → tsne → classify →
report with the documented `dataset=iot_sentinel` config. Skips when ../shared is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from iotwatch.pipeline.params_cli import compose_params
from iotwatch.pipeline.stages import params_from_dict, run_stage

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_iot_sentinel_runs_end_to_end(tmp_path: Path, shared_data) -> None:  # noqa: ANN001
    shared_data("iot-sentinel", "captures")
    data = yaml.safe_load(
        compose_params(["dataset=iot_sentinel", "experiment=tiny"], REPO / "conf")
    )
    for key in ("captures", "inventory"):
        data["dataset"][key] = str(REPO / data["dataset"][key])
    data["paths"] = {k: str(tmp_path / v) for k, v in data["paths"].items()}
    data["tracking"].update(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art")
    )
    params = params_from_dict(data, "test")
    flows = run_stage("flows", params)
    # Every device folder is read; real captures, so some have no TCP at all (README caveats).
    assert flows["benign"]["files"] > 500
    assert flows["benign"]["issues"] == 0
    per_type = flows["benign"]["flows_per_device_type"]
    assert len([t for t in per_type if t != "unknown"]) >= 20
    assert "TP-LinkPlugHS110" in per_type
    run_stage("features", params)
    run_stage("tsne", params)
    run_stage("classify", params)
    run_stage("report", params)
    metrics = json.loads((tmp_path / "reports/metrics/classify.json").read_text())
    assert 0.3 < metrics["random_forest"]["test"]["accuracy"] <= 1.0
    assert metrics["best_model"]["selected_on"] == "validation"
    assert (tmp_path / "reports/report.md").is_file()
