"""Classifier configs, pipelines and the skops round trip."""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from iotwatch.classify import (
    ClassifierBundle,
    ClassifyConfig,
    load_classifier,
    make_pipeline,
    save_classifier,
    scores,
)
from iotwatch.config import from_dict
from iotwatch.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[2]
# conf/classify/default.yaml's search settings, switched off: ClassifyConfig has no defaults.
OPTUNA_OFF = {
    **yaml.safe_load((REPO / "conf/classify/default.yaml").read_text())["optuna"],
    "enabled": False,
}


def classify_config(data: dict, where: str = "classify") -> ClassifyConfig:
    """``data`` (models, part of optuna) completed with OPTUNA_OFF, typed."""
    return from_dict(
        ClassifyConfig, {**data, "optuna": {**OPTUNA_OFF, **data.get("optuna", {})}}, where
    )


@pytest.mark.parametrize("name", ["default", "tiny"])
def test_conf_files_load(name) -> None:
    from iotwatch.pipeline.params_cli import compose_params

    data = yaml.safe_load(compose_params([f"classify={name}"], REPO / "conf"))["classify"]
    cfg = from_dict(ClassifyConfig, data, "classify")
    assert list(cfg.models) == [
        "random_forest",
        "decision_tree",
        "svm",
        "knn",
        "mlp",
        "gaussian_nb",
    ]
    for model, mcfg in cfg.models.items():
        make_pipeline(model, mcfg, seed=0)  # every configured parameter is accepted


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"models": {"xgboost": {}}}, r"unknown model"),
        ({"models": {"svm": {"enabled": False}}}, r"no model is enabled"),
        ({"models": {"svm": {"enabld": True}}}, r"classify\.models\.svm: unknown key"),
        ({"models": {"svm": {}}, "optuna": {"cv_folds": 1}}, r"cv_folds"),
        (
            {
                "models": {"svm": {}},
                "optuna": {"search_spaces": {"svm": {"C": {"type": "loguniform"}}}},
            },
            r"search_spaces\.svm\.C: type",
        ),
    ],
)
def test_config_errors_are_clean(data, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern):
        classify_config(data)


def test_bad_estimator_param_is_config_error() -> None:
    cfg = classify_config({"models": {"svm": {"params": {"Cee": 1}}}})
    with pytest.raises(ConfigError, match=r"classify\.models\.svm\.params"):
        make_pipeline("svm", cfg.models["svm"], seed=0)


def test_pipeline_steps_and_seed() -> None:
    cfg = classify_config(
        {
            "models": {
                "mlp": {"log1p": True, "scale": True, "params": {"hidden_layer_sizes": "8,4"}}
            }
        },
    )
    pipe = make_pipeline("mlp", cfg.models["mlp"], seed=7)
    assert [s for s, _ in pipe.steps] == ["log1p", "scale", "model"]
    assert pipe.named_steps["model"].hidden_layer_sizes == (8, 4)
    assert pipe.named_steps["model"].random_state == 7


def test_scores_micro_equals_accuracy_single_label() -> None:
    y = np.array(["a", "a", "b", "c"])
    p = np.array(["a", "b", "b", "c"])
    s = scores(y, p, ["a", "b", "c"])
    assert s["accuracy"] == s["precision_micro"] == s["recall_micro"] == s["f1_micro"] == 0.75
    assert s["per_class"]["a"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }


def _fitted(kind: str):
    x = pd.DataFrame(np.random.default_rng(0).random((30, 3)), columns=["f1", "f2", "f3"])
    y = np.array(["a", "b", "c"] * 10)
    models = {
        "random_forest": {"params": {"n_estimators": 3}},
        "knn": {"log1p": True, "scale": True},
        "mlp": {"scale": True, "params": {"max_iter": 20, "hidden_layer_sizes": [4]}},
    }
    cfg = classify_config({"models": {kind: models[kind]}})
    return make_pipeline(kind, cfg.models[kind], 0).fit(x, y), x


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", ["random_forest", "knn", "mlp"])
def test_skops_round_trip(tmp_path, kind) -> None:
    pipe, x = _fitted(kind)
    path = tmp_path / "m.skops"
    save_classifier(ClassifierBundle(pipe, ["a", "b", "c"], list(x.columns), kind), path)
    back = load_classifier(path)
    assert (
        back.name == kind
        and back.labels == ["a", "b", "c"]
        and back.feature_columns == ["f1", "f2", "f3"]
    )
    assert (back.model.predict(x) == pipe.predict(x)).all()


def test_skops_refuses_untrusted_type(tmp_path) -> None:
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "evil.skops"
    save_classifier(ClassifierBundle(FunctionTransformer(operator.neg), ["a"], ["f"], "x"), path)
    with pytest.raises(InputError, match=r"evil\.skops: refusing.*operator"):
        load_classifier(path)


def test_load_classifier_not_skops(tmp_path) -> None:
    path = tmp_path / "junk.skops"
    path.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.skops"):
        load_classifier(path)
    with pytest.raises(InputError, match="missing.skops"):
        load_classifier(tmp_path / "missing.skops")
