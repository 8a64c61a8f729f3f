"""MLflow models and the model registry: the files the stages saved, logged as MLflow models.

The classify stage saves ``models/classifier.skops`` and the anomaly stage one folder per device
(``state_dict.pt`` weights only, ``weights.safetensors``, ``scaler.json``, ``threshold.json``,
``model.json``, and with ``anomaly.order: both`` the second member's ``sorted.*``); the monitor
bundle holds those same files (but the torch ``state_dict.pt``). Here they become MLflow models, registered by name, without
pickle anywhere:

* ``iotwatch-classifier``: the sklearn flavour with skops serialization, loaded back from the
  saved file (so the flavour's ``model.skops`` is that model) and the saved file itself under
  ``extra_files/`` (byte for byte the bundle's), with a signature and an input example.
* ``iotwatch-anomaly-<device>``: a pyfunc "model from code" (``registry_anomaly.py``, no
  pickled object) whose one artifact is the device's saved folder, copied as it is; it loads
  with ``load_device`` (torch ``weights_only``) and predicts ``score`` and ``is_attack``.

This module imports neither stage's code (each stage's DVC deps stay its own): the classify
stage hands the loaded classifier, the anomaly stage only the folder.

Each version carries the sha256 of the files it holds as tags, so a bundle and a registered
version can be compared without downloading the model.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

if TYPE_CHECKING:
    import pandas as pd

    from iotwatch.tracking import StageRun

log = logging.getLogger(__name__)

CLASSIFIER_MODEL = "iotwatch-classifier"
ANOMALY_PREFIX = "iotwatch-anomaly-"
# The models-from-code file of the autoencoders (beside this module).
ANOMALY_CODE = Path(__file__).with_name("registry_anomaly.py")
DESCRIPTIONS = {
    CLASSIFIER_MODEL: "Device-type classifier chosen on validation accuracy by the classify "
    "stage (sklearn Pipeline, skops). extra_files/classifier.skops is the stage's file, the one "
    "in the monitor bundle: load it with iotwatch.classify.load_classifier.",
    ANOMALY_PREFIX: "Sparse autoencoder(s) of one device type (anomaly stage): artifacts/detector "
    "holds each member's state_dict.pt (weights only), weights.safetensors and scaler.json "
    "(the second member's as sorted.*), threshold.json and model.json, the files in the monitor "
    "bundle. predict() returns score (one member: reconstruction MSE; two: geometric mean of "
    "each one's MSE over its typical legitimate MSE) and is_attack (score > threshold).",
}


def anomaly_model_name(device: str) -> str:
    """The registered name of a device type's autoencoder."""
    from iotwatch.features import metric_key

    return ANOMALY_PREFIX + metric_key(device)


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pins(*names: str) -> list[str]:
    """Pinned requirements of the installed packages (given, MLflow need not infer them: its
    inference loads the model in a subprocess, seconds per model)."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return out


def _in_run_experiment(run_id: str) -> None:
    """Make the run's experiment MLflow's active one: a logged model (MLflow 3) is created in
    the active experiment, not in its source run's, unless told."""
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)


def _describe(name: str, description: str) -> None:
    client = mlflow.MlflowClient()
    if (client.get_registered_model(name).description or "") != description:
        client.update_registered_model(name, description=description)


def _tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def log_classifier(
    path: Path, bundle: Any, trusted: list[str], sr: StageRun, input_example: pd.DataFrame
) -> str | None:
    """Log the saved classifier as an MLflow sklearn model in run ``sr`` and register it as
    ``iotwatch-classifier``; returns the new version (None without tracking).

    ``bundle`` is the file loaded back (``classify.load_classifier``: model, labels,
    feature_columns, name) and ``trusted`` its skops types (``classify.trusted_types``); the
    caller loads them so that this module imports neither stage (DVC deps stay per stage)."""
    if sr.run_id is None:
        return None
    import mlflow.sklearn
    from mlflow.models import infer_signature

    path = Path(path)
    # doubles: integer columns could not hold a missing value (MLflow upcasts ints at predict)
    x = input_example[bundle.feature_columns].astype("float64")
    signature = infer_signature(x, bundle.model.predict(x))
    digest = sha256(path)
    _in_run_experiment(sr.run_id)
    info = mlflow.sklearn.log_model(
        bundle.model,
        name="classifier",
        run_id=sr.run_id,
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=trusted,
        signature=signature,
        input_example=x,
        extra_files=[str(path)],
        pip_requirements=_pins("scikit-learn", "skops", "numpy", "pandas", "scipy"),
        metadata={"model": bundle.name, "labels": bundle.labels, "bundle_file": path.name},
        registered_model_name=CLASSIFIER_MODEL,
    )
    version = str(info.registered_model_version)
    _describe(CLASSIFIER_MODEL, DESCRIPTIONS[CLASSIFIER_MODEL])
    _tag_version(
        CLASSIFIER_MODEL,
        version,
        {"model": bundle.name, "sha256": digest, "file": f"extra_files/{path.name}"},
    )
    log.info(
        "registered %s version %s (%s, sha256 %s)",
        CLASSIFIER_MODEL,
        version,
        bundle.name,
        digest[:12],
    )
    return version


def log_anomaly_model(
    folder: Path, device: str, sr: StageRun, input_example: pd.DataFrame
) -> str | None:
    """Log a device's saved detector folder as an MLflow pyfunc model (from code, no pickle) in
    run ``sr`` and register it as ``iotwatch-anomaly-<device>``; returns the new version."""
    if sr.run_id is None:
        return None
    import pandas as pd

    folder = Path(folder)
    x = pd.DataFrame(input_example).astype("float64")
    name = anomaly_model_name(device)
    _in_run_experiment(sr.run_id)
    with tempfile.TemporaryDirectory(prefix="iotwatch-detector-") as tmp:
        # MLflow names a folder artifact after the folder: a copy named "detector" gives every
        # device's model the same layout (artifacts/detector/...), files unchanged.
        copy = Path(tmp) / "detector"
        shutil.copytree(folder, copy)
        info = _log_detector(name, copy, sr.run_id, device, x)
    version = str(info.registered_model_version)
    _describe(name, DESCRIPTIONS[ANOMALY_PREFIX])
    files = sorted(p for p in folder.iterdir() if p.is_file())
    _tag_version(
        name,
        version,
        {"device_type": device, **{f"sha256.{p.name}": sha256(p) for p in files}},
    )
    log.info("registered %s version %s", name, version)
    return version


def _log_detector(name: str, detector: Path, run_id: str, device: str, x: pd.DataFrame) -> Any:
    from mlflow.models import Model, ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema

    # predict() returns these two columns whatever the device (registry_anomaly.py)
    outputs = Schema([ColSpec("double", "score"), ColSpec("boolean", "is_attack")])

    return Model.log(
        artifact_path=None,
        name="autoencoder",
        flavor=mlflow.pyfunc,
        flavor_name="pyfunc.ModelFromCode",
        run_id=run_id,
        python_model=str(ANOMALY_CODE),
        artifacts={"detector": str(detector)},
        signature=ModelSignature(inputs=infer_signature(x).inputs, outputs=outputs),
        input_example=x,
        pip_requirements=_pins("iotwatch", "torch", "pytorch-lightning", "numpy", "pandas"),
        metadata={"device_type": device},
        registered_model_name=name,
    )
