"""A hand-made flow table through features -> tsne -> classify -> report, with MLflow, each
stage configured by the real conf/ (experiment=tiny) as the pipeline composes it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from iotwatch.classify import (
    BEST_KEY,
    COMPARED_KEYS,
    DETAIL_FILE,
    SCORE_KEYS,
    ClassifyConfig,
    load_classifier,
)
from iotwatch.classify import run as run_classify
from iotwatch.context import StageContext
from iotwatch.features import FeaturesConfig
from iotwatch.features import run as run_features
from iotwatch.report import run as run_report
from iotwatch.tracking import stage_run
from iotwatch.tsne import run as run_tsne
from iotwatch.viz import TsneConfig

from .conftest import composed, make_flows, make_paths

REPO = Path(__file__).resolve().parents[2]
SEED = 3
MODELS = ["random_forest", "decision_tree", "svm", "knn", "mlp", "gaussian_nb"]


def _strip_timings(d):
    if isinstance(d, dict):
        return {k: _strip_timings(v) for k, v in d.items() if not k.endswith("seconds")}
    return d


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Features, t-SNE and classify run once on 3 classes x 2 device units; returns a namespace."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    paths = make_paths(tmp_path)
    params = composed("experiment=tiny")
    tcfg = replace(
        params.tracking,
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        artifact_root=str(tmp_path / "art"),
    )
    ctx = StageContext(paths=paths, dataset=replace(params.dataset, ground_truth=None), seed=SEED)
    paths.flows.parent.mkdir(parents=True)
    make_flows(per_class=60, seed=1, units=2).to_parquet(paths.flows)
    fcfg = params.typed("features", FeaturesConfig)
    ccfg = params.typed("classify", ClassifyConfig)
    tsne = replace(params.typed("tsne", TsneConfig), max_iter=250, max_points=60)
    with stage_run("features", tcfg, paths.metrics_dir) as sr:
        features = run_features(fcfg, ctx, sr)
    with stage_run("tsne", tcfg, paths.metrics_dir) as sr:
        t = run_tsne(tsne, ctx, sr)
    with stage_run("classify", tcfg, paths.metrics_dir) as sr:
        first = run_classify(ccfg, ctx, sr)
        run_id = sr.run_id

    class NS:
        pass

    ns = NS()
    ns.__dict__.update(
        tcfg=tcfg, ctx=ctx, paths=paths, features=features, tsne=t, classify=first,
        classify_run=run_id, ccfg=ccfg,
    )  # fmt: skip
    return ns


def test_features_carve_validation_and_hold_out_one_unit_per_type(pipeline) -> None:
    paths, f = pipeline.paths, pipeline.features
    train, val, test, dev = (
        pd.read_parquet(p)
        for p in (paths.features_train, paths.features_validation, paths.features_test,
                  paths.features_devices)
    )  # fmt: skip
    # one of the two units of each type is held out whole; the other feeds train/val/test
    assert dev.groupby("label")["device_id"].nunique().to_dict() == {
        "bulb": 1, "camera": 1, "plug": 1
    }  # fmt: skip
    assert set(dev["device_id"]).isdisjoint(set(train["device_id"]) | set(test["device_id"]))
    assert len(dev) == 90 and len(train) + len(val) + len(test) == 90
    assert len(test) == 18 and len(val) == 15  # 20 % of 90, then 20 % of the remaining 72 (ceil)
    ids = [set(t["flow_id"]) for t in (train, val, test, dev)]
    assert sum(len(i) for i in ids) == len(set().union(*ids)) == 180  # disjoint, complete
    assert f["validation"]["flows"] == 15 and f["devices"]["flows"] == 90


def test_classify_chooses_on_validation_and_reports_every_split(pipeline) -> None:
    saved = json.loads((pipeline.paths.metrics_dir / "classify.json").read_text())
    detail = json.loads((pipeline.paths.plots_dir / DETAIL_FILE).read_text())
    assert set(saved) == set(detail) == {*MODELS, BEST_KEY}
    for m in MODELS:
        for split in ("validation", "test", "devices"):
            assert set(saved[m][split]) == set(COMPARED_KEYS), (m, split)  # DVC metrics: compared
            assert set(SCORE_KEYS) <= set(detail[m][split]), (m, split)  # the rest: detail
        per_device = detail[m]["devices"]["per_device"]
        assert sorted(r["device_type"] for r in per_device.values()) == ["bulb", "camera", "plug"]
        assert all(r["flows"] == 30 for r in per_device.values())
        assert (pipeline.paths.plots_dir / f"confusion_{m}.png").is_file()
    best = saved[BEST_KEY]
    assert best["selected_on"] == "validation"
    top = max(saved[m]["validation"]["accuracy"] for m in MODELS)
    first_top = next(m for m in MODELS if saved[m]["validation"]["accuracy"] == top)
    assert best["name"] == first_top  # the first model with the best VALIDATION accuracy
    assert best["test_accuracy"] == saved[best["name"]]["test"]["accuracy"]
    assert best["validation_accuracy"] > 0.9  # well separated classes: the best model learns
    csv = (pipeline.paths.plots_dir / "confusion.csv").read_text().splitlines()
    assert csv[0] == "actual,predicted" and len(csv) == 1 + 18  # the test split
    bundle = load_classifier(pipeline.paths.classifier)
    assert bundle.name == best["name"] and bundle.labels == ["bulb", "camera", "plug"]


def test_mlflow_runs_nest_models_and_trials(pipeline) -> None:
    import mlflow

    saved = pipeline.classify
    client = mlflow.MlflowClient(tracking_uri=pipeline.tcfg.tracking_uri)
    exp = client.get_experiment_by_name("iotwatch/classify")
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{pipeline.classify_run}'"
    )
    assert sorted(r.info.run_name for r in children) == sorted(f"classify/{m}" for m in MODELS)
    knn = next(r for r in children if r.info.run_name == "classify/knn")
    assert knn.data.metrics["validation/accuracy"] == saved["knn"]["validation"]["accuracy"]
    assert knn.data.metrics["test/accuracy"] == saved["knn"]["test"]["accuracy"]
    trials = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{knn.info.run_id}'"
    )
    assert len(trials) == 2 and all("cv_accuracy" in r.data.metrics for r in trials)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_same_seed_same_metrics(pipeline) -> None:
    with stage_run("classify", pipeline.tcfg, pipeline.paths.metrics_dir) as sr:
        second = run_classify(pipeline.ccfg, pipeline.ctx, sr)
    assert _strip_timings(pipeline.classify) == _strip_timings(second)


def test_report_names_the_split_of_every_figure(pipeline) -> None:
    with stage_run("report", pipeline.tcfg, pipeline.paths.metrics_dir) as sr:
        summary = run_report(None, pipeline.ctx, sr)
    text = pipeline.paths.report.read_text()
    assert summary["models"] == 6
    assert "| model | validation accuracy | test accuracy |" in text
    assert "| device type | train flows | validation flows | test flows |" in text
    assert "Best model on validation:" in text and "Held-out device units" in text
    assert "![t-SNE](figures/tsne.png)" in text
    assert "plots/confusion_random_forest.png" in text
    assert text.index("| RF |") < text.index("| DT |") < text.index("| GNB |")  # method's order
    assert pipeline.tsne["points"] <= 60


def test_bad_estimator_value_is_one_line_before_any_fit(pipeline) -> None:
    from iotwatch.errors import ConfigError

    cfg = pipeline.ccfg
    knn = replace(cfg.models["knn"], params={**cfg.models["knn"].params, "n_neighbors": "abc"})
    bad = replace(cfg, models={**cfg.models, "knn": knn})
    with (
        pytest.raises(ConfigError) as exc,
        stage_run("classify", pipeline.tcfg, pipeline.paths.metrics_dir) as sr,
    ):
        run_classify(bad, pipeline.ctx, sr)
    msg = str(exc.value)
    assert "classify.models.knn.params.n_neighbors" in msg and "'abc'" in msg, msg
    assert "\n" not in msg
