"""The anomaly stage end to end on hand-made feature tables, with MLflow on a tmp sqlite."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tests.ml.conftest import composed, make_paths

from iotwatch.anomaly.stage import SKIPPED, AnomalyConfig, load_device, run
from iotwatch.config import from_dict, to_dict
from iotwatch.context import StageContext
from iotwatch.errors import ConfigError
from iotwatch.tracking import TrackingConfig, stage_run

from .conftest import write_tables

REPO = Path(__file__).resolve().parents[2]
KEYS = {"f1", "accuracy", "precision", "recall", "fpr", "auc", "threshold", "tpr_at_1pct_fpr",
        "recall_per_attack", "fpr_rule", "baselines", "train_seconds"}  # fmt: skip


def tiny(**over: object) -> AnomalyConfig:
    data = yaml.safe_load((REPO / "conf/anomaly/tiny.yaml").read_text())
    data.update({"hidden": 8, "max_epochs": 6})
    data.update(over)
    return from_dict(AnomalyConfig, data, "anomaly")


def _drop_times(m: object) -> object:
    if isinstance(m, dict):
        return {k: _drop_times(v) for k, v in m.items() if not k.endswith("seconds")}
    return m


def _run(tmp: Path, cfg: AnomalyConfig) -> dict:
    paths = make_paths(tmp)
    tracking = TrackingConfig(
        tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifact_root=str(tmp / "artifacts")
    )
    # no device_types: every per-device table the features stage wrote
    dataset = replace(composed("experiment=tiny").dataset, device_types=[])
    ctx = StageContext(paths=paths, dataset=dataset, seed=7)
    with stage_run("anomaly", tracking, paths.metrics_dir, concern="behaviour") as sr:
        metrics = run(cfg, ctx, sr)
    return metrics


@pytest.mark.slow
def test_order_best_keeps_sorted_only_on_validation_evidence(tmp_path) -> None:
    write_tables(make_paths(tmp_path))
    m = _run(tmp_path, tiny(order="best", baselines={}, plots=False))
    paths = make_paths(tmp_path)
    for dev in ("camera", "plug"):
        choice = m[dev]["order_choice"]
        assert 0.0 <= choice["sorted_wins"] <= 1.0 and choice["confidence"] == 0.95
        assert m[dev]["order"] == (
            "sorted" if choice["sorted_wins"] >= choice["confidence"] else "positional"
        )
        saved = json.loads((paths.anomaly_models / dev / "scaler.json").read_text())
        assert saved["order"] == m[dev]["order"] and "members" not in m[dev]
        assert not (paths.anomaly_models / dev / "sorted.scaler.json").exists()
    assert m["bulb"]["order_choice"]["sorted"]["val_auc"] is None  # no attacks: by validation loss


@pytest.mark.slow
def test_stage_end_to_end(tmp_path, capsys) -> None:
    import mlflow

    write_tables(make_paths(tmp_path))
    cfg = tiny()
    m = _run(tmp_path, cfg)
    paths = make_paths(tmp_path)
    assert sorted(m) == ["bulb", "camera", "plug", SKIPPED]
    assert "rare" in m[SKIPPED] and "min_train_flows" in m[SKIPPED]["rare"]["reason"]
    on_disk = json.loads((paths.metrics_dir / "anomaly.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    for dev in ("camera", "plug", "bulb"):
        assert set(m[dev]) >= KEYS, dev
        assert set(m[dev]["baselines"]) == {"isolation_forest", "one_class_svm", "pca", "knn"}
        for b in m[dev]["baselines"].values():
            assert {"f1", "auc", "fpr_rule"} <= set(b)
        folder = paths.anomaly_models / dev
        state = torch.load(folder / "state_dict.pt", weights_only=True)
        assert state["encoder.weight"].shape == (8, 38)
        thr = json.loads((folder / "threshold.json").read_text())
        assert thr["threshold"] == m[dev]["threshold"] and thr["attack_if"] == "score > threshold"
        det = load_device(folder)
        assert det.threshold == m[dev]["threshold"]
        assert (paths.anomaly_plots / dev / "errors.png").is_file()
    # the attacks are far from every device's traffic: the camera's detector finds them
    cam = m["camera"]
    assert cam["auc"] > 0.95 and cam["f1"] > 0.9
    assert set(cam["recall_per_attack"]) == {"flood", "scan"}
    assert (paths.anomaly_plots / "camera" / "roc.png").is_file()
    assert m["bulb"]["threshold_rule"].startswith("fpr")  # no attacks aimed at the bulb
    assert m["bulb"]["auc"] is None
    assert "anomaly camera: trained in" in capsys.readouterr().out
    # anomaly.order both (tiny's and the default): one member per feature order, scores combined
    for dev in ("camera", "plug", "bulb"):
        assert m[dev]["order"] == "both" and set(m[dev]["members"]) == {"positional", "sorted"}
        meta = json.loads((paths.anomaly_models / dev / "model.json").read_text())
        assert [(x["order"], x["prefix"]) for x in meta["members"]] == [
            ("positional", ""), ("sorted", "sorted.")]  # fmt: skip
        for x in meta["members"]:
            assert x["ref"] == m[dev]["members"][x["order"]]["ref"] > 0
            saved = json.loads(
                (paths.anomaly_models / dev / f"{x['prefix']}scaler.json").read_text()
            )
            assert saved["order"] == x["order"]
    # MLflow: one child run per device with per-epoch losses from Lightning's MLFlowLogger
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("iotwatch/behaviour").experiment_id])
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"anomaly/bulb", "anomaly/camera", "anomaly/plug"}
    cam_run = children["anomaly/camera"]
    history = client.get_metric_history(cam_run.info.run_id, "val_loss")
    assert len(history) == cam["epochs"]
    # both members' curves under their order's name; the plain names are the first one's
    for order in ("positional", "sorted"):
        assert client.get_metric_history(cam_run.info.run_id, f"{order}-val_loss")
    first = client.get_metric_history(cam_run.info.run_id, "positional-val_loss")
    assert [(h.step, h.value) for h in history] == [(h.step, h.value) for h in first]
    assert min(h.value for h in history) == pytest.approx(cam["best_val_loss"])
    assert cam_run.data.params["hidden"] == "8"
    logged = cam_run.data.metrics
    assert (
        logged["test/f1"] == cam["f1"]
        and logged["test/fpr_rule/recall"] == cam["fpr_rule"]["recall"]
    )
    assert logged["val/f1"] == cam["validation"]["f1"] and "val/auc" in logged
    assert logged["baselines/knn/test/auc"] == cam["baselines"]["knn"]["auc"]
    assert "f1" not in logged  # every figure says its split
    # a rerun (fresh folder) gives the same metrics, times apart
    rerun = tmp_path / "again"
    write_tables(make_paths(rerun))
    assert _drop_times(_run(rerun, cfg)) == _drop_times(m)
    # detector on the saved files reproduces the camera's test decisions
    tables = write_tables(make_paths(tmp_path / "third"))
    cols = [c for c in tables["test"].columns if c.startswith(("size_", "iat_"))]
    legit = tables["test"][tables["test"]["label"] == "camera"][cols].to_numpy(float)
    flagged = load_device(paths.anomaly_models / "camera").is_attack(legit)
    assert flagged.mean() == pytest.approx(cam["fpr"])


def test_one_device_without_mlflow(tmp_path) -> None:
    paths = make_paths(tmp_path)
    write_tables(paths)
    cfg = tiny(
        device="plug",
        plots=False,
        order="positional",
        baselines={"knn": {"params": {"n_neighbors": 3}}},
    )
    ctx = StageContext(paths=paths, dataset=composed("experiment=tiny").dataset, seed=0)
    assert "plug" not in ctx.dataset.device_types  # cfg.device wins
    with stage_run("anomaly", TrackingConfig(enabled=False), paths.metrics_dir) as sr:
        m = run(cfg, ctx, sr)
    assert sorted(m) == ["plug", SKIPPED] and m[SKIPPED] == {}
    assert list(m["plug"]["baselines"]) == ["knn"]
    assert not (paths.plots_dir / "anomaly").exists()
    assert m["plug"]["flows"]["validation_attack"] == 10  # half of the 20 aimed at the plug
    assert m["plug"]["order"] == "positional" and "order_choice" not in m["plug"]


@pytest.mark.parametrize("name", ["default", "tiny"])
def test_conf_files_load(name) -> None:
    data = yaml.safe_load((REPO / "conf/anomaly" / f"{name}.yaml").read_text())
    from_dict(AnomalyConfig, data, "anomaly")


def test_dataclass_defaults_equal_default_yaml() -> None:
    data = yaml.safe_load((REPO / "conf/anomaly/default.yaml").read_text())
    assert set(data) == set(to_dict(AnomalyConfig()))  # every field is set in the conf
    assert to_dict(from_dict(AnomalyConfig, data, "anomaly")) == to_dict(AnomalyConfig())


@pytest.mark.parametrize(
    ("over", "pattern"),
    [
        ({"hidden": 0}, r"hidden must be >= 1"),
        ({"sparsity_target": 1.5}, r"sparsity_target"),
        ({"output": "relu"}, r"anomaly\.output"),
        ({"baselines": {"lof": {}}}, r"unknown \['lof'\]"),
        ({"order": "shuffled"}, r"anomaly\.order"),
        ({"stop_share": 0.5}, r"stop_share must be in \[0, 0\.5\)"),
        ({"threads": -1}, r"threads must be >= 0"),
        ({"hiddn": 3}, r"unknown key"),
    ],
)
def test_config_errors(over, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern):
        tiny(**over)


def test_score_arrays_are_float64(tmp_path) -> None:
    from iotwatch.anomaly.model import SparseAutoencoder, reconstruction_errors

    s = reconstruction_errors(SparseAutoencoder(3, hidden=2), np.zeros((2, 3)))
    assert s.dtype == np.float64 and s.shape == (2,)


def test_training_sets_hold_out_train_flows_for_early_stopping() -> None:
    from iotwatch.anomaly.stage import training_sets

    train = np.arange(200, dtype=float).reshape(100, 2)
    val = -np.arange(40, dtype=float).reshape(20, 2)
    attack = np.arange(20) % 2 == 0
    fit_x, stop_x = training_sets(tiny(stop_share=0.15), train, val, attack, seed=3)
    assert len(stop_x) == 15 and len(fit_x) == 85
    # a partition of the train flows, in their order, and nothing from validation
    both = np.concatenate([fit_x, stop_x])
    assert sorted(map(tuple, both)) == sorted(map(tuple, train))
    assert (np.diff(fit_x[:, 0]) > 0).all() and (np.diff(stop_x[:, 0]) > 0).all()
    again = training_sets(tiny(stop_share=0.15), train, val, attack, seed=3)
    assert (again[1] == stop_x).all()  # seeded
    other = training_sets(tiny(stop_share=0.15), train, val, attack, seed=4)
    assert not (other[1] == stop_x).all()
    # stop_share 0: the method's way, the legitimate validation flows
    fit0, stop0 = training_sets(tiny(stop_share=0.0), train, val, attack, seed=3)
    assert fit0 is train and (stop0 == val[~attack]).all()
    # never leaves nothing to fit
    fit2, stop2 = training_sets(tiny(stop_share=0.4), train[:2], val, attack, seed=3)
    assert len(fit2) == 1 and len(stop2) == 1
