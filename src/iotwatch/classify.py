"""Device-type recognition: six sklearn classifiers compared like the method's table.

Each model is a Pipeline ([log1p] -> [StandardScaler] -> estimator); all hyperparameters come
from conf/classify/*.yaml. With ``optuna.enabled`` every model that has a search space is tuned
by cross-validated accuracy on TRAIN only (each trial a nested MLflow run), then refit on all
of train. Every model is scored on validation, test and the held-out devices (the device
split). The best model by VALIDATION accuracy (test is only reported) is saved with skops
(never pickle) together with its label names and feature columns; ``load_classifier`` reloads it
trusting only an allow-list, and ``iotwatch.registry`` registers that file in MLflow.

What goes where: ``classify.json`` (DVC metrics) keeps the figures people compare across
experiments, accuracy and macro F1 per model and split plus the best model; the full detail
(micro scores, per-class reports, per held-out device, timings, Optuna) is in
``<plots_dir>/classify_detail.json`` and in each model's MLflow child run
(``classify/<model>``), whose parent holds only the summary.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotwatch.errors import InputError
from iotwatch.paths import PathsConfig

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from iotwatch.context import StageContext
    from iotwatch.tracking import StageRun

log = logging.getLogger(__name__)

# name -> (module, class, label in the method's table); the order is the method's table order.
ESTIMATORS: dict[str, tuple[str, str, str]] = {
    "random_forest": ("sklearn.ensemble", "RandomForestClassifier", "RF"),
    "decision_tree": ("sklearn.tree", "DecisionTreeClassifier", "DT"),
    "svm": ("sklearn.svm", "SVC", "SVM"),
    "knn": ("sklearn.neighbors", "KNeighborsClassifier", "KNN"),
    "mlp": ("sklearn.neural_network", "MLPClassifier", "ANN (MLP)"),
    "gaussian_nb": ("sklearn.naive_bayes", "GaussianNB", "GNB"),
}


def model_label(name: str) -> str:
    """The model's name in the method's table (RF, DT, ...); unknown names as they are."""
    return ESTIMATORS[name][2] if name in ESTIMATORS else name


SCORE_KEYS = ("accuracy", "precision_micro", "recall_micro", "f1_micro", "f1_macro")
BEST_KEY = "best_model"  # the one key of classify.json that is not a model
# What classify.json (the DVC metrics file) keeps per model and split; the rest is detail.
COMPARED_KEYS = ("accuracy", "f1_macro")
DETAIL_FILE = "classify_detail.json"  # in paths.plots_dir, beside the confusion matrices


def compared_metrics(detail: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics of the classify stage: per model, accuracy and macro F1 of each split
    (validation, test, devices), and the best model's summary; nothing per class."""
    out: dict[str, Any] = {}
    for name, m in detail.items():
        if name == BEST_KEY or not isinstance(m, dict):
            out[name] = m
            continue
        out[name] = {
            split: {k: m[split][k] for k in COMPARED_KEYS if k in m[split]}
            for split in ("validation", "test", "devices")
            if isinstance(m.get(split), dict)
        }
    return out


