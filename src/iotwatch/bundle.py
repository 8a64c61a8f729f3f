"""The model bundle: everything `iotwatch monitor` needs, as one plain folder (models/bundle/).

Written by the pipeline's last stage (``export``) and by `iotwatch export`; its layout is in
docs/monitor.md. Only formats that cannot run code when loaded: the classifier as skops
(loaded against the classify module's allow-list), the autoencoders' weights and the
classifier's trees as safetensors (read with numpy, see ``iotwatch.arrays``), JSON for the rest.
``manifest.json`` names every file with its SHA-256, the feature schema, the full flow
profile, the open-set bars, package versions, a hash of the training tables and the metrics;
``load_bundle`` refuses (one line, ``InputError``) a bundle that is missing, corrupt, or was
made for another feature schema, flow definition or bundle format than the running code's.

The monitor never imports scikit-learn or torch when the classifier is a tree model (the
compiled trees give the same probabilities, checked at export); other classifiers are loaded
from the skops file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from iotwatch.errors import InputError

if TYPE_CHECKING:
    from iotwatch.context import StageContext
    from iotwatch.flowmeter.config import FlowConfig
    from iotwatch.monitor.autoencoder import Detector
    from iotwatch.monitor.openset import OpenSetRule
    from iotwatch.paths import DatasetConfig, PathsConfig
    from iotwatch.tracking import StageRun

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "iotwatch-bundle/2"  # 2: a device's detector may have several members
READABLE_FORMATS = ("iotwatch-bundle/1", BUNDLE_FORMAT)  # a /1 bundle is one member per type
MANIFEST = "manifest.json"
CLASSIFIER = "classifier.skops"
FOREST = "classifier_forest.safetensors"
PACKAGES = ("numpy", "scikit-learn", "skops", "torch", "pyarrow", "numba")
# The numpy autoencoder must give the anomaly stage's scores (float32 arithmetic either way).
SCORE_RTOL = 1e-4
SERVICES_FILE = "services.json"  # a device type's service profile (iotwatch.anomaly.services)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from iotwatch import __version__

    out = {"iotwatch": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _profile_dict(cfg: FlowConfig) -> dict[str, Any]:
    """The flow profile as conf/flows/*.yaml spells it (local_networks is the dataset's)."""
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.metadata.get("conf", True)
    }


# -- the classifier ----------------------------------------------------------------------------
class SkopsClassifier:
    """The skops-loaded pipeline (any of the six models): ``predict_proba`` on arrays."""

    def __init__(self, model: Any, columns: list[str]) -> None:
        self.model = model
        self.columns = columns
        self.classes = [str(c) for c in model.classes_]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        import pandas as pd

        frame = pd.DataFrame(np.asarray(x, np.float64), columns=self.columns)
        return np.asarray(self.model.predict_proba(frame), np.float64)


# -- the bundle --------------------------------------------------------------------------------
@dataclass
class Bundle:
    """A loaded bundle: the classifier (``predict_proba``/``classes``), one detector per
    modelled device type, the open-set rule, the flow profile and the manifest."""

    path: Path
    manifest: dict[str, Any]
    classifier: Any
    detectors: dict[str, Detector]
    open_set: OpenSetRule
    flow_config: FlowConfig
    feature_columns: list[str]

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.classes)

    @property
    def n_packets(self) -> int:
        return int(self.manifest["features"]["n_packets"])


def _device_key(device: str) -> str:
    from iotwatch.features import metric_key

    return metric_key(device)


def _load_detector(folder: Path, device: str, listed: set[str] | None = None) -> Detector:
    """A bundle's device folder as a numpy detector; ``listed``: the folder's files the
    manifest lists (and ``read_manifest`` checked), which every file it reads must be."""
    from iotwatch.anomaly.members import folder_specs, member_files
    from iotwatch.anomaly.scaling import FeatureScaler
    from iotwatch.anomaly.services import ServiceProfile
    from iotwatch.arrays import read_arrays
    from iotwatch.monitor.autoencoder import Detector

    try:
        meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        thr = json.loads((folder / "threshold.json").read_text(encoding="utf-8"))
        specs = folder_specs(folder, meta)
        if listed is not None:
            unlisted = [n for n in ("model.json", "threshold.json",
                                    *member_files(specs, ["scaler", "weights"]))
                        if n not in listed]  # fmt: skip
            if unlisted:
                raise InputError(f"{folder}: {unlisted[0]} is not in the bundle's manifest")
        parts = [(FeatureScaler.load(folder / s.file("scaler")), read_arrays(folder / s.file("weights"))[0])
                 for s in specs]  # fmt: skip
        det = Detector.from_members(device, parts, specs, meta["hparams"]["output"],
                                    thr["threshold"], thr["fpr_threshold"])  # fmt: skip
        services = folder / SERVICES_FILE
        if services.is_file():  # a bundle from before service profiles has none
            if listed is not None and SERVICES_FILE not in listed:
                raise InputError(f"{folder}: {SERVICES_FILE} is not in the bundle's manifest")
            det.profile = ServiceProfile.from_dict(
                json.loads(services.read_text(encoding="utf-8")), str(services)
            )
        if not math.isfinite(det.threshold):
            raise InputError(f"{folder}/threshold.json: threshold is not a finite number")
        return det
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{folder}: not a bundle device model ({exc})") from None


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The bundle's manifest, checked against the running code (one-line errors)."""
    from iotwatch.flowmeter.schema import feature_columns

    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise InputError(f"{path}: no model bundle here (write one with `iotwatch export`)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{mpath}: missing: not a model bundle") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{mpath}: cannot read the manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise InputError(
            f"{mpath}: bundle format {got!r}, this iotwatch reads {' and '.join(READABLE_FORMATS)} "
            f"(export the bundle again with this version)"
        )
    try:
        n = int(manifest["features"]["n_packets"])
        cols = [str(c) for c in manifest["features"]["columns"]]
        files = dict(manifest["files"])
        for key in ("classifier", "devices", "open_set", "flow_profile", "local_networks"):
            if key not in manifest:
                raise KeyError(key)
        if "classes" not in manifest["classifier"]:
            raise KeyError("classifier.classes")
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{mpath}: manifest lacks {exc} (corrupt bundle?)") from None
    if cols != feature_columns(n):
        raise InputError(
            f"{mpath}: feature columns differ from this iotwatch's first-{n} features "
            f"(bundle made by another version: export it again)"
        )
    for rel, digest in sorted(files.items()):
        f = path / rel
        if not f.is_file():
            raise InputError(f"{f}: missing from the bundle (listed in {MANIFEST})")
        if sha256(f) != digest:
            raise InputError(f"{f}: does not match its SHA-256 in {MANIFEST} (corrupt bundle)")
    return manifest


def load_bundle(path: Path | str, *, use_forest: bool = True) -> Bundle:
    """Load and check a bundle (see the module docstring). ``use_forest=False`` loads the
    classifier from skops even when compiled trees are there (the export's own check)."""
    from iotwatch.config import from_dict
    from iotwatch.errors import ConfigError
    from iotwatch.flowmeter.config import FlowConfig
    from iotwatch.monitor.openset import OpenSetRule

    path = Path(path)
    manifest = read_manifest(path)
    mpath = path / MANIFEST
    try:
        profile = from_dict(FlowConfig, manifest["flow_profile"], f"{mpath}: flow_profile",
                            strict=True)  # fmt: skip
        flow_cfg = dataclasses.replace(profile, local_networks=list(manifest["local_networks"]))
    except (ConfigError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{mpath}: its flow profile does not fit this iotwatch ({exc}); export it again"
        ) from None
    cols = [str(c) for c in manifest["features"]["columns"]]
    cls_info = manifest["classifier"]
    classifier: Any
    if use_forest and cls_info.get("forest"):
        from iotwatch.arrays import read_arrays
        from iotwatch.monitor.forest import Forest

        arrays, meta = read_arrays(path / cls_info["forest"])
        try:
            classifier = Forest.from_arrays(arrays, meta)
        except (KeyError, ValueError) as exc:
            raise InputError(f"{path / cls_info['forest']}: not compiled trees ({exc})") from None
    else:
        classifier = _load_skops(path / cls_info["file"], manifest, cols)
    if [str(c) for c in classifier.classes] != [str(c) for c in cls_info["classes"]]:
        raise InputError(f"{mpath}: the classifier's classes differ from the manifest's")
    detectors = {}
    files = set(manifest["files"])
    for device, info in sorted(manifest["devices"].items()):
        prefix = f"{info['folder']}/"
        listed = {f[len(prefix) :] for f in files if f.startswith(prefix)}
        det = _load_detector(path / info["folder"], device, listed)
        if det.columns != cols:
            raise InputError(
                f"{path / info['folder']}: its feature columns differ from the bundle's"
            )
        detectors[device] = det
    try:
        rule = OpenSetRule.from_dict(manifest["open_set"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{mpath}: bad open_set ({exc})") from None
    return Bundle(path, manifest, classifier, detectors, rule, flow_cfg, cols)


def _load_skops(file: Path, manifest: dict[str, Any], cols: list[str]) -> SkopsClassifier:
    from importlib.metadata import version

    from iotwatch.classify import load_classifier

    built = manifest.get("packages", {}).get("scikit-learn")
    running = version("scikit-learn")
    if built and built.split(".")[:2] != running.split(".")[:2]:
        raise InputError(
            f"{file}: made with scikit-learn {built}, this is {running}; export the bundle again"
        )
    cb = load_classifier(file)
    if cb.feature_columns != cols:
        raise InputError(f"{file}: its feature columns differ from the bundle's")
    return SkopsClassifier(cb.model, cols)


# -- writing a bundle --------------------------------------------------------------------------
@dataclass
class ExportInputs:
    """What a bundle is made of: the pipeline's model files, the validation table that
    calibrates the open-set bars, the training tables hashed into the manifest, the metrics."""

    classifier: Path
    anomaly_models: Path
    features_validation: Path
    training_tables: list[Path]
    metrics_dir: Path | None
    flow_config: FlowConfig
    local_networks: list[str]


def _unmodelled_reasons(
    models: Path, classes: list[str], devices: dict[str, Any]
) -> dict[str, str]:
    """Why each recognised type has no behaviour model (the step-2 stage's ``skipped``)."""
    out = {}
    for t in classes:
        if t in devices:
            continue
        reason = "no behaviour model (not in dataset.device_types)"
        f = Path(models) / _device_key(t) / "metrics.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            reason = json.loads(f.read_text(encoding="utf-8"))["skipped"]["reason"]
        out[t] = f"not modelled: {reason}"
    return out


def _alert_budget(models: Path, devices: dict[str, Any]) -> float | None:
    """False alerts per device-day the detectors' thresholds were set for (None: no budget)."""
    budgets = set()
    for t in devices:
        try:
            m = json.loads((Path(models) / _device_key(t) / "metrics.json").read_text("utf-8"))
            if m["detector"]["rule"] == "budget":
                budgets.add(m["detector"]["budget_fpr"] * m["detector"]["flows_per_device_day"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return round(max(budgets), 6) if budgets else None


def _metrics(metrics_dir: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if metrics_dir is None:
        return out
    for name in ("classify", "anomaly"):
        f = Path(metrics_dir) / f"{name}.json"
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if name == "classify":
            out["classify"] = data.get("best_model", {})
        else:
            keep = ("f1", "recall", "precision", "fpr", "auc", "threshold")
            out["anomaly"] = {
                k: {m: v.get(m) for m in keep}
                for k, v in data.items() if isinstance(v, dict) and "f1" in v
            }  # fmt: skip
    return out


def _convert_device(src: Path, dst: Path) -> dict[str, Any]:
    """One anomaly model folder -> the bundle's (weights as safetensors); its threshold info."""
    import torch

    from iotwatch.anomaly.members import folder_specs
    from iotwatch.arrays import write_arrays

    try:
        meta = json.loads((src / "model.json").read_text(encoding="utf-8"))
        thr = json.loads((src / "threshold.json").read_text(encoding="utf-8"))
        specs = folder_specs(src, meta)
        states = [torch.load(src / s.file("state_dict"), map_location="cpu", weights_only=True)
                  for s in specs]  # fmt: skip
    except FileNotFoundError as exc:
        raise InputError(f"{src}: incomplete anomaly model ({exc.filename} missing)") from None
    except InputError:
        raise
    except Exception as exc:  # torch raises several types for a bad file
        raise InputError(f"{src}: cannot read the anomaly model ({exc})") from None
    dst.mkdir(parents=True, exist_ok=True)
    for spec, state in zip(specs, states, strict=True):
        weights = spec.file("weights")
        if (src / weights).is_file():  # the stage's own file: the bundle and the registry hold it
            shutil.copyfile(src / weights, dst / weights)
        else:  # a folder from before the stage wrote it
            write_arrays({k: v.detach().cpu().numpy() for k, v in state.items()}, dst / weights,
                         {"format": "iotwatch-autoencoder/1"})  # fmt: skip
        shutil.copyfile(src / spec.file("scaler"), dst / spec.file("scaler"))
    for name in ("threshold.json", "model.json"):
        shutil.copyfile(src / name, dst / name)
    if (src / SERVICES_FILE).is_file():
        shutil.copyfile(src / SERVICES_FILE, dst / SERVICES_FILE)
    return {"threshold": float(thr["threshold"]), "fpr_threshold": float(thr["fpr_threshold"]),
            "rule": thr.get("rule"), "services": (src / SERVICES_FILE).is_file(),
            "output": meta["hparams"]["output"],
            "hidden": int(meta["hparams"]["hidden"]),
            "members": [s.order for s in specs]}  # fmt: skip


def _check_scores(src: Path, det: Detector, x: np.ndarray) -> float:
    """Largest relative difference between the numpy detector and the torch model."""
    from iotwatch.anomaly.stage import load_device

    ref = load_device(src).score(x)
    mine = det.score(x)
    return float(np.max(np.abs(mine - ref) / np.maximum(np.abs(ref), 1e-12))) if len(x) else 0.0


def _calibration_pool(tables: list[Path], columns: list[str], classes: list[str]) -> Any:
    """The labelled flows of the training tables (each file once) the confidence bars are
    calibrated on, or None when they are missing or lack a column (then the validation flows
    alone calibrate them)."""
    import pandas as pd

    from iotwatch.features import LABEL, read_table

    need = [*columns, LABEL, "device_id", "capture_time"]
    frames = []
    for path in dict.fromkeys(Path(t).resolve() for t in tables):
        if not path.is_file():
            log.warning("export: %s missing: open-set confidence from validation only", path)
            return None
        t = read_table(path, "training table")
        if any(c not in t.columns for c in need):
            log.warning("export: %s lacks %s: open-set confidence from validation only", path,
                        [c for c in need if c not in t.columns])  # fmt: skip
            return None
        frames.append(t[need])
    pool = pd.concat(frames, ignore_index=True) if frames else None
    if pool is not None and not pool[LABEL].astype(str).isin(classes).all():
        log.warning("export: the training tables have types the classifier does not know: "
                    "open-set confidence from validation only")  # fmt: skip
        return None
    return pool


def write_bundle(inputs: ExportInputs, out: Path | str) -> dict[str, Any]:
    """Write the bundle folder ``out`` (a temporary folder renamed into place: an existing
    bundle is replaced only by a complete one). Returns the manifest."""
    from iotwatch.arrays import write_arrays
    from iotwatch.classify import load_classifier
    from iotwatch.features import LABEL, read_table
    from iotwatch.flowmeter.schema import feature_columns
    from iotwatch.monitor.forest import compile_pipeline
    from iotwatch.monitor.openset import calibrate, out_of_fold_probs

    out = Path(out)
    n = inputs.flow_config.n_packets
    cb = load_classifier(inputs.classifier)
    if cb.feature_columns != feature_columns(n):
        raise InputError(
            f"{inputs.classifier}: its feature columns are not the flow profile's first-{n} "
            f"features (features.n_packets vs flows.n_packets?)"
        )
    val = read_table(inputs.features_validation, "validation feature table")
    anomaly_root = Path(inputs.anomaly_models)
    folders = sorted(p for p in anomaly_root.iterdir() if (p / "threshold.json").is_file()) \
        if anomaly_root.is_dir() else []  # fmt: skip
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copyfile(inputs.classifier, tmp / CLASSIFIER)
        devices: dict[str, Any] = {}
        checks: dict[str, float] = {}
        x_val = val[cb.feature_columns].to_numpy(np.float64)
        for src in folders:
            thr = json.loads((src / "threshold.json").read_text(encoding="utf-8"))
            device = str(thr.get("device_type", src.name))
            if device not in cb.labels:
                log.warning("export: %s models type %s the classifier does not know: left out",
                            src, device)  # fmt: skip
                continue
            rel = f"anomaly/{_device_key(device)}"
            info = _convert_device(src, tmp / rel)
            det = _load_detector(tmp / rel, device)
            checks[device] = _check_scores(src, det, x_val)
            if checks[device] > SCORE_RTOL:
                raise InputError(f"{src}: numpy scores differ from torch's by {checks[device]:.2g}")
            devices[device] = {"folder": rel, **info}
        # The classifier as compiled trees when it is a tree model, checked equal to skops.
        if not hasattr(cb.model, "predict_proba"):
            raise InputError(f"{inputs.classifier}: {cb.name} gives no class probabilities, "
                             "which the monitor's vote needs (run the classify stage again)")  # fmt: skip
        probs = np.asarray(cb.model.predict_proba(val[cb.feature_columns]), np.float64)
        classes = [str(c) for c in cb.model.classes_]
        forest = compile_pipeline(cb.model)
        forest_file = None
        if forest is not None:
            diff = float(np.max(np.abs(forest.predict_proba(x_val) - probs))) if len(x_val) else 0.0
            if diff <= 1e-9 and forest.classes == classes:
                arrays, meta = forest.to_arrays()
                write_arrays(arrays, tmp / FOREST, meta)
                forest_file = FOREST
            else:
                log.warning("export: compiled trees differ from skops (%.3g): not used", diff)
        # Open-set bars: fit from the known devices' validation flows, confidence from the
        # out-of-fold probabilities of the training tables (train + validation).
        accepts = np.ones_like(probs, dtype=bool)
        for j, t in enumerate(classes):
            if t in devices:
                det = _load_detector(tmp / devices[t]["folder"], t)
                accepts[:, j] = det.score(x_val) <= det.threshold
        pool = _calibration_pool(inputs.training_tables, cb.feature_columns, classes)
        oof = None if pool is None else out_of_fold_probs(
            cb.model, pool[cb.feature_columns], pool[LABEL].astype(str).to_numpy(),
            pool["device_id"].astype(str).to_numpy(), pool["capture_time"].to_numpy(np.float64),
            classes,
        )  # fmt: skip
        rule, stats = calibrate(
            probs, accepts, classes, val[LABEL].astype(str).to_numpy(),
            val["device_id"].astype(str).to_numpy(), val["capture_time"].to_numpy(np.float64),
            pool_probs=oof, pool_labels=None if pool is None else pool[LABEL].astype(str).to_numpy(),
        )  # fmt: skip
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "packages": _versions(),
            "features": {"n_packets": n, "columns": list(cb.feature_columns)},
            "flow_profile": _profile_dict(inputs.flow_config),
            "local_networks": list(inputs.local_networks),
            "classifier": {
                "file": CLASSIFIER,
                "name": cb.name,
                "classes": classes,
                "forest": forest_file,
            },  # fmt: skip
            "devices": devices,
            "unmodelled_types": [t for t in classes if t not in devices],
            "unmodelled_reasons": _unmodelled_reasons(inputs.anomaly_models, classes, devices),
            "alert_budget": _alert_budget(inputs.anomaly_models, devices),
            "open_set": {**rule.to_dict(), "calibration": stats},
            "training_data": _training_hash(inputs.training_tables),
            "metrics": _metrics(inputs.metrics_dir),
            "checks": {"score_max_rel_diff": checks},
        }
        manifest["files"] = {
            p.relative_to(tmp).as_posix(): sha256(p)
            for p in sorted(tmp.rglob("*")) if p.is_file()
        }  # fmt: skip
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                    encoding="utf-8")  # fmt: skip
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _training_hash(tables: list[Path]) -> dict[str, Any]:
    files = {Path(p).name: sha256(Path(p)) for p in tables if Path(p).is_file()}
    whole = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode())
    return {"sha256": whole.hexdigest(), "files": files}


# -- the pipeline stage and the command --------------------------------------------------------
def pipeline_inputs(paths: PathsConfig, dataset: DatasetConfig, cfg: FlowConfig) -> ExportInputs:
    """The pipeline's outputs a bundle is made of (params.yaml's paths)."""
    return ExportInputs(
        classifier=Path(paths.classifier), anomaly_models=Path(paths.anomaly_models),
        features_validation=Path(paths.features_validation),
        training_tables=[Path(paths.features_train), Path(paths.features_validation)],
        metrics_dir=Path(paths.metrics_dir), flow_config=cfg,
        local_networks=list(dataset.local_networks),
    )  # fmt: skip


def run(cfg: FlowConfig, ctx: StageContext, sr: StageRun) -> dict[str, Any]:
    """Export stage: the classifier, the anomaly models and their calibration -> the bundle
    (``<paths.models_dir>/bundle``); records the open-set bars and the bundle's hash."""
    paths = ctx.paths
    out = Path(paths.models_dir) / "bundle"
    manifest = write_bundle(pipeline_inputs(paths, ctx.dataset, cfg), out)
    log.info("export: bundle written to %s (%d device models, classifier %s%s)", out,
             len(manifest["devices"]), manifest["classifier"]["name"],
             ", compiled trees" if manifest["classifier"]["forest"] else "")  # fmt: skip
    metrics = {
        "devices": len(manifest["devices"]),
        "open_set": {k: v for k, v in manifest["open_set"].items() if k != "calibration"},
        "known_right_validation": manifest["open_set"]["calibration"]["known_right"],
        "manifest_sha256": sha256(out / MANIFEST),
    }
    sr.record(metrics)
    for f in sorted(out.rglob("*")):  # the bundle as it is on disk (issue 11 registers it)
        if f.is_file():
            rel = f.relative_to(out).parent.as_posix()
            sr.log_artifact(f, "bundle" if rel == "." else f"bundle/{rel}")
    return metrics


def main(argv: list[str]) -> int:
    """`iotwatch export`: write a bundle from the pipeline's outputs (paths from params.yaml)."""
    from iotwatch.config import read_params
    from iotwatch.pipeline.stages import params_from_dict

    ap = argparse.ArgumentParser(
        prog="iotwatch export",
        description="Write the model bundle `iotwatch monitor` loads (docs/monitor.md).",
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=None, help="default: <paths.models_dir>/bundle")
    args = ap.parse_args(argv)
    params = params_from_dict(read_params(args.params), str(args.params))
    from iotwatch.flowmeter.config import FlowConfig

    cfg = params.typed("flows", FlowConfig)
    paths = params.paths
    out = args.out or Path(paths.models_dir) / "bundle"
    manifest = write_bundle(pipeline_inputs(paths, params.dataset, cfg), out)
    cal = manifest["open_set"]["calibration"]
    print(f"export: {out}: classifier {manifest['classifier']['name']}, "
          f"{len(manifest['devices'])} device models, open-set bars "
          f"{manifest['open_set']['confidence']} (fit {manifest['open_set']['fit']:.3f}), "
          f"known windows placed right on validation: {cal['known_right']}")  # fmt: skip
    return 0
