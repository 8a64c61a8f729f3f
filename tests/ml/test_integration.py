"""A tiny synthetic flow table through features -> tsne -> classify -> report, with MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from iotwatch.classify import BEST_KEY, SCORE_KEYS, ClassifyConfig, load_classifier
from iotwatch.classify import run as run_classify
from iotwatch.config import from_dict
from iotwatch.features import FeaturesConfig
from iotwatch.features import run as run_features
from iotwatch.paths import DatasetConfig
from iotwatch.report import run_report
from iotwatch.tracking import TrackingConfig, stage_run
from iotwatch.viz import TsneConfig, run_tsne

REPO = Path(__file__).resolve().parents[2]
SEED = 3


def _strip_timings(d):
    if isinstance(d, dict):
        return {k: _strip_timings(v) for k, v in d.items() if not k.endswith("seconds")}
    return d


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_end_to_end(tmp_path, paths, flows_factory) -> None:
    import mlflow

    tcfg = TrackingConfig(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art")
    )
    paths.flows.parent.mkdir(parents=True)
    flows_factory(per_class=40, seed=1).to_parquet(paths.flows)
    ccfg = from_dict(ClassifyConfig, yaml.safe_load((REPO / "conf/classify/tiny.yaml").read_text()))

    with stage_run("features", tcfg, paths.metrics_dir) as sr:
        run_features(FeaturesConfig(), paths, DatasetConfig(), SEED, sr)
    with stage_run("tsne", tcfg, paths.metrics_dir) as sr:
        t = run_tsne(TsneConfig(max_iter=250, max_points=60), paths, SEED, sr)
    assert t["points"] <= 60 and (paths.figures_dir / "tsne.png").is_file()
    with stage_run("classify", tcfg, paths.metrics_dir) as sr:
        first = run_classify(ccfg, paths, SEED, sr)
        classify_run = sr.run_id
    saved = json.loads((paths.metrics_dir / "classify.json").read_text())
    models = ["random_forest", "decision_tree", "svm", "knn", "mlp", "gaussian_nb"]
    assert set(saved) == {*models, BEST_KEY}
    for m in models:
        assert set(SCORE_KEYS) <= set(saved[m])
        assert 0.0 <= saved[m]["accuracy"] <= 1.0
        assert (paths.plots_dir / f"confusion_{m}.png").is_file()
    # the classes are well separated: the best model must learn them
    assert saved[BEST_KEY]["accuracy"] > 0.9
    assert saved[BEST_KEY]["name"] in models
    csv = (paths.plots_dir / "confusion.csv").read_text().splitlines()
    assert csv[0] == "actual,predicted" and len(csv) == 1 + 24
    bundle = load_classifier(paths.classifier)
    assert bundle.name == saved[BEST_KEY]["name"] and bundle.labels == ["bulb", "camera", "plug"]

    # nested MLflow runs: one per model, Optuna trials nested inside the tuned models
    client = mlflow.MlflowClient(tracking_uri=tcfg.tracking_uri)
    exp = client.get_experiment_by_name("iotwatch/classify")
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{classify_run}'"
    )
    assert sorted(r.info.run_name for r in children) == sorted(models)
    knn = next(r for r in children if r.info.run_name == "knn")
    assert knn.data.metrics["accuracy"] == saved["knn"]["accuracy"]
    trials = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{knn.info.run_id}'"
    )
    assert len(trials) == 2 and all("cv_accuracy" in r.data.metrics for r in trials)

    # same seed -> same metrics
    with stage_run("classify", tcfg, paths.metrics_dir) as sr:
        second = run_classify(ccfg, paths, SEED, sr)
    assert _strip_timings(first) == _strip_timings(second)

    with stage_run("report", tcfg, paths.metrics_dir) as sr:
        summary = run_report(paths, sr)
    text = paths.report.read_text()
    assert summary["models"] == 6
    assert (
        "| model | accuracy | micro precision | micro recall | micro F1 | macro F1 | fit time (s) |"
        in text
    )
    assert "![t-SNE](figures/tsne.png)" in text
    assert "plots/confusion_random_forest.png" in text
    assert "| camera |" in text
    assert text.index("| RF |") < text.index("| DT |") < text.index("| GNB |")  # method's order
    kl = json.loads((paths.metrics_dir / "tsne.json").read_text())["kl_divergence"]
    assert kl is None or kl < 1e6