@dataclass
class ModelConfig:
    """One classifier: whether to run it, its preprocessing and its estimator parameters.

    conf/classify/*.yaml gives every key of every model (the pipeline reads them strictly); the
    defaults are neutral values for library callers, not a model's settings."""

    enabled: bool = True
    log1p: bool = False  # log1p of every feature (sizes/IATs are >= 0) before scaling
    scale: bool = False  # StandardScaler: needed by distance/gradient models (SVM, kNN, MLP)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptunaConfig:
    """Hyperparameter search: TPE over ``search_spaces`` maximising CV accuracy on train.

    No defaults: conf/classify/*.yaml spells out every key."""

    enabled: bool
    n_trials: int
    cv_folds: int
    timeout_s: float | None  # per model
    # Optuna storage URL (sqlite:///optuna.db, postgresql://...) to share studies; null = memory.
    storage: str | None
    study_prefix: str
    # model -> param -> {type: int|float|categorical, low, high, log, choices}; the special
    # param ``log1p`` toggles the log transform. Models without a space keep their params.
    search_spaces: dict[str, dict[str, dict[str, Any]]]

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ValueError(f"optuna.n_trials must be >= 1, got {self.n_trials}")
        if self.cv_folds < 2:
            raise ValueError(f"optuna.cv_folds must be >= 2, got {self.cv_folds}")
        for model, space in self.search_spaces.items():
            if model not in ESTIMATORS:
                raise ValueError(
                    f"optuna.search_spaces: unknown model '{model}'; known: {list(ESTIMATORS)}"
                )
            for name, spec in space.items():
                kind = spec.get("type")
                if kind in ("int", "float"):
                    if "low" not in spec or "high" not in spec:
                        raise ValueError(f"optuna.search_spaces.{model}.{name}: needs low and high")
                    if spec["low"] > spec["high"]:
                        raise ValueError(f"optuna.search_spaces.{model}.{name}: low > high")
                elif kind == "categorical":
                    if not spec.get("choices"):
                        raise ValueError(f"optuna.search_spaces.{model}.{name}: needs choices")
                else:
                    raise ValueError(
                        f"optuna.search_spaces.{model}.{name}: type must be int, float or "
                        f"categorical, got {kind!r}"
                    )


@dataclass
class ClassifyConfig:
    """conf/classify/*.yaml: the models to compare and the optional Optuna search."""

    models: dict[str, ModelConfig]
    optuna: OptunaConfig

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(ESTIMATORS))
        if unknown:
            raise ValueError(f"models: unknown model(s) {unknown}; known: {list(ESTIMATORS)}")
        if not any(m.enabled for m in self.models.values()):
            raise ValueError("models: no model is enabled")


@dataclass
class ClassifierBundle:
    """What ``paths.classifier`` holds: the fitted pipeline, its labels and feature columns."""

    model: Any
    labels: list[str]
    feature_columns: list[str]
    name: str


def _fix_param(name: str, value: Any) -> Any:
    # YAML lists / "64,32" strings -> tuples: MLP layer sizes (Optuna choices must be scalars).
    if name == "hidden_layer_sizes":
        if isinstance(value, str):
            return tuple(int(v) for v in value.split(",") if v.strip())
        if isinstance(value, list):
            return tuple(int(v) for v in value)
    return value


def make_pipeline(
    name: str, mcfg: ModelConfig, seed: int, params: dict[str, Any] | None = None
) -> Any:
    """Build the sklearn Pipeline of model ``name`` (random_state = seed where it exists)."""
    import importlib

    import numpy as np
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from iotwatch.errors import ConfigError

    module, cls_name, _ = ESTIMATORS[name]
    cls = getattr(importlib.import_module(module), cls_name)
    params = dict(mcfg.params if params is None else params)
    log1p = bool(params.pop("log1p", mcfg.log1p))
    kwargs = {k: _fix_param(k, v) for k, v in params.items()}
    if "random_state" in cls().get_params() and "random_state" not in kwargs:
        kwargs["random_state"] = seed
    try:
        est = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"classify.models.{name}.params: {exc}") from None
    steps: list[tuple[str, Any]] = []
    if log1p:
        steps.append(("log1p", FunctionTransformer(np.log1p, feature_names_out="one-to-one")))
    if mcfg.scale:
        steps.append(("scale", StandardScaler()))
    steps.append(("model", est))
    return Pipeline(steps)


