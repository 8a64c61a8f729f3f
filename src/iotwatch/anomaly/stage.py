"""Anomaly stage: one sparse autoencoder per device type, thresholded on validation.

For each device type (all, or ``devices`` / ``device``): scale with a scaler fitted on that
device's legitimate train flows, train the autoencoder (nested MLflow run ``anomaly/<device>``,
per-epoch losses in it), score validation and test by reconstruction error, pick two thresholds
on validation (best F1, the headline; and the ``target_fpr`` quantile of legitimate scores, the
``fpr_rule``), report test metrics for both plus the baselines, save the model files and plots.
A flow is an attack when its score is > the threshold (see ``threshold``).

Files per device D (metric_key(D) as folder name):
``<paths.anomaly_models>/D/{state_dict.pt, weights.safetensors, scaler.json, threshold.json,
model.json, metrics.json}`` (with ``anomaly.order: both`` the second member's files too, named
``sorted.state_dict.pt`` etc.: ``iotwatch.anomaly.members``)
(+ ``roc.csv``, ``pr.csv``: the autoencoder's test curves) and
``<paths.anomaly_plots>/D/{roc.png, pr.png, errors.png}``. The data is ``<paths.anomaly_data>/D.parquet``
(written by the features stage); tuned parameters come from ``<paths.anomaly_tuned>/D.json``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from iotwatch.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from iotwatch.anomaly.data import DeviceData
    from iotwatch.anomaly.members import MemberSpec
    from iotwatch.anomaly.model import SparseAutoencoder, TrainSettings
    from iotwatch.anomaly.scaling import FeatureScaler
    from iotwatch.anomaly.services import ServiceProfile
    from iotwatch.context import StageContext
    from iotwatch.tracking import StageRun

log = logging.getLogger(__name__)

SKIPPED = "skipped"  # key of anomaly.json listing the devices that were not modelled
THRESHOLD_FORMAT = "iotwatch-anomaly-threshold/1"
SERVICES_FILE = "services.json"  # a type's service profile (absent: none)


@dataclass
class BaselineConfig:
    """One baseline detector: whether to run it and its constructor parameters."""

    enabled: bool = True
    params: dict[str, Any] = field(default_factory=dict)


def _default_baselines() -> dict[str, BaselineConfig]:
    # Same as conf/anomaly/default.yaml (a test checks they agree).
    return {
        "isolation_forest": BaselineConfig(True, {"n_estimators": 100}),
        "one_class_svm": BaselineConfig(True, {"nu": 0.05, "gamma": "scale", "max_train": 5000}),
        "pca": BaselineConfig(True, {"n_components": 0.95}),
        "knn": BaselineConfig(True, {"n_neighbors": 5}),
    }


@dataclass
class AnomalyConfig:
    """conf/anomaly/*.yaml. The defaults here equal conf/anomaly/default.yaml (tested)."""

    # The autoencoder.
    hidden: int = 500
    lr: float = 0.01
    sparsity_target: float = 0.1
    sparsity_weight: float = 0.2
    output: Literal["linear", "sigmoid"] = "linear"
    # Training.
    max_epochs: int = 200
    batch_size: int = 64
    patience: int = 20
    min_delta: float = 0.0
    accelerator: str = "auto"
    enable_progress_bar: bool = False
    threads: int = 1  # torch CPU threads while training (0 = torch's default)
    # Early stopping watches a held-out share of the legitimate TRAIN flows, so the validation
    # flows that set the threshold were never used to fit or stop the model (0 = watch the
    # legitimate validation flows, as the method did: optimistic thresholds, see docs)
    stop_share: float = 0.15
    # Features and data (which attack flows each device type gets: conf/features/).
    log1p: bool = True
    # positional (the method's features) | sorted (each size/gap group sorted, largest first:
    # iotwatch.anomaly.scaling) | best: both trained, sorted kept only when its validation AUC is
    # the higher one in at least order_confidence of paired bootstrap resamples of validation |
    # both: both trained and kept, score = geometric mean of their normalised errors (members)
    order: Literal["positional", "sorted", "best", "both"] = "both"
    order_confidence: float = 0.95
    order_resamples: int = 1000
    device: str | None = None  # one device type (the DVC stage's item); None = dataset.device_types
    tuned: bool = True  # use paths.anomaly_tuned/<type>.json (the tune stage's best parameters)
    min_train_flows: int = 50
    # Thresholds.
    threshold_placement: Literal["smallest", "midpoint"] = "smallest"
    target_fpr: float = 0.01
    # The detector the monitor runs: a service profile beside the autoencoder (flows outside
    # it are alerts of their own kind) and its threshold rule: ``budget`` holds legitimate
    # validation flows to alert_budget false alerts per device-day, ``best_f1`` is the method's
    services: bool = True
    spread_ports: int = 8
    threshold_rule: Literal["budget", "best_f1"] = "budget"
    alert_budget: float = 1.0
    # Outputs.
    plots: bool = True
    baselines: dict[str, BaselineConfig] = field(default_factory=_default_baselines)

    def __post_init__(self) -> None:
        from iotwatch.anomaly.baselines import BASELINES

        for name, low in (("hidden", 1), ("max_epochs", 1), ("batch_size", 1), ("patience", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if not 0.0 <= self.stop_share < 0.5:
            raise ValueError(f"stop_share must be in [0, 0.5), got {self.stop_share}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.sparsity_target < 1.0:
            raise ValueError(f"sparsity_target must be in (0, 1), got {self.sparsity_target}")
        if self.sparsity_weight < 0:
            raise ValueError(f"sparsity_weight must be >= 0, got {self.sparsity_weight}")
        if not 0.0 <= self.target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in [0, 1), got {self.target_fpr}")
        from iotwatch.anomaly.scaling import ORDERS

        if self.order not in (*ORDERS, "best", "both"):
            raise ValueError(f"order must be positional, sorted, best or both, got {self.order!r}")
        if not 0.0 <= self.order_confidence <= 1.0:
            raise ValueError(f"order_confidence must be in [0, 1], got {self.order_confidence}")
        if self.order_resamples < 1:
            raise ValueError(f"order_resamples must be >= 1, got {self.order_resamples}")
        if self.alert_budget <= 0:
            raise ValueError(f"alert_budget must be > 0, got {self.alert_budget}")
        if self.spread_ports < 2:
            raise ValueError(f"spread_ports must be >= 2, got {self.spread_ports}")
        if self.min_train_flows < 2:
            raise ValueError(f"min_train_flows must be >= 2, got {self.min_train_flows}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"baselines: unknown {unknown}; known: {list(BASELINES)}")


def model_hparams(cfg: AnomalyConfig, n_features: int) -> dict[str, Any]:
    """The autoencoder's constructor arguments (``SparseAutoencoder(**hparams)``)."""
    return {
        "n_features": n_features,
        "hidden": cfg.hidden,
        "lr": cfg.lr,
        "sparsity_target": cfg.sparsity_target,
        "sparsity_weight": cfg.sparsity_weight,
        "output": cfg.output,
    }


def train_settings(cfg: AnomalyConfig, max_epochs: int | None = None) -> TrainSettings:
    """How to train the autoencoder (``max_epochs`` overrides, e.g. the tune stage's)."""
    from iotwatch.anomaly.model import TrainSettings

    return TrainSettings(
        max_epochs=cfg.max_epochs if max_epochs is None else max_epochs,
        batch_size=cfg.batch_size,
        patience=cfg.patience,
        min_delta=cfg.min_delta,
        accelerator=cfg.accelerator,
        enable_progress_bar=cfg.enable_progress_bar,
        threads=cfg.threads,
    )


def training_sets(
    cfg: AnomalyConfig, x_train: np.ndarray, x_val: np.ndarray, val_attack: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(flows the autoencoder is fitted on, legitimate flows early stopping watches).

    ``stop_share`` > 0: a seeded random share of the (scaled) legitimate train flows is held out
    for early stopping and the rest is fitted, so the validation flows stay unseen by training
    and their scores are what unseen legitimate flows score (the threshold sits on them). With
    ``stop_share`` 0 early stopping watches the legitimate validation flows (the method): the
    best epoch is then the one that fits those very flows best, their scores come out low and
    the threshold with them (measured: default home, motion sensor, test FPR 0.017-0.020 at
    stop_share 0 against 0.0068 at 0.15, same recall)."""
    import numpy as np

    if cfg.stop_share <= 0:
        return x_train, x_val[~val_attack]
    n = len(x_train)
    k = min(max(1, round(n * cfg.stop_share)), n - 1)
    order = np.random.default_rng([seed, n]).permutation(n)
    stop = np.sort(order[:k])
    keep = np.sort(order[k:])
    return x_train[keep], x_train[stop]


def _thresholds(
    val_scores: np.ndarray, val_attack: np.ndarray, target_fpr: float, placement: str
) -> tuple[float, float, str]:
    """(best-F1 threshold, FPR threshold, how the first was chosen)."""
    from iotwatch.anomaly.threshold import best_f1_threshold, fpr_threshold

    thr_fpr = fpr_threshold(val_scores[~val_attack], target_fpr)
    if val_attack.any():
        how = "best_f1" if placement == "smallest" else f"best_f1 ({placement})"
        return best_f1_threshold(val_scores, val_attack, placement), thr_fpr, how
    return thr_fpr, thr_fpr, "fpr (no attack flows in validation)"


def _both_rules(
    d: DeviceData,
    val_scores: np.ndarray,
    test_scores: np.ndarray,
    target_fpr: float,
    placement: str = "smallest",
) -> dict[str, Any]:
    from iotwatch.anomaly.threshold import evaluate

    thr, thr_fpr, how = _thresholds(val_scores, d.validation_attack, target_fpr, placement)
    m = evaluate(test_scores, d.test_attack, thr, d.test_attack_type)
    m["threshold_rule"] = how
    # the same figures on validation, where the threshold was chosen (optimistic by design)
    m["validation"] = evaluate(val_scores, d.validation_attack, thr, d.validation_attack_type)
    m["fpr_rule"] = evaluate(test_scores, d.test_attack, thr_fpr, d.test_attack_type)
    m["fpr_rule"]["target_fpr"] = target_fpr
    return m


OUTSIDE = 1e300  # the detector's score of a flow outside its type's service profile


def detector_scores(ae: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The detector's score: the autoencoder's inside the service profile, ``OUTSIDE`` out."""
    import numpy as np

    return np.where(inside, ae, OUTSIDE)


def budget_fpr(cfg: AnomalyConfig, d: DeviceData) -> float:
    """The false-alarm rate that spends ``alert_budget`` alerts per device-day on this type's
    legitimate traffic (``target_fpr`` when its flows per device-day are unknown)."""
    if not d.flows_per_device_day:
        return cfg.target_fpr
    return min(cfg.alert_budget / d.flows_per_device_day, 0.5)


def evaluate_detector(
    cfg: AnomalyConfig,
    d: DeviceData,
    val_s: np.ndarray,
    test_s: np.ndarray,
    profile: ServiceProfile | None,
    method: float,
) -> dict[str, Any]:
    """The full detector on the same splits: service profile (when on) and the threshold of
    ``cfg.threshold_rule``, chosen on validation; both rules' test figures beside it.
    ``method``: the method's threshold on the autoencoder's scores (``_thresholds``)."""
    import numpy as np

    from iotwatch.anomaly.threshold import best_f1_threshold, evaluate, fpr_threshold

    def inside(svc: np.ndarray | None, n: int) -> np.ndarray:
        return np.ones(n, bool) if profile is None or svc is None else profile.contains(svc)

    in_val = inside(d.validation_service, len(val_s))
    in_test = inside(d.test_service, len(test_s))
    val_d, test_d = detector_scores(val_s, in_val), detector_scores(test_s, in_test)
    legit_in = val_s[~d.validation_attack & in_val]
    target = budget_fpr(cfg, d)
    budget = fpr_threshold(legit_in if len(legit_in) else val_s[~d.validation_attack], target)
    rules = {"budget": budget}
    if d.validation_attack.any():
        rules["best_f1"] = best_f1_threshold(val_d, d.validation_attack, cfg.threshold_placement)
        # a budget caps false alerts: it never lowers the method's threshold (best F1 on the
        # autoencoder's scores; the monitor's vote accepts a flow below the threshold)
        rules["budget"] = max(budget, method)
    rule = cfg.threshold_rule if cfg.threshold_rule in rules else "budget"
    thr = rules[rule]
    out = evaluate(test_d, d.test_attack, thr, d.test_attack_type)
    out["rule"] = rule
    out["services"] = profile is not None
    out["budget_fpr"] = target
    out["flows_per_device_day"] = d.flows_per_device_day
    out["validation"] = evaluate(val_d, d.validation_attack, thr, d.validation_attack_type)
    out["rules"] = {}
    for name, t in rules.items():
        e = evaluate(test_d, d.test_attack, t)
        out["rules"][name] = {k: e[k] for k in ("threshold", "recall", "fpr", "f1")}
    out["outside_profile"] = {
        "validation_legit": int((~in_val & ~d.validation_attack).sum()),
        "validation_attack": int((~in_val & d.validation_attack).sum()),
        "test_legit": int((~in_test & ~d.test_attack).sum()),
        "test_attack": int((~in_test & d.test_attack).sum()),
    }
    if profile is not None:
        out["profile"] = profile.listing()[:20]
    return out


def mlflow_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """A device's metrics as its MLflow run shows them: test figures under ``test/``, validation
    under ``val/`` (each baseline's the same way under ``baselines/<name>/``), timings as is."""

    def split(d: dict[str, Any]) -> dict[str, Any]:
        test = {k: v for k, v in d.items()
                if k not in ("validation", "baselines", "flows", "detector")}  # fmt: skip
        out: dict[str, Any] = {"test": test, "val": d.get("validation", {})}
        for k in ("train_seconds", "fit_seconds", "epochs", "best_epoch", "best_val_loss"):
            if k in test:
                out[k] = test.pop(k)
        return out

    out = split(m)
    out["flows"] = m.get("flows", {})
    out["baselines"] = {name: split(b) for name, b in m.get("baselines", {}).items()}
    if "detector" in m:
        det = {k: v for k, v in m["detector"].items() if k not in ("profile",)}
        out["detector"] = split(det)
    return out


def run_baselines(
    cfg: AnomalyConfig, d: DeviceData, xs: dict[str, np.ndarray], seed: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Fit every enabled baseline on the scaled train flows; metrics and test scores."""
    from iotwatch.anomaly.baselines import make_baseline

    out: dict[str, Any] = {}
    test_scores: dict[str, np.ndarray] = {}
    for name, bcfg in cfg.baselines.items():
        if not bcfg.enabled:
            continue
        t0 = time.perf_counter()
        model = make_baseline(name, bcfg.params, seed).fit(xs["train"])
        fit_s = time.perf_counter() - t0
        val_s, test_s = model.score(xs["validation"]), model.score(xs["test"])
        rules = _both_rules(d, val_s, test_s, cfg.target_fpr, cfg.threshold_placement)
        out[name] = {**rules, "fit_seconds": fit_s}
        test_scores[name] = test_s
    return out, test_scores


def save_device(
    folder: Path,
    members: list[tuple[SparseAutoencoder, FeatureScaler]],
    specs: list[MemberSpec],
    hparams: dict[str, Any],
    thresholds: dict[str, Any],
    profile: ServiceProfile | None = None,
) -> None:
    """Per member (``iotwatch.anomaly.members``: the first one's files have the plain names):
    ``state_dict.pt`` (weights only, for torch), ``weights.safetensors`` (the same weights for the
    monitor, which reads them with numpy: the very file the bundle and the MLflow model version
    hold), ``scaler.json``; then ``threshold.json`` and ``model.json`` (hparams, columns,
    members)."""
    from iotwatch.anomaly.members import COMBINE, stale_files
    from iotwatch.anomaly.model import save_weights
    from iotwatch.arrays import write_arrays

    if len(members) != len(specs):
        raise ValueError("one spec per member")
    folder.mkdir(parents=True, exist_ok=True)
    for old in stale_files(folder, specs):
        old.unlink()
    for (model, scaler), spec in zip(members, specs, strict=True):
        save_weights(model, folder / spec.file("state_dict"))
        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        write_arrays(state, folder / spec.file("weights"), {"format": "iotwatch-autoencoder/1"})
        scaler.save(folder / spec.file("scaler"))
    (folder / "threshold.json").write_text(json.dumps(thresholds, indent=2) + "\n")
    services = folder / SERVICES_FILE
    if profile is not None:
        services.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    else:
        services.unlink(missing_ok=True)
    meta = {"hparams": hparams, "columns": members[0][1].columns,
            "members": [s.to_dict() for s in specs], "combine": COMBINE}  # fmt: skip
    (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")


def score_members(
    members: list[tuple[SparseAutoencoder, FeatureScaler]], specs: list[MemberSpec], x: Any
) -> np.ndarray:
    """Scores of raw feature rows ``x``: each member's reconstruction MSE, combined
    (``members.combine``)."""
    from iotwatch.anomaly.members import combine
    from iotwatch.anomaly.model import reconstruction_errors

    return combine([reconstruction_errors(m, sc.transform(x)) for m, sc in members], specs)


@dataclass
class DeviceDetector:
    """A saved per-device detector: ``is_attack(x)`` on raw feature rows (score > threshold)."""

    members: list[tuple[SparseAutoencoder, FeatureScaler]]
    specs: list[MemberSpec]
    threshold: float
    fpr_threshold: float
    profile: ServiceProfile | None = None

    @property
    def scaler(self) -> FeatureScaler:
        """The first member's scaler (its columns are the raw feature columns)."""
        return self.members[0][1]

    def score(self, x: Any) -> np.ndarray:
        return score_members(self.members, self.specs, x)

    def is_attack(self, x: Any, rule: Literal["f1", "fpr"] = "f1") -> np.ndarray:
        thr = self.threshold if rule == "f1" else self.fpr_threshold
        return self.score(x) > thr


def load_device(folder: Path | str) -> DeviceDetector:
    """Load what ``save_device`` wrote (torch.load with weights_only=True; JSON otherwise)."""
    from iotwatch.anomaly.members import folder_specs
    from iotwatch.anomaly.model import load_weights
    from iotwatch.anomaly.scaling import FeatureScaler

    folder = Path(folder)
    try:
        meta = json.loads((folder / "model.json").read_text())
        thr = json.loads((folder / "threshold.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{folder}: not an anomaly model folder ({exc})") from None
    if thr.get("format") != THRESHOLD_FORMAT:
        raise InputError(f"{folder}/threshold.json: not format {THRESHOLD_FORMAT}")
    specs = folder_specs(folder, meta)
    members = [(load_weights(folder / s.file("state_dict"), **meta["hparams"]),
                FeatureScaler.load(folder / s.file("scaler"))) for s in specs]  # fmt: skip
    profile = None
    if (folder / SERVICES_FILE).is_file():
        from iotwatch.anomaly.services import ServiceProfile

        try:
            profile = ServiceProfile.from_dict(json.loads((folder / SERVICES_FILE).read_text()),
                                               str(folder / SERVICES_FILE))  # fmt: skip
        except (OSError, json.JSONDecodeError, ValueError) as exc:
            raise InputError(f"{folder / SERVICES_FILE}: {exc}") from None
    return DeviceDetector(members, specs, float(thr["threshold"]), float(thr["fpr_threshold"]),
                          profile)  # fmt: skip


CURVE_AXES = {"roc": ("fpr", "tpr"), "pr": ("recall", "precision")}


def curve(kind: str, y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Test ROC (fpr, tpr) or precision-recall (recall ascending, precision) curve points."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    if kind == "roc":
        fx, ty, _ = roc_curve(y, scores)
        return fx, ty
    p, r, _ = precision_recall_curve(y, scores)
    return r[::-1], p[::-1]


def write_curve(path: Path, kind: str, x: np.ndarray, y: np.ndarray) -> None:
    """Curve points as CSV with the ``CURVE_AXES`` header (the anomaly stage's `dvc plots`)."""
    lines = [",".join(CURVE_AXES[kind])] + [f"{u:.6g},{v:.6g}" for u, v in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def plot_device(
    device: str,
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    legit_errors: np.ndarray,
    attack_errors: np.ndarray,
    thresholds: dict[str, float],
    folder: Path,
    curves: Path | None = None,
) -> list[Path]:
    """ROC and PR curves on test (autoencoder + baselines) and the AE error histogram; the
    autoencoder's curves also as CSV in ``curves`` (the anomaly stage draws them per type)."""
    import numpy as np

    from iotwatch.viz import _pyplot

    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    both = bool(y.any() and (~y).any())
    if both:
        for kind in ("roc", "pr"):
            fig, ax = plt.subplots(figsize=(5.5, 5))
            for name, s in scores.items():
                cx, cy = curve(kind, y, s)
                ax.plot(cx, cy, label=name, lw=1.8 if name == "autoencoder" else 1)
                if name == "autoencoder" and curves is not None:
                    write_curve(curves / f"{kind}.csv", kind, cx, cy)
            if kind == "roc":
                ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls=":")
                ax.set_xlabel("false positive rate")
                ax.set_ylabel("true positive rate")
            else:
                ax.set_xlabel("recall")
                ax.set_ylabel("precision")
            ax.set_title(f"{device}: {kind.upper()} (test)")
            ax.legend(fontsize=7, frameon=False)
            fig.tight_layout()
            fig.savefig(folder / f"{kind}.png", dpi=120)
            plt.close(fig)
            written.append(folder / f"{kind}.png")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    every = np.concatenate([legit_errors, attack_errors])
    lo, hi = max(float(every.min()), 1e-8), max(float(every.max()), 1e-7)
    bins = np.geomspace(lo, hi * 1.0001, 50) if hi > lo else 20
    if len(legit_errors):
        ax.hist(np.maximum(legit_errors, lo), bins=bins, alpha=0.6, label="legitimate")
    if len(attack_errors):
        ax.hist(np.maximum(attack_errors, lo), bins=bins, alpha=0.6, label="attack")
    for (name, thr), ls in zip(thresholds.items(), ("-", "--"), strict=False):
        ax.axvline(max(thr, lo), color="black", ls=ls, lw=1, label=f"{name} {thr:.3g}")
    if hi > lo:
        ax.set_xscale("log")
    ax.set_xlabel("reconstruction error (MSE)")
    ax.set_ylabel("test flows")
    ax.set_title(f"{device}: autoencoder reconstruction error")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(folder / "errors.png", dpi=120)
    plt.close(fig)
    written.append(folder / "errors.png")
    return written


@dataclass
class Trained:
    """One trained candidate: its scaler (feature order), model, training info and ``ref``, the
    median error of its early-stopping flows (``members.reference_error``)."""

    scaler: FeatureScaler
    model: SparseAutoencoder
    info: dict[str, Any]
    ref: float

    @property
    def order(self) -> str:
        return self.scaler.order


def train_candidate(
    cfg: AnomalyConfig,
    d: DeviceData,
    order: str,
    hparams: dict[str, Any],
    settings: TrainSettings,
    seed: int,
    log_prefix: str = "",
    **log_to: Any,
) -> Trained:
    """Fit the scaler of ``order`` on the type's train flows and train the autoencoder on them
    (early stopping on ``training_sets``' stop flows); ``log_to`` (tracking_uri, run_id) sends
    the per-epoch curves to that MLflow run, named ``<log_prefix>-<curve>`` when a prefix is
    given."""
    from iotwatch.anomaly.members import reference_error
    from iotwatch.anomaly.model import fit_autoencoder, reconstruction_errors
    from iotwatch.anomaly.scaling import FeatureScaler

    sc = FeatureScaler(log1p=cfg.log1p, order=order).fit(d.train, d.columns)
    fit_x, stop_x = training_sets(
        cfg, sc.transform(d.train), sc.transform(d.validation), d.validation_attack, seed
    )
    with tempfile.TemporaryDirectory(prefix="iotwatch-anomaly-") as work:
        model, info = fit_autoencoder(fit_x, stop_x, hparams, settings, seed, work_dir=work,
                                      log_prefix=log_prefix, **log_to)  # fmt: skip
    return Trained(sc, model, info, reference_error(reconstruction_errors(model, stop_x)))


def choose_order(
    cfg: AnomalyConfig,
    d: DeviceData,
    hparams: dict[str, Any],
    settings: TrainSettings,
    seed: int,
    **log_to: Any,
) -> tuple[str, dict[str, Any], list[Trained]]:
    """The feature order(s) to train with, trained: ``cfg.order``; ``both``: both orders, kept
    together (``iotwatch.anomaly.members``); ``best``: the one validation supports: both
    autoencoders are trained (same hyperparameters, seed and settings) and sorted replaces the
    method's positional features only when its VALIDATION AUC is the higher one in at least
    ``cfg.order_confidence`` of paired bootstrap resamples of the validation flows (a one-sided
    test at 1 - order_confidence: a margin of a few flows is noise, not evidence). Without
    validation attacks: the lower legitimate validation loss. Returns the order, what each
    candidate scored (test flows are never looked at; empty for a fixed order) and the members,
    each trained once. ``log_to`` (tracking_uri, run_id) sends the curves to that MLflow run: a
    fixed order's under the plain names, the candidates' of ``best`` and ``both`` as
    ``<order>-train_loss`` etc. (``copy_curves`` then copies the chosen or first one's)."""
    from sklearn.metrics import roc_auc_score

    from iotwatch.anomaly.model import reconstruction_errors
    from iotwatch.anomaly.scaling import ORDERS
    from iotwatch.anomaly.threshold import auc_wins

    if cfg.order in ORDERS:
        return (
            cfg.order,
            {},
            [train_candidate(cfg, d, cfg.order, hparams, settings, seed, **log_to)],
        )
    found: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    trained: dict[str, Trained] = {}
    both = d.validation_attack.any() and (~d.validation_attack).any()
    for order in ORDERS:
        t = trained[order] = train_candidate(
            cfg, d, order, hparams, settings, seed, order, **log_to
        )
        scores[order] = reconstruction_errors(t.model, t.scaler.transform(d.validation))
        auc = float(roc_auc_score(d.validation_attack, scores[order])) if both else None
        found[order] = {"val_auc": auc, "val_loss": t.info["best_val_loss"],
                        "seconds": t.info["seconds"], "ref": t.ref}  # fmt: skip
    if cfg.order == "both":
        return "both", found, [trained[o] for o in ORDERS]
    if both:
        wins = auc_wins(d.validation_attack, scores["sorted"], scores["positional"],
                        cfg.order_resamples, seed)  # fmt: skip
        found["sorted_wins"] = wins
        found["confidence"] = cfg.order_confidence
        best = "sorted" if wins >= cfg.order_confidence else "positional"
    else:
        pos, srt = found["positional"], found["sorted"]
        best = "sorted" if srt["val_loss"] < pos["val_loss"] else "positional"
    log.info("anomaly %s: feature order %s (validation %s)", d.device, best, found)
    return best, found, [trained[best]]


CURVES = ("train_loss", "train_mse", "train_kl", "val_loss")  # per-epoch curves of a training


def copy_curves(run_id: str, prefix: str) -> None:
    """The chosen candidate's ``<prefix>-<curve>`` histories again under the plain curve names,
    so every type's run has ``val_loss`` etc. whichever order it took (the compare view)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for name in CURVES:
        history = client.get_metric_history(run_id, f"{prefix}-{name}")
        metrics = [Metric(name, m.value, m.timestamp, m.step) for m in history]
        for i in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[i : i + 500])


def run_device(
    cfg: AnomalyConfig,
    d: DeviceData,
    seed: int,
    models_dir: Path,
    plots_dir: Path,
    msr: StageRun,
) -> dict[str, Any]:
    """Train, threshold, evaluate, save and plot one device type (inside its child run)."""
    import mlflow

    from iotwatch.anomaly.members import COMBINE, member_files, specs_for
    from iotwatch.features import metric_key

    key = metric_key(d.device)
    hparams = model_hparams(cfg, len(d.columns))
    settings = train_settings(cfg)
    log_to = {"tracking_uri": mlflow.get_tracking_uri(), "run_id": msr.run_id} if msr.run_id else {}
    order, choice, members = choose_order(cfg, d, hparams, settings, seed, **log_to)
    specs = specs_for([t.order for t in members], [t.ref for t in members])
    pairs = [(t.model, t.scaler) for t in members]
    scaler, info = members[0].scaler, dict(members[0].info)  # the baselines see its scaling
    info["seconds"] = sum(t.info["seconds"] for t in members)
    if choice and msr.run_id:
        copy_curves(msr.run_id, members[0].order)

    xs = {
        "train": scaler.transform(d.train),
        "validation": scaler.transform(d.validation),
        "test": scaler.transform(d.test),
    }
    msr.log_params(
        {
            "device_type": d.device,
            "batch_size": cfg.batch_size,
            "max_epochs": cfg.max_epochs,
            "patience": cfg.patience,
            "log1p": cfg.log1p,
            "order": order,
            "order_setting": cfg.order,
            "target_fpr": cfg.target_fpr,
        }
    )  # hidden/lr/sparsity_* are logged by Lightning's MLFlowLogger (the module's hparams)
    val_s, test_s = score_members(pairs, specs, d.validation), score_members(pairs, specs, d.test)
    m = _both_rules(d, val_s, test_s, cfg.target_fpr, cfg.threshold_placement)
    profile = None
    if cfg.services and d.train_service is not None:
        from iotwatch.anomaly.services import ServiceProfile

        profile = ServiceProfile(cfg.spread_ports).fit(d.train_service)
    m["detector"] = evaluate_detector(cfg, d, val_s, test_s, profile, m["threshold"])
    m["order"] = order
    if choice:
        m["order_choice"] = choice
    m["train_seconds"] = info["seconds"]
    m["epochs"] = info["epochs"]
    m["best_epoch"] = info["best_epoch"]
    m["best_val_loss"] = info["best_val_loss"]
    m["flows"] = d.counts()
    if len(members) > 1:  # epochs etc. above are the first member's; each one's here
        m["members"] = {
            t.order: {"ref": t.ref, "train_seconds": t.info["seconds"], "epochs": t.info["epochs"],
                      "best_epoch": t.info["best_epoch"], "best_val_loss": t.info["best_val_loss"]}
            for t in members
        }  # fmt: skip

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    def trained(t: Trained) -> str:
        what = f"{t.info['epochs']} epochs, best {t.info['best_epoch']}"
        return what if len(members) == 1 else f"{t.order} {what}, {t.info['seconds']:.1f} s"

    runs = "; ".join(trained(t) for t in members)
    det = m["detector"]
    print(
        f"anomaly {d.device}: trained in {info['seconds']:.2f} s ({runs}); "
        f"test F1 {fmt(m['f1'])}, AUC {fmt(m['auc'])} (method); detector "
        f"({'services + ' if det['services'] else ''}{det['rule']} threshold): recall "
        f"{fmt(det['recall'])}, FPR {fmt(det['fpr'])}",
        flush=True,
    )
    m["baselines"], base_scores = run_baselines(cfg, d, xs, seed)
    folder = models_dir / key
    save_device(
        folder,
        pairs,
        specs,
        hparams,
        {
            "format": THRESHOLD_FORMAT,
            "device_type": d.device,
            "attack_if": "score > threshold",
            "score": "mean squared reconstruction error of the scaled features"
            if len(members) == 1
            else COMBINE,
            "threshold": m["detector"]["threshold"],
            "rule": m["detector"]["rule"],
            "services": m["detector"]["services"],
            "budget_fpr": m["detector"]["budget_fpr"],
            "best_f1_threshold": m["threshold"],
            "fpr_threshold": m["fpr_rule"]["threshold"],
            "target_fpr": cfg.target_fpr,
        },
        profile,
    )
    import pandas as pd

    from iotwatch.registry import log_anomaly_model

    log_anomaly_model(folder, d.device, msr, pd.DataFrame(d.validation[:5], columns=d.columns))
    if cfg.plots:
        pngs = plot_device(
            d.device,
            d.test_attack,
            {"autoencoder": test_s, **base_scores},
            test_s[~d.test_attack],
            test_s[d.test_attack],
            {
                "best-F1": m["threshold"],
                f"{m['detector']['rule']} (detector)": m["detector"]["threshold"],
            },  # fmt: skip
            plots_dir / key,
            curves=folder,
        )
        for png in pngs:
            msr.log_artifact(png)  # top level: the compare view lines them up across types
    msr.log_metrics(mlflow_metrics(m))
    for name in (*member_files(specs, ["scaler"]), "threshold.json", "model.json"):
        msr.log_artifact(folder / name, "model")
    if profile is not None:
        msr.log_artifact(folder / SERVICES_FILE, "model")
    return m


def tuned_params(cfg: AnomalyConfig, path: Path) -> tuple[AnomalyConfig, dict[str, Any]]:
    """``cfg`` with the tune stage's best parameters from ``path`` applied (when ``cfg.tuned``
    and the file holds a tuned result); returns the config and what was applied."""
    from dataclasses import replace

    if not cfg.tuned or not path.is_file():
        return cfg, {}
    try:
        tuned = json.loads(path.read_text())
        params = dict(tuned.get("params") or {}) if tuned.get("tuned") else {}
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise InputError(f"{path}: not a tune result ({exc})") from None
    unknown = sorted(set(params) - set(TUNABLE))
    if unknown:
        raise InputError(f"{path}: unknown tuned parameter(s) {unknown}; tunable: {list(TUNABLE)}")
    try:
        return replace(cfg, **params), params
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: bad tuned parameters ({exc})") from None


# Parameters the tune stage may set (AnomalyConfig fields).
TUNABLE = ("hidden", "lr", "sparsity_target", "sparsity_weight")


def device_types(ctx: StageContext, device: str | None) -> list[str]:
    """The types a stage handles: ``device``, else dataset.device_types, else every table."""
    if device:
        return [device]
    if ctx.dataset.device_types:
        return list(ctx.dataset.device_types)
    folder = Path(ctx.paths.anomaly_data)
    return sorted(p.stem for p in folder.glob("*.parquet"))


def device_table(ctx: StageContext, device: str) -> Path:
    """The features stage's table of one device type (``<anomaly_data>/<type>.parquet``)."""
    from iotwatch.features import metric_key

    return Path(ctx.paths.anomaly_data) / f"{metric_key(device)}.parquet"


def load_device_data(ctx: StageContext, device: str) -> tuple[DeviceData | None, str | None]:
    """(data, None), or (None, why it is missing) when the features stage wrote no table."""
    from iotwatch.anomaly.data import read_slice

    path = device_table(ctx, device)
    if not path.is_file():
        return None, f"no table {path} (no legitimate flows of this type in the features stage)"
    return read_slice(path, device), None


def write_skipped(models_dir: Path, plots_dir: Path, key: str, skipped: dict[str, Any]) -> None:
    """A skipped type still gets its (DVC-tracked) folders, saying why, and no model files."""
    import shutil

    for folder in (models_dir / key, plots_dir / key):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    (models_dir / key / METRICS_FILE).write_text(
        json.dumps({SKIPPED: skipped}, indent=2, sort_keys=True) + "\n"
    )
    (plots_dir / key / "SKIPPED.txt").write_text(f"{skipped['reason']}\n")


METRICS_FILE = "metrics.json"  # a device folder's test metrics (read by the anomaly stage)


def run(cfg: AnomalyConfig, ctx: StageContext, sr: StageRun) -> dict[str, Any]:
    """Autoencoder stage: per device type (``cfg.device``, else dataset.device_types), train the
    AE and baselines, threshold on validation, report test metrics; each type's metrics also
    go to ``<anomaly_models>/<type>/metrics.json`` (the anomaly stage gathers them). Types with
    too few flows are skipped with the reason (listed under ``skipped``)."""
    from iotwatch.anomaly.data import skip_reason, slice_frame
    from iotwatch.features import metric_key

    paths, seed = ctx.paths, ctx.seed
    models_dir, plots_dir = Path(paths.anomaly_models), Path(paths.anomaly_plots)
    metrics: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    for device in device_types(ctx, cfg.device):
        key = metric_key(device)
        d, reason = load_device_data(ctx, device)
        if d is not None:
            reason = skip_reason(d, cfg.min_train_flows)
        if reason is not None:
            log.warning("anomaly: skipping device type %s: %s", device, reason)
            skipped[key] = {"reason": reason, **(d.counts() if d is not None else {})}
            write_skipped(models_dir, plots_dir, key, skipped[key])
            continue
        assert d is not None
        dcfg, applied = tuned_params(cfg, Path(paths.anomaly_tuned) / f"{key}.json")
        if applied:
            log.info("anomaly %s: tuned parameters %s", device, applied)
        log.info("anomaly %s: %s", device, d.counts())
        with sr.child(f"anomaly/{device}", {"device_type": device}) as msr:
            msr.log_input_tables({"device": (device_table(ctx, device), slice_frame(d))})
            m = run_device(dcfg, d, seed, models_dir, plots_dir, msr)
        m["tuned"] = applied
        (models_dir / key / METRICS_FILE).write_text(
            json.dumps(m, indent=2, sort_keys=True, default=_plain) + "\n"
        )
        metrics[key] = m
    if not metrics:
        log.warning("anomaly: no device type could be modelled (see 'skipped')")
    metrics[SKIPPED] = skipped
    sr.record(metrics)
    return metrics


def _plain(value: Any) -> Any:
    """numpy scalars in metrics -> Python numbers (json.dumps ``default``)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")
