"""Models in the MLflow registry without pickle, the same files the stages saved (and the
monitor bundle holds); classify's runs read well in MLflow (names, inputs with DVC hashes,
one picture name per child, curves with steps, a summary on the parent)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.ml.conftest import composed, make_flows, make_paths

from iotwatch.classify import COMPARED_KEYS, ClassifyConfig, load_classifier
from iotwatch.classify import run as run_classify
from iotwatch.context import StageContext
from iotwatch.features import FeaturesConfig
from iotwatch.features import run as run_features
from iotwatch.registry import CLASSIFIER_MODEL, anomaly_model_name, log_anomaly_model, sha256
from iotwatch.tracking import dvc_md5, stage_run

MODELS = ["random_forest", "decision_tree", "svm", "knn", "mlp", "gaussian_nb"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("registry")
    paths = make_paths(tmp)
    params = composed("experiment=tiny")
    tcfg = replace(
        params.tracking, tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifact_root=str(tmp / "art")
    )
    ctx = StageContext(paths=paths, dataset=replace(params.dataset, ground_truth=None), seed=1)
    paths.flows.parent.mkdir(parents=True)
    make_flows(per_class=60, seed=1, units=2).to_parquet(paths.flows)
    with stage_run("features", tcfg, paths.metrics_dir) as sr:
        run_features(params.typed("features", FeaturesConfig), ctx, sr)
    with stage_run("classify", tcfg, paths.metrics_dir, concern="device-recognition") as sr:
        run_classify(params.typed("classify", ClassifyConfig), ctx, sr)
        parent = sr.run_id
    import mlflow

    mlflow.set_tracking_uri(tcfg.tracking_uri)
    return type("Run", (), {"paths": paths, "tcfg": tcfg, "parent": parent, "tmp": tmp})


def test_the_classifier_is_registered_as_skops_sklearn_with_the_saved_file(run) -> None:
    import mlflow
    import mlflow.sklearn

    client = mlflow.MlflowClient()
    version = client.get_model_version(CLASSIFIER_MODEL, "1")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{CLASSIFIER_MODEL}/1"))
    mlmodel = (local / "MLmodel").read_text()
    assert "serialization_format: skops" in mlmodel and "signature:" in mlmodel
    assert (local / "input_example.json").is_file()
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle")]
    # the registered file is the stage's file, byte for byte
    saved = run.paths.classifier
    assert sha256(local / "extra_files" / saved.name) == sha256(saved)
    assert version.tags["sha256"] == sha256(saved)
    test = pd.read_parquet(run.paths.features_test)
    bundle = load_classifier(saved)
    x = test[bundle.feature_columns]
    loaded = mlflow.sklearn.load_model(f"models:/{CLASSIFIER_MODEL}/1")
    assert (loaded.predict(x) == bundle.model.predict(x)).all()
    # registered from the chosen model's run
    best = json.loads((run.paths.metrics_dir / "classify.json").read_text())["best_model"]
    assert client.get_run(version.run_id).info.run_name == f"classify/{best['name']}"


def test_classify_runs_read_well_in_mlflow(run) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(run.parent)
    assert set(parent.data.metrics) <= {"models"} | {
        f"best_model/{k}" for k in ("validation_accuracy", "test_accuracy", "test_f1_macro",
                                    "devices_accuracy")
    }  # fmt: skip
    assert "mlflow.source.git.commit" in parent.data.tags and "git_commit" not in parent.data.tags
    exp = client.get_experiment(parent.info.experiment_id)
    assert "classifiers" in exp.tags["mlflow.note.content"]
    digests = {d.dataset.name: d.dataset.digest for d in parent.inputs.dataset_inputs}
    assert digests == {
        "train": dvc_md5(run.paths.features_train),
        "validation": dvc_md5(run.paths.features_validation),
        "test": dvc_md5(run.paths.features_test),
        "devices": dvc_md5(run.paths.features_devices),
    }
    children = client.search_runs(
        [exp.experiment_id],
        f"tags.mlflow.parentRunId = '{run.parent}'",
    )
    assert sorted(r.info.run_name for r in children) == sorted(f"classify/{m}" for m in MODELS)
    for child in children:
        model = child.info.run_name.split("/")[1]
        assert child.data.params["model"] == model
        names = [a.path for a in client.list_artifacts(child.info.run_id)]
        assert names == ["confusion.png"], names  # one name: the compare view lines them up
        assert len(child.inputs.dataset_inputs) == 4
    mlp = next(r for r in children if r.info.run_name == "classify/mlp")
    curve = client.get_metric_history(mlp.info.run_id, "train/loss")
    assert len(curve) > 1 and [m.step for m in curve] == list(range(1, len(curve) + 1))
    saved = json.loads((run.paths.metrics_dir / "classify.json").read_text())
    for m in MODELS:
        assert all(set(v) == set(COMPARED_KEYS) for v in saved[m].values()), saved[m]


def test_an_autoencoder_folder_is_registered_from_code_with_its_files(run, tmp_path) -> None:
    import mlflow

    from iotwatch.anomaly.members import specs_for
    from iotwatch.anomaly.model import SparseAutoencoder
    from iotwatch.anomaly.scaling import FeatureScaler
    from iotwatch.anomaly.stage import THRESHOLD_FORMAT, load_device, save_device

    rng = np.random.default_rng(0)
    cols = [f"size_sent_{i}" for i in range(6)]
    x = pd.DataFrame(rng.integers(40, 1500, (50, 6)).astype(float), columns=cols)
    hparams = {"n_features": 6, "hidden": 4, "lr": 0.01, "sparsity_target": 0.1,
               "sparsity_weight": 0.2, "output": "linear"}  # fmt: skip
    folder = tmp_path / "camera"
    thresholds = {"format": THRESHOLD_FORMAT, "threshold": 0.5, "fpr_threshold": 0.7}
    # two members (anomaly.order both): the second one's files registered too
    members = [(SparseAutoencoder(**hparams), FeatureScaler(order=o).fit(x.to_numpy(), cols))
               for o in ("positional", "sorted")]  # fmt: skip
    save_device(folder, members, specs_for(["positional", "sorted"], [0.3, 0.2]), hparams,
                thresholds)  # fmt: skip
    assert (folder / "sorted.weights.safetensors").is_file()
    with (
        stage_run("anomaly", run.tcfg, None, concern="behaviour") as sr,
        sr.child("anomaly/camera") as msr,
    ):
        version = log_anomaly_model(folder, "camera", msr, x.head(5))
    name = anomaly_model_name("camera")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle")]
    registered = local / "artifacts" / "detector"
    for f in folder.iterdir():
        assert sha256(registered / f.name) == sha256(f), f.name
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    out = model.predict(x)
    expected = load_device(folder).score(x.to_numpy())
    assert np.allclose(out["score"].to_numpy(), expected)
    assert (out["is_attack"].to_numpy() == (expected > 0.5)).all()