def scores(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """The method's metrics (accuracy, micro P/R/F1) plus macro F1 and a per-class report."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    _, _, fmac, _ = precision_recall_fscore_support(
        y_true, y_pred, average="macro", labels=labels, zero_division=0
    )
    pc, rc, fc, sc = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    from iotwatch.features import metric_key

    per_class = {
        metric_key(lab): {
            "precision": float(pc[i]),
            "recall": float(rc[i]),
            "f1": float(fc[i]),
            "support": int(sc[i]),
        }
        for i, lab in enumerate(labels)
    }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_micro": float(p),
        "recall_micro": float(r),
        "f1_micro": float(f),
        "f1_macro": float(fmac),
        "per_class": per_class,
    }


def _suggest(trial: Any, name: str, spec: dict[str, Any]) -> Any:
    kind = spec["type"]
    if kind == "int":
        return trial.suggest_int(
            name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False))
        )
    if kind == "float":
        return trial.suggest_float(
            name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
        )
    return trial.suggest_categorical(name, list(spec["choices"]))


def tune(
    name: str,
    mcfg: ModelConfig,
    ocfg: OptunaConfig,
    x: pd.DataFrame,
    y: np.ndarray,
    seed: int,
    sr: StageRun,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Optuna search of model ``name`` on train (CV accuracy); returns (best params, stats)."""
    from collections import Counter

    import optuna
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    space = ocfg.search_spaces[name]
    base = {"log1p": mcfg.log1p, **mcfg.params}
    # Folds cannot exceed the smallest class.
    smallest = int(min(Counter(y.tolist()).values()))
    folds = max(2, min(ocfg.cv_folds, smallest))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one-line-per-trial log instead

    def objective(trial: Any) -> float:
        params = dict(base)
        params.update({p: _suggest(trial, p, spec) for p, spec in space.items()})
        pipe = make_pipeline(name, mcfg, seed, params)
        t0 = time.perf_counter()
        acc = float(cross_val_score(pipe, x, y, cv=cv, scoring="accuracy", n_jobs=1).mean())
        with sr.child(
            f"classify/{name}/trial-{trial.number}", {"model": name, "trial": trial.number}
        ) as tr:
            tr.log_params(trial.params)
            tr.log_metrics({"cv_accuracy": acc, "seconds": time.perf_counter() - t0})
        return acc

    def progress(study: Any, trial: Any) -> None:
        log.info(
            "%s trial %d/%d: cv accuracy %.4f (best %.4f) %s",
            name, trial.number + 1, ocfg.n_trials, trial.value or float("nan"),
            study.best_value, trial.params,
        )  # fmt: skip

    study = optuna.create_study(
        study_name=f"{ocfg.study_prefix}-{name}",
        storage=ocfg.storage,
        load_if_exists=ocfg.storage is not None,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    study.optimize(objective, n_trials=ocfg.n_trials, timeout=ocfg.timeout_s, callbacks=[progress])
    best = dict(base)
    best.update(study.best_params)
    stats = {"cv_accuracy": float(study.best_value), "trials": len(study.trials), "cv_folds": folds}
    return best, stats


@dataclass
class Splits:
    """The feature tables of the features stage: train, validation, test, held-out devices."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    devices: pd.DataFrame
    columns: list[str]

    def evaluated(self) -> dict[str, pd.DataFrame]:
        """Splits every model is scored on (non-empty ones; ``devices`` may be empty)."""
        out = {"validation": self.validation, "test": self.test}
        if len(self.devices):
            out["devices"] = self.devices
        return out


def load_split(paths: PathsConfig) -> Splits:
    """Read the feature tables and check they share their feature columns."""
    from iotwatch.features import LABEL, model_columns, read_table

    tables = {
        "train": (paths.features_train, read_table(paths.features_train, "train feature table")),
        "validation": (
            paths.features_validation,
            read_table(paths.features_validation, "validation feature table"),
        ),
        "test": (paths.features_test, read_table(paths.features_test, "test feature table")),
        "devices": (
            paths.features_devices,
            read_table(paths.features_devices, "held-out device feature table"),
        ),
    }
    cols = model_columns(tables["train"][1])
    for split_name, (path, t) in tables.items():
        if model_columns(t) != cols:
            raise InputError(f"{path}: feature columns differ from {paths.features_train}")
        if LABEL not in t.columns:
            raise InputError(f"{path}: no '{LABEL}' column (written by the features stage?)")
        if len(t) == 0 and split_name != "devices":
            raise InputError(f"{path}: empty {split_name} feature table")
    return Splits(*(t for _, t in tables.values()), columns=cols)


def validate_params(name: str, pipe: Any) -> None:
    """Check the estimator's parameters with scikit-learn's own validation, before fitting:
    a bad value from params.yaml is one line naming the key, not a traceback from fit()."""
    from sklearn.utils._param_validation import InvalidParameterError

    from iotwatch.errors import ConfigError

    est = pipe.named_steps["model"]
    try:
        est._validate_params()
    except InvalidParameterError as exc:
        msg = str(exc).split("\n")[0]
        m = re.match(r"The '(\w+)' parameter of \w+ must be (.*)\. Got (.*) instead", msg)
        if m:
            key, want, got = m.groups()
            raise ConfigError(
                f"classify.models.{name}.params.{key}: {got} is not valid (must be {want})"
            ) from None
        raise ConfigError(f"classify.models.{name}.params: {msg}") from None


def fit_and_score(
    name: str,
    mcfg: ModelConfig,
    params: dict[str, Any] | None,
    data: Splits,
    labels: list[str],
    seed: int,
) -> tuple[Any, dict[str, Any], dict[str, np.ndarray]]:
    """Fit one model on train, score it on validation, test and the held-out devices.

    Returns (pipeline, {split: metrics} plus fit/predict seconds, {split: predictions}).
    ``run`` checks every model's parameters (``validate_params``) before any data is read.
    """
    from iotwatch.features import LABEL

    pipe = make_pipeline(name, mcfg, seed, params)
    cols = data.columns
    y_train = data.train[LABEL].astype(str).to_numpy()
    t0 = time.perf_counter()
    pipe.fit(data.train[cols], y_train)
    out: dict[str, Any] = {"fit_seconds": time.perf_counter() - t0}
    preds: dict[str, np.ndarray] = {}
    for split, table in data.evaluated().items():
        t0 = time.perf_counter()
        preds[split] = pipe.predict(table[cols])
        out[split] = scores(table[LABEL].astype(str).to_numpy(), preds[split], labels)
        if split == "test":
            out["predict_seconds"] = time.perf_counter() - t0
        if split == "devices":
            out[split]["per_device"] = per_device_accuracy(table, preds[split])
    return pipe, out, preds


def per_device_accuracy(table: pd.DataFrame, pred: np.ndarray) -> dict[str, dict[str, Any]]:
    """Accuracy on each held-out device unit (the device split), with its type and flow count."""
    from iotwatch.features import LABEL, metric_key

    out = {}
    truth = table[LABEL].astype(str).to_numpy()
    ids = table["device_id"].astype(str).to_numpy()
    for dev in sorted(set(ids)):
        sel = ids == dev
        out[metric_key(dev)] = {
            "device_type": str(truth[sel][0]),
            "flows": int(sel.sum()),
            "accuracy": float((pred[sel] == truth[sel]).mean()),
        }
    return out


def save_classifier(bundle: ClassifierBundle, path: Path) -> None:
    """Save the bundle with skops (a dict of the pipeline and plain lists/strings)."""
    import skops.io as sio

    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {
        "model": bundle.model,
        "labels": list(bundle.labels),
        "feature_columns": list(bundle.feature_columns),
        "name": bundle.name,
    }
    sio.dump(obj, path)


# Types outside skops' default trust that our pipelines contain (fitted trees, kNN indexes,
# the MLP optimiser). Other sklearn classes are allowed by name pattern below; nothing else.
ALLOWED_TYPES = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        "numpy.log1p",
    }
)
# sklearn classes (CamelCase last component, e.g. sklearn.metrics._dist_metrics.EuclideanDistance64);
# functions are lower-case and never match, so no arbitrary callable gets in.
_SKLEARN_CLASS = re.compile(r"^sklearn(\.[A-Za-z_][A-Za-z0-9_]*)+\.[A-Z][A-Za-z0-9_]*$")


def trusted_types(path: Path | str) -> list[str]:
    """The types outside skops' default trust that the file needs, all on the allow-list
    (``InputError`` naming the others otherwise); what ``skops.io.load`` is given to trust."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: classifier not found (run the classify stage)")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise InputError(f"{path}: not a skops file ({exc})") from None
    refused = [t for t in untrusted if t not in ALLOWED_TYPES and not _SKLEARN_CLASS.match(t)]
    if refused:
        raise InputError(f"{path}: refusing to load untrusted type(s) {sorted(refused)}")
    return list(untrusted)


def load_classifier(path: Path | str) -> ClassifierBundle:
    """Load a classifier saved by ``save_classifier``, refusing any type not on the allow-list."""
    import skops.io as sio

    path = Path(path)
    obj = sio.load(path, trusted=trusted_types(path))
    if not isinstance(obj, dict) or not {"model", "labels", "feature_columns", "name"} <= set(obj):
        raise InputError(
            f"{path}: not an iotwatch classifier (expected model/labels/feature_columns/name)"
        )
    return ClassifierBundle(
        model=obj["model"],
        labels=[str(v) for v in obj["labels"]],
        feature_columns=[str(v) for v in obj["feature_columns"]],
        name=str(obj["name"]),
    )


def write_confusion_csv(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> None:
    """``actual,predicted`` rows for `dvc plots` (template confusion)."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": y_true, "predicted": y_pred}).to_csv(path, index=False)


def _curves(msr: StageRun, pipe: Any) -> None:
    """Per-iteration curves of models that have them (the MLP's training loss, its validation
    score with early stopping) as metrics with steps."""
    est = pipe.named_steps["model"]
    if getattr(est, "loss_curve_", None) is not None:
        msr.log_curve("train/loss", est.loss_curve_)
    if getattr(est, "validation_scores_", None) is not None:
        msr.log_curve("train/early_stopping_score", est.validation_scores_)


def run(cfg: ClassifyConfig, ctx: StageContext, sr: StageRun) -> dict[str, Any]:
    """Classify stage: fit every enabled model on train, score it on validation, test and the
    held-out devices; the best model BY VALIDATION ACCURACY is saved (test is only reported)
    and registered in MLflow. Returns the full detail (classify.json keeps the compared part)."""
    import json

    from sklearn.metrics import confusion_matrix

    from iotwatch.features import LABEL
    from iotwatch.registry import log_classifier
    from iotwatch.viz import plot_confusion

    paths, seed = ctx.paths, ctx.seed
    # Check every enabled model's parameters before reading data or fitting anything.
    enabled = {name: mcfg for name, mcfg in cfg.models.items() if mcfg.enabled}
    for name, mcfg in enabled.items():
        validate_params(name, make_pipeline(name, mcfg, seed))
    data = load_split(paths)
    train, test, cols = data.train, data.test, data.columns
    labels = sorted(
        set(train[LABEL].astype(str))
        | set(data.validation[LABEL].astype(str))
        | set(test[LABEL].astype(str))
    )
    y_test = test[LABEL].astype(str).to_numpy()
    log.info(
        "classify: %d train / %d validation / %d test / %d held-out-device flows, "
        "%d features, %d classes",
        len(train), len(data.validation), len(test), len(data.devices), len(cols), len(labels),
    )  # fmt: skip
    inputs = {
        "train": (paths.features_train, train),
        "validation": (paths.features_validation, data.validation),
        "test": (paths.features_test, test),
    }
    if len(data.devices):
        inputs["devices"] = (paths.features_devices, data.devices)
    sr.log_input_tables(inputs, targets=LABEL)
    results: dict[str, Any] = {}
    fitted: dict[str, tuple[Any, dict[str, Any]]] = {}
    child_runs: dict[str, StageRun] = {}
    # Confusion PNGs and CSVs go in plots_dir (the classify stage's DVC out; figures_dir
    # belongs to the tsne stage); every child run logs its picture as confusion.png (top
    # level), so MLflow's compare view shows them side by side.
    plots = Path(paths.plots_dir)
    for name, mcfg in enabled.items():
        with sr.child(f"classify/{name}", {"model": name}) as msr:
            msr.log_input_tables(inputs, targets=LABEL)
            params = None
            extra: dict[str, Any] = {}
            if cfg.optuna.enabled and name in cfg.optuna.search_spaces:
                log.info("%s: Optuna search, %d trials", name, cfg.optuna.n_trials)
                y_train = train[LABEL].astype(str).to_numpy()
                params, extra = tune(name, mcfg, cfg.optuna, train[cols], y_train, seed, msr)
                msr.log_params({"tuned": True})
            log.info("%s: fitting on %d flows", name, len(train))
            pipe, m, preds = fit_and_score(name, mcfg, params, data, labels, seed)
            used = params if params is not None else {"log1p": mcfg.log1p, **mcfg.params}
            msr.log_params({"model": name, "scale": mcfg.scale, **used})
            if extra:
                m["optuna"] = extra
            png = plots / f"confusion_{name}.png"
            cm = confusion_matrix(y_test, preds["test"], labels=labels)
            plot_confusion(cm, labels, png, f"{name}: test accuracy {m['test']['accuracy']:.3f}")
            write_confusion_csv(y_test, preds["test"], plots / f"confusion_{name}.csv")
            msr.log_metrics(m)
            _curves(msr, pipe)
            msr.log_artifact(png, as_name="confusion.png")  # top level: the compare view shows it
            log.info(
                "%s: validation accuracy %.4f, test accuracy %.4f, test macro F1 %.4f "
                "(fit %.2f s)",
                name, m["validation"]["accuracy"], m["test"]["accuracy"],
                m["test"]["f1_macro"], m["fit_seconds"],
            )  # fmt: skip
        results[name] = m
        fitted[name] = (pipe, preds)
        child_runs[name] = msr
    # Best by VALIDATION accuracy; ties keep the config's order (max returns the first maximum).
    # the monitor votes with class probabilities: a model without them (SVC) is reported, not kept
    eligible = [n for n in results if hasattr(fitted[n][0], "predict_proba")] or list(results)
    best = max(eligible, key=lambda n: results[n]["validation"]["accuracy"])
    pipe, preds = fitted[best]
    write_confusion_csv(y_test, preds["test"], plots / "confusion.csv")
    save_classifier(ClassifierBundle(pipe, labels, cols, best), Path(paths.classifier))
    log.info(
        "best model on validation: %s (validation accuracy %.4f, test accuracy %.4f) saved to %s",
        best, results[best]["validation"]["accuracy"], results[best]["test"]["accuracy"],
        paths.classifier,
    )  # fmt: skip
    summary: dict[str, Any] = {
        "name": best,
        "selected_on": "validation",
        "validation_accuracy": results[best]["validation"]["accuracy"],
        "test_accuracy": results[best]["test"]["accuracy"],
        "test_f1_macro": results[best]["test"]["f1_macro"],
    }
    if "devices" in results[best]:
        summary["devices_accuracy"] = results[best]["devices"]["accuracy"]
    detail = {**results, BEST_KEY: summary}
    (plots / DETAIL_FILE).write_text(json.dumps(detail, indent=2, sort_keys=True) + "\n")
    # The parent run holds the summary; each child run holds its model's full metrics.
    sr.record(compared_metrics(detail), summary={BEST_KEY: summary, "models": len(results)})
    sr.set_tags({"best_model": best})
    sr.log_artifact(plots / DETAIL_FILE, "metrics")
    sr.log_artifact(plots / "confusion.csv", "plots")
    # The saved file, registered from the best model's run (its params and metrics).
    version = log_classifier(
        Path(paths.classifier),
        load_classifier(paths.classifier),  # the file, loaded back: what is registered
        trusted_types(paths.classifier),
        child_runs[best],
        data.validation.head(5),
    )
    if version is not None:
        sr.set_tags({"registered_model": f"iotwatch-classifier/{version}"})
    return detail


def metrics_table(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The model entries of classify.json (skipping ``best_model``), in the method's table order."""
    order = {name: i for i, name in enumerate(ESTIMATORS)}
    rows = [(k, v) for k, v in metrics.items() if k != BEST_KEY and isinstance(v, dict)]
    return sorted(rows, key=lambda kv: order.get(kv[0], len(order)))
