"""The tune stage (and `iotwatch tune`): Optuna searches each device type's autoencoder.

Per device type, a TPE sampler (seeded) proposes ``tune.search`` values (hidden size, sparsity
target and weight, learning rate: log-uniform ranges), each trial trains the autoencoder for at
most ``tune.max_epochs`` epochs and is scored on VALIDATION only (``tune.objective``: AUC by
default; the test set is never seen). A median pruner is fed every epoch by Lightning's
validation loss (the reconstruction MSE of legitimate validation flows). The first trial is
conf/anomaly's own values, so the result is never worse than them on validation.

The study lives in a database (``tune.storage``; default SQLite ``mlruns/optuna.db``): a rerun
after an interruption resumes it and only runs the missing trials, and several workers
(`iotwatch tune --storage postgresql://... --worker K`) share one study, each trial run once.
Its name hashes everything the trials depend on (data, search space, settings, seed), so changed
data starts a new study instead of mixing results. Each trial is a nested MLflow run.

The best parameters go to ``<paths.anomaly_tuned>/<type>.json``; the autoencoder stage depends
on that file and trains with them (``anomaly.tuned: false`` ignores it). ``tune.trials: 0``
writes the file with no tuned parameters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from iotwatch.anomaly.stage import (
    TUNABLE,
    AnomalyConfig,
    device_table,
    device_types,
    load_device_data,
    model_hparams,
    train_settings,
    training_sets,
)
from iotwatch.errors import ConfigError, InputError

if TYPE_CHECKING:
    import numpy as np
    import optuna

    from iotwatch.context import StageContext
    from iotwatch.tracking import StageRun

log = logging.getLogger(__name__)

TUNED_FORMAT = "iotwatch-tuned/1"
DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
OBJECTIVES = ("auc", "f1", "tpr_at_1pct_fpr")


@dataclass
class TuneConfig:
    """conf/tune/*.yaml. The defaults equal conf/tune/default.yaml (tested)."""

    trials: int = 4  # per device type, all workers together; 0 = no tuning
    objective: Literal["auc", "f1", "tpr_at_1pct_fpr"] = "auc"  # on validation
    max_epochs: int = 20  # per trial
    pruner: Literal["median", "none"] = "median"
    startup_trials: int = 2  # trials before the pruner (and TPE) start deciding
    storage: str | None = None  # None = sqlite:///mlruns/optuna.db
    study_prefix: str = "iotwatch"
    timeout_s: float | None = None  # per device type and worker
    # parameter -> [low, high], sampled log-uniformly (hidden as an integer)
    search: dict[str, list[float]] = field(
        default_factory=lambda: {
            "hidden": [16, 512],
            "sparsity_target": [0.01, 0.3],
            "sparsity_weight": [0.01, 1.0],
        }
    )

    def __post_init__(self) -> None:
        if self.trials < 0:
            raise ValueError(f"trials must be >= 0, got {self.trials}")
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.startup_trials < 0:
            raise ValueError(f"startup_trials must be >= 0, got {self.startup_trials}")
        unknown = sorted(set(self.search) - set(TUNABLE))
        if unknown:
            raise ValueError(f"search: unknown parameter(s) {unknown}; tunable: {list(TUNABLE)}")
        for name, rng in self.search.items():
            if len(rng) != 2 or not 0 < rng[0] <= rng[1]:
                raise ValueError(f"search.{name} must be [low, high] with 0 < low <= high")
        for name in ("sparsity_target",):
            if name in self.search and self.search[name][1] >= 1:
                raise ValueError(f"search.{name}: high must be < 1")


@dataclass
class TuneStageConfig:
    """What the tune stage reads: its own section and the autoencoder's (the fixed settings)."""

    tune: TuneConfig
    anomaly: AnomalyConfig


def storage_url(tune: TuneConfig) -> str:
    """The study database URL; a relative SQLite path is made absolute (it is opened from
    DVC's and Hydra's working folders alike) and its folder created."""
    url = tune.storage or DEFAULT_STORAGE
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        path = Path(url[len(prefix) :]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = prefix + str(path)
    return url


def redacted(url: str) -> str:
    """``url`` without a password (it goes into files and MLflow)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def study_name(tune: TuneConfig, acfg: AnomalyConfig, data_file: Path, seed: int, dataset: str,
               device: str) -> str:  # fmt: skip
    """``<prefix>-<dataset>-<type>-<digest>``: the digest covers the data and every setting a
    trial's result depends on, so a rerun resumes and a change starts afresh."""
    from iotwatch.features import metric_key

    h = hashlib.sha256()
    h.update(data_file.read_bytes())
    fixed = {k: v for k, v in asdict(acfg).items() if k not in ("device", "tuned", "plots")}
    fixed.pop("baselines", None)
    settings = {
        "anomaly": fixed,
        "search": tune.search,
        "objective": tune.objective,
        "max_epochs": tune.max_epochs,
        "pruner": tune.pruner,
        "startup_trials": tune.startup_trials,
        "seed": seed,
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return f"{tune.study_prefix}-{dataset}-{metric_key(device)}-{h.hexdigest()[:12]}"


def suggest(trial: optuna.Trial, search: dict[str, list[float]]) -> dict[str, Any]:
    """The trial's parameters from the log-uniform ranges (``hidden`` an integer)."""
    out: dict[str, Any] = {}
    for name, (low, high) in sorted(search.items()):
        if name == "hidden":
            out[name] = trial.suggest_int(name, int(low), int(high), log=True)
        else:
            out[name] = trial.suggest_float(name, float(low), float(high), log=True)
    return out


def objective_value(objective: str, scores: np.ndarray, attack: np.ndarray) -> float:
    """The validation objective of a trial (higher is better)."""
    from iotwatch.anomaly.threshold import best_f1_threshold, evaluate

    if not attack.any() or attack.all():
        raise InputError("tune: validation needs legitimate and attack flows to score trials")
    m = evaluate(scores, attack, best_f1_threshold(scores, attack))
    value = m[objective]
    return float("nan") if value is None else float(value)


def _pruning_callback(trial: optuna.Trial) -> Any:
    """A Lightning callback reporting each epoch's validation loss to Optuna and pruning."""
    import optuna
    import pytorch_lightning as pl

    class PruneOnValLoss(pl.Callback):
        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            loss = trainer.callback_metrics.get("val_loss")
            if loss is None:
                return
            # The study maximises the objective: report the negated loss (higher is better).
            trial.report(-float(loss), step=int(trainer.current_epoch))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {trainer.current_epoch}")

    return PruneOnValLoss()


def tune_device(
    tune: TuneConfig,
    acfg: AnomalyConfig,
    ctx: StageContext,
    device: str,
    sr: StageRun,
    worker: int = 0,
) -> dict[str, Any]:
    """Run (or resume) one device type's study; write and return its tuned-parameters file."""
    import optuna

    from iotwatch.anomaly.data import skip_reason
    from iotwatch.anomaly.model import fit_autoencoder, reconstruction_errors
    from iotwatch.anomaly.scaling import FeatureScaler
    from iotwatch.features import metric_key

    key = metric_key(device)
    out_path = Path(ctx.paths.anomaly_tuned) / f"{key}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"format": TUNED_FORMAT, "device_type": device, "tuned": False}
    d, reason = load_device_data(ctx, device)
    if d is not None:
        reason = skip_reason(d, acfg.min_train_flows)
        if reason is None and not (d.validation_attack.any() and (~d.validation_attack).any()):
            reason = "validation needs legitimate and attack flows to score trials"
    if tune.trials == 0 or reason is not None:
        result["reason"] = "tune.trials is 0" if tune.trials == 0 else reason
        if reason is not None:
            log.warning("tune: skipping device type %s: %s", device, reason)
        out_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return result
    assert d is not None
    name = study_name(tune, acfg, device_table(ctx, device), ctx.seed, ctx.dataset.name, device)
    url = storage_url(tune)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(
        seed=ctx.seed + worker, n_startup_trials=max(tune.startup_trials, 1)
    )
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=2)
        if tune.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        study = optuna.create_study(
            study_name=name, storage=url, direction="maximize", sampler=sampler,
            pruner=pruner, load_if_exists=True,
        )  # fmt: skip
    except Exception as exc:  # SQLAlchemy/driver errors: unreachable server, bad URL
        raise InputError(f"tune: cannot open the Optuna storage {redacted(url)} ({exc})") from None
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    if worker == 0 and not study.trials:
        # conf/anomaly's own values first: tuning never ends worse than them on validation
        study.enqueue_trial(
            {k: getattr(acfg, k) for k in tune.search}, user_attrs={"defaults": True}
        )
    # anomaly.order best or both: tuned on the method's positional features (both members then
    # share the parameters; best compares the two orders)
    order = "positional" if acfg.order in ("best", "both") else acfg.order
    scaler = FeatureScaler(log1p=acfg.log1p, order=order).fit(d.train, d.columns)
    xt, xv = scaler.transform(d.train), scaler.transform(d.validation)
    fit_x, stop_x = training_sets(acfg, xt, xv, d.validation_attack, ctx.seed)
    settings = train_settings(acfg, max_epochs=tune.max_epochs)

    def objective(trial: optuna.Trial) -> float:
        import mlflow

        trial.set_user_attr("worker", worker)
        params = suggest(trial, tune.search)
        tcfg = replace(acfg, **params)
        hparams = model_hparams(tcfg, len(d.columns))
        pruned: optuna.TrialPruned | None = None
        tags = {"device_type": device, "trial": trial.number, "study": name, "worker": worker}
        with sr.child(f"tune/{device}/trial-{trial.number}", tags) as tsr:
            t0 = time.perf_counter()
            try:
                with tempfile.TemporaryDirectory(prefix="iotwatch-tune-") as work:
                    model, info = fit_autoencoder(
                        fit_x, stop_x, hparams, settings, ctx.seed, work_dir=work,
                        tracking_uri=mlflow.get_tracking_uri() if tsr.run_id else None,
                        run_id=tsr.run_id, callbacks=[_pruning_callback(trial)],
                    )  # fmt: skip
            except optuna.TrialPruned as exc:
                pruned = exc
                tsr.set_tags({"optuna.state": "PRUNED"})
            else:
                value = objective_value(
                    tune.objective, reconstruction_errors(model, xv), d.validation_attack
                )
                tsr.log_metrics(
                    {
                        f"val/{tune.objective}": value,
                        "seconds": time.perf_counter() - t0,
                        "epochs": info["epochs"],
                    }  # fmt: skip
                )
                tsr.set_tags({"optuna.state": "COMPLETE"})
        if pruned is not None:
            raise pruned
        log.info("tune %s trial %d: %s = %.5f %s", device, trial.number, tune.objective,
                 value, params)  # fmt: skip
        return value

    done = len(study.get_trials(deepcopy=False, states=states))
    todo = max(tune.trials - done, 0)
    if done:
        log.info("tune %s: study %s has %d finished trial(s); %d to go", device, name, done, todo)
    if todo:
        study.optimize(
            objective,
            n_trials=todo,
            timeout=tune.timeout_s,
            callbacks=[
                optuna.study.MaxTrialsCallback(
                    tune.trials, states=(*states, optuna.trial.TrialState.RUNNING)
                )
            ],
            catch=(),
        )
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not finished:
        raise InputError(f"tune {device}: no trial of study {name} completed (all pruned?)")
    best = max(finished, key=lambda t: (t.value, -t.number))
    defaults = [t for t in finished if t.user_attrs.get("defaults")]
    result.update(
        tuned=True,
        params={k: (int(v) if k == "hidden" else float(v)) for k, v in best.params.items()},
        objective=tune.objective,
        value=best.value,
        best_trial=best.number,
        defaults_value=defaults[0].value if defaults else None,
        trials={
            "complete": len(finished),
            "pruned": len(study.get_trials(deepcopy=False, states=(states[1],))),
        },
        study=name,
        storage=redacted(tune.storage or DEFAULT_STORAGE),  # as configured: no local path
    )
    out_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(
        f"tune {device}: best validation {tune.objective} {best.value:.5f} "
        f"(conf values: {result['defaults_value']}) with {result['params']}; "
        f"{result['trials']['complete']} complete, {result['trials']['pruned']} pruned",
        flush=True,
    )
    return result


def run(cfg: TuneStageConfig, ctx: StageContext, sr: StageRun, worker: int = 0) -> dict[str, Any]:
    """Tune stage: every device type (``anomaly.device``, else dataset.device_types)."""
    out: dict[str, Any] = {}
    for device in device_types(ctx, cfg.anomaly.device):
        with sr.child(f"tune/{device}", {"device_type": device}) as dsr:
            res = tune_device(cfg.tune, cfg.anomaly, ctx, device, dsr, worker)
            if res.get("tuned"):
                dsr.log_params({f"best.{k}": v for k, v in res["params"].items()})
                dsr.log_metrics({f"val/{res['objective']}": res["value"]})
        out[device] = res
    return out


def main(argv: list[str]) -> int:
    """`iotwatch tune`: run the tune stage from params.yaml, with worker options."""
    from iotwatch.config import read_params
    from iotwatch.pipeline.stages import params_from_dict, run_stage

    parser = argparse.ArgumentParser(
        prog="iotwatch tune",
        description="Optuna search of each device type's autoencoder (validation objective). "
        "Start several with the same --storage to share one study.",
    )
    parser.add_argument("--device", action="append", default=None,
                        help="device type (repeatable); default: dataset.device_types")  # fmt: skip
    parser.add_argument("--trials", type=int, default=None, help="total trials per device type")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL (default tune.storage, else SQLite under mlruns/)")  # fmt: skip
    parser.add_argument("--worker", type=int, default=0,
                        help="this worker's number (0, 1, ...): seeds its sampler")  # fmt: skip
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    if args.worker < 0:
        raise ConfigError("--worker must be >= 0")
    data = read_params(args.params)
    tune_section = dict(data.get("tune") or {})
    if args.trials is not None:
        tune_section["trials"] = args.trials
    if args.storage is not None:
        tune_section["storage"] = args.storage
    data["tune"] = tune_section
    params = params_from_dict(data, str(args.params))
    for device in args.device or [None]:
        section = dict(data.get("anomaly") or {})
        section["device"] = device
        params.sections["anomaly"] = section
        run_stage("tune", params, worker=args.worker)
    return 0
