"""Experiment tracking: one writer for DVC metrics files and MLflow (`iotwatch ui`: ``ui``).

Every stage records its numbers through ``StageRun.record``: the nested dict lands in
``reports/metrics/<stage>.json`` (for `dvc metrics show`) and, flattened with ``/``, in the
stage's MLflow run (or, when the stage passes one, a summary of it: child runs hold the detail),
so DVC and MLflow never disagree.

Runs are closed whatever happens: FINISHED, FAILED on an error, KILLED on SIGINT/SIGTERM. A run
whose process died without closing it (SIGKILL, power loss) carries its host and pid as tags;
the next run of the same stage on that host closes it as FAILED.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotwatch.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# MLflow's own tag names (the UI shows them: source commit, parent, description).
GIT_COMMIT_TAG = "mlflow.source.git.commit"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"
# Ours: who runs the run, so that a later stage can tell a dead process's run from a live one.
HOST_TAG = "iotwatch.host"
PID_TAG = "iotwatch.pid"
PID_START_TAG = "iotwatch.pid_start"
# Tags a child run copies from its parent (what was run, on what, in which sweep).
INHERITED_TAGS = (GIT_COMMIT_TAG, "dataset", "dvc_exp", HOST_TAG, PID_TAG, PID_START_TAG)
INHERITED_PREFIXES = ("hydra.",)

# Shown at the top of each experiment in the MLflow UI.
EXPERIMENT_DESCRIPTIONS = {
    "dataset": "Building the dataset: synthetic captures, the flow meter's flow tables and the "
    "train/validation/test/held-out-device feature tables (one run per stage execution).",
    "device-recognition": "Which device is this? The t-SNE picture and six classifiers compared "
    "on device type: one parent run per classify stage, one child run per model "
    "(classify/<model>); the best model by validation accuracy is registered as "
    "iotwatch-classifier.",
    "behaviour": "Is it behaving? One sparse autoencoder per device type (child runs "
    "anomaly/<device>, registered as iotwatch-anomaly-<device>) with baselines on the same "
    "splits.",
    "report": "The Markdown report built from the other stages' metrics.",
}

# Dataset input contexts by split name (MLflow shows them on the run's datasets).
INPUT_CONTEXTS = {"train": "training", "validation": "validation", "test": "testing"}


@dataclass
class TrackingConfig:
    """Where MLflow keeps runs; ``enabled: false`` writes only the metrics files.

    The defaults are conf/config.yaml's `tracking:` values (for `iotwatch ui` outside a
    project); tests/test_config_source.py fails when they differ. The pipeline never uses them."""

    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    experiment_prefix: str = "iotwatch"
    enabled: bool = True


def flat_items(d: Mapping[str, Any], sep: str = "/", prefix: str = "") -> Iterator[tuple[str, Any]]:
    """The leaves of nested mappings as ``("a<sep>b", value)``, in order (the one flattener:
    metrics, parameters and the report's tables all walk nested dicts with it)."""
    for key, value in d.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from flat_items(value, sep, name)
        else:
            yield name, value


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested numeric dicts to ``{"a/b": 1.0}``; non-numbers are dropped."""
    return {
        name: float(value)
        for name, value in flat_items(metrics, "/", prefix)
        if isinstance(value, bool) or isinstance(value, (int, float)) and math.isfinite(value)
    }


def _jsonable(value: Any) -> Any:
    """Make numpy scalars and paths JSON-friendly."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def git_commit(cwd: Path | None = None) -> str:
    """The current git commit, or 'unknown' outside a repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_md5(path: Path | str) -> str:
    """The file's hash as DVC writes it in dvc.lock (``md5`` of the content, DVC 3)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the tracking URI: checked before MLflow gets to print a traceback ----------------------

_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def check_tracking_uri(uri: str) -> str:
    """Refuse a tracking URI MLflow cannot use, in one line (``ConfigError``); make sure a
    local SQLite database's folder exists. Returns the URI."""
    where = f"tracking.tracking_uri {uri!r}"
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        _probe_server(uri, where)
    elif scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise ConfigError(
                f"{where}: an SQLite URI is sqlite:///relative.db or sqlite:////abs.db"
            )
        db = Path(uri[len("sqlite:///") :])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot create {db.parent} ({exc.strerror})") from None
        if db.is_dir():
            raise ConfigError(f"{where}: {db} is a directory, not a database file")
    elif scheme in _DB_SCHEMES or scheme in ("file", "databricks"):
        pass
    else:
        raise ConfigError(
            f"{where}: unknown scheme; use sqlite:///path.db, http(s)://server:port, "
            "postgresql://user@host/db or file:///folder"
        )
    return uri


def _probe_server(uri: str, where: str) -> None:
    """An MLflow server answers /health; MLflow itself would retry for minutes, then raise."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (http/https only)
            resp.read(64)
    except urllib.error.HTTPError as exc:
        raise ConfigError(
            f"{where}: {url} answered HTTP {exc.code}; is it an MLflow server?"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"{where}: no MLflow server answers at {uri} ({reason})") from None


def _connect(cfg: TrackingConfig) -> Any:
    """Point MLflow at the store and touch it once; a store MLflow cannot open is one line."""
    import mlflow

    mlflow.set_tracking_uri(check_tracking_uri(cfg.tracking_uri))
    try:
        client = mlflow.MlflowClient()
        client.search_experiments(max_results=1)
    except Exception as exc:  # MlflowException, SQLAlchemy and driver errors alike
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"tracking.tracking_uri {cfg.tracking_uri!r}: cannot open the MLflow store ({first})"
        ) from None
    return client


def init_store(cfg: TrackingConfig) -> None:
    """Create the MLflow database (tables) once, before parallel workers race on it."""
    if cfg.enabled:
        _connect(cfg)


def experiment_id(cfg: TrackingConfig, concern: str) -> str:
    """Get or create the experiment ``<prefix>/<concern>`` with artifacts under artifact_root,
    described (``mlflow.note.content``) and marked as classic ML for the UI."""
    import mlflow

    name = f"{cfg.experiment_prefix}/{concern}"
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = Path(cfg.artifact_root).resolve() / concern
        try:
            exp_id = client.create_experiment(name, artifact_location=root.as_uri())
        except Exception:  # another worker created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    tags = exp.tags if exp is not None else {}
    wanted = {
        NOTE_TAG: EXPERIMENT_DESCRIPTIONS.get(concern, f"iotwatch runs: {concern}"),
        # MLflow 3's UI opens GenAI views for experiments it cannot classify.
        "mlflow.experimentKind": "custom_model_development",
    }
    for key, value in wanted.items():
        if tags.get(key) != value:
            _set_experiment_tag(client, exp_id, key, value)
    return exp_id


def _set_experiment_tag(client: Any, exp_id: str, key: str, value: str) -> None:
    """Set a tag that parallel workers may be setting at the same moment: the store's
    insert-or-update is not atomic (on PostgreSQL the loser of the race gets a unique-key
    violation), so a failure is retried after re-reading, and is no failure at all when the
    other worker already wrote the wanted value."""
    for attempt in range(3):
        try:
            client.set_experiment_tag(exp_id, key, value)
            return
        except Exception:
            if client.get_experiment(exp_id).tags.get(key) == value:
                return
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


# --- who owns a run: host, pid and the pid's start time (pids are reused) -------------------


def _pid_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def owner_tags() -> dict[str, str]:
    """Tags naming this process, so that a later run can tell whether it is still alive."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: _pid_start(pid)}


def _owner_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process a run's tags name is dead (only for runs of this host)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    started = tags.get(PID_START_TAG, "")
    return bool(started) and _pid_start(pid) not in ("", started)


def close_stale_runs(client: Any, exp_id: str, stage: str) -> list[str]:
    """Mark FAILED the RUNNING runs of ``stage`` (parents and children) whose process on this
    host is gone; returns their ids. Runs of live processes and other hosts are left alone."""
    from mlflow.entities import ViewType

    stale = []
    page = None
    while True:
        runs = client.search_runs(
            [exp_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.stage = '{stage}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=500,
            page_token=page,
        )
        for run in runs:
            if _owner_gone(run.data.tags):
                client.set_tag(
                    run.info.run_id,
                    "iotwatch.closed",
                    f"process {run.data.tags[PID_TAG]} on {run.data.tags[HOST_TAG]} died "
                    "without closing the run",
                )
                client.set_terminated(run.info.run_id, "FAILED")
                stale.append(run.info.run_id)
        page = runs.token
        if not page:
            break
    if stale:
        log.warning("%s: closed %d run(s) of dead processes as FAILED", stage, len(stale))
    return stale


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that open runs are closed as KILLED."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated`` (main thread only; elsewhere a no-op)."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _end_status(exc: BaseException) -> str:
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


class StageRun:
    """A stage execution: metrics file + (optionally) an MLflow run, possibly nested."""

    def __init__(self, stage: str, metrics_dir: Path | None, run_id: str | None) -> None:
        self.stage = stage
        self.metrics_dir = metrics_dir
        self.run_id = run_id
        self._metrics: dict[str, Any] = {}

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        """Log (flattened) parameters to MLflow."""
        if self.run_id is None:
            return
        import mlflow

        items = [(name, str(v)[:6000]) for name, v in flat_items(params, ".", prefix)]
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]), run_id=self.run_id)

    def record(
        self,
        metrics: Mapping[str, Any],
        step: int | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> None:
        """Record metrics: merged into reports/metrics/<stage>.json and logged to MLflow.

        With ``summary`` the MLflow run gets that instead (a parent whose child runs already
        hold each model's numbers keeps only the summary, not a copy of them)."""
        self._metrics.update(_jsonable(dict(metrics)))
        if self.metrics_dir is not None:
            self.metrics_dir.mkdir(parents=True, exist_ok=True)
            path = self.metrics_dir / f"{self.stage}.json"
            path.write_text(json.dumps(self._metrics, indent=2, sort_keys=True) + "\n")
        self.log_metrics(metrics if summary is None else summary, step=step)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log metrics to MLflow only (e.g. per-epoch curves that do not belong in DVC)."""
        if self.run_id is None:
            return
        import mlflow

        flat = flatten(metrics)
        if flat:
            mlflow.log_metrics(flat, step=step, run_id=self.run_id)

    def log_curve(self, name: str, values: Any, start: int = 1) -> None:
        """Log a curve as one metric with steps (``start``, ``start + 1``, ...): MLflow draws
        it as a line (training loss per iteration, validation score per epoch)."""
        if self.run_id is None:
            return
        import time

        import mlflow
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [
            Metric(name, float(v), now, start + i)
            for i, v in enumerate(values)
            if math.isfinite(float(v))
        ]
        client = mlflow.MlflowClient()
        for i in range(0, len(points), 1000):
            client.log_batch(self.run_id, metrics=points[i : i + 1000])

    def log_artifact(
        self, path: Path | str, artifact_path: str | None = None, as_name: str | None = None
    ) -> None:
        """Attach a file (plot, report, model) to the MLflow run, named ``as_name`` if given
        (the same picture under the same name in every child run: compare views line up)."""
        if self.run_id is None or not Path(path).exists():
            return
        import shutil
        import tempfile

        import mlflow

        client = mlflow.MlflowClient()
        if as_name is None or as_name == Path(path).name:
            client.log_artifact(self.run_id, str(path), artifact_path)
            return
        with tempfile.TemporaryDirectory(prefix="iotwatch-artifact-") as tmp:
            copy = Path(tmp) / as_name
            shutil.copy2(path, copy)
            client.log_artifact(self.run_id, str(copy), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Attach a text (a composed configuration) as the artifact ``artifact_file``."""
        if self.run_id is None:
            return
        import mlflow

        mlflow.MlflowClient().log_text(self.run_id, text, artifact_file)

    def log_input_tables(
        self, tables: Mapping[str, tuple[Path | str, pd.DataFrame]], targets: str | None = None
    ) -> dict[str, str]:
        """Log each split's table as an MLflow dataset input of this run: named after the split,
        its source the file, its digest the file's DVC hash (as in dvc.lock), its context
        training/validation/testing (other splits by their name). Returns {split: digest}."""
        digests = {split: dvc_md5(path) for split, (path, _) in tables.items()}
        if self.run_id is None:
            return digests
        import mlflow
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for split, (path, frame) in tables.items():
            with warnings.catch_warnings():  # a local path matches two equal source classes
                warnings.filterwarnings("ignore", "The specified dataset source can be")
                dataset = mlflow.data.from_pandas(
                    frame,
                    source=Path(path).resolve().as_uri(),
                    targets=targets if targets in frame.columns else None,
                    name=split,
                    digest=digests[split],
                )
            context = INPUT_CONTEXTS.get(split, split)
            inputs.append(
                DatasetInput(
                    dataset._to_mlflow_entity(),
                    tags=[InputTag(key="mlflow.data.context", value=context)],
                )
            )
        mlflow.MlflowClient().log_inputs(self.run_id, datasets=inputs)
        return digests

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set MLflow tags on this run."""
        if self.run_id is None:
            return
        import mlflow

        client = mlflow.MlflowClient()
        for k, v in tags.items():
            client.set_tag(self.run_id, k, str(v))

    @contextmanager
    def child(self, name: str, tags: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
        """A nested MLflow run (per model, per device, per trial); writes no metrics file.
        Its name says what ran (``classify/random_forest``, ``anomaly/<device>``)."""
        if self.run_id is None:
            yield StageRun(self.stage, None, None)
            return
        import mlflow

        client = mlflow.MlflowClient()
        parent = client.get_run(self.run_id)
        all_tags = {PARENT_TAG: self.run_id, "stage": self.stage, **(tags or {})}
        all_tags.update(
            {
                k: v
                for k, v in parent.data.tags.items()
                if k in INHERITED_TAGS or k.startswith(INHERITED_PREFIXES)
            }
        )
        run = client.create_run(
            parent.info.experiment_id,
            run_name=name,
            tags={k: str(v) for k, v in all_tags.items()},
        )
        status = "FINISHED"
        try:
            with sigterm_raises():
                yield StageRun(self.stage, None, run.info.run_id)
        except BaseException as exc:
            status = _end_status(exc)
            raise
        finally:
            client.set_terminated(run.info.run_id, status)


@contextmanager
def stage_run(
    stage: str,
    cfg: TrackingConfig,
    metrics_dir: Path | None,
    *,
    concern: str | None = None,
    dataset: str = "",
    params: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    texts: Mapping[str, str] | None = None,
) -> Iterator[StageRun]:
    """Open the parent MLflow run of one stage execution.

    Tags: MLflow's standard ones (git commit, user, source), the stage, the dataset, the DVC
    experiment and this process (host, pid) plus ``tags`` (which win: a Hydra job passes the
    dataset it really used and its sweep). ``texts`` are logged as text artifacts (the composed
    configuration). Stale RUNNING runs of the stage whose process died are closed first; this
    run ends FINISHED, FAILED on an error or KILLED on SIGINT/SIGTERM."""
    if not cfg.enabled:
        yield StageRun(stage, metrics_dir, None)
        return
    from mlflow.tracking.context.registry import resolve_tags

    client = _connect(cfg)
    exp_id = experiment_id(cfg, concern or stage)
    close_stale_runs(client, exp_id, stage)
    # resolve_tags adds MLflow's standard tags (user, source type); the commit is the one of
    # the working directory's repository (the entry script may live in another one's venv).
    all_tags = resolve_tags(
        {
            GIT_COMMIT_TAG: git_commit(),
            "mlflow.source.name": " ".join(["iotwatch", *sys.argv[1:]]),
            "stage": stage,
            "dataset": dataset,
            "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
            **owner_tags(),
            **(tags or {}),
        }
    )
    run = client.create_run(
        exp_id, run_name=run_name or stage, tags={k: str(v) for k, v in all_tags.items()}
    )
    sr = StageRun(stage, metrics_dir, run.info.run_id)
    status = "FINISHED"
    try:
        with sigterm_raises():
            if params:
                sr.log_params(params)
            for name, text in (texts or {}).items():
                sr.log_text(text, name)
            yield sr
    except BaseException as exc:
        status = _end_status(exc)
        raise
    finally:
        client.set_terminated(run.info.run_id, status)
