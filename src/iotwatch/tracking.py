"""Experiment tracking: one writer for DVC metrics files and MLflow, plus `iotwatch ui`.

Every stage records its numbers through ``StageRun.record``: the same nested dict lands in
``reports/metrics/<stage>.json`` (for `dvc metrics show`) and, flattened with ``/``, in the
stage's MLflow run, so DVC and MLflow never disagree.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


def _uri_with_absolute_sqlite(uri: str) -> str:
    """sqlite:///relative.db is relative to cwd; make sure its folder exists."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        db.parent.mkdir(parents=True, exist_ok=True)
    return uri


def init_store(cfg: TrackingConfig) -> None:
    """Create the MLflow database (tables) once, before parallel workers race on it."""
    if not cfg.enabled:
        return
    import mlflow

    mlflow.set_tracking_uri(_uri_with_absolute_sqlite(cfg.tracking_uri))
    mlflow.MlflowClient().search_experiments(max_results=1)


def experiment_id(cfg: TrackingConfig, concern: str) -> str:
    """Get or create the experiment ``<prefix>/<concern>`` with artifacts under artifact_root."""
    import mlflow

    name = f"{cfg.experiment_prefix}/{concern}"
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = Path(cfg.artifact_root).resolve() / concern
    try:
        return client.create_experiment(name, artifact_location=root.as_uri())
    except Exception:  # another worker created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


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

    def record(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record metrics: merged into reports/metrics/<stage>.json and logged to MLflow."""
        self._metrics.update(_jsonable(dict(metrics)))
        if self.metrics_dir is not None:
            self.metrics_dir.mkdir(parents=True, exist_ok=True)
            path = self.metrics_dir / f"{self.stage}.json"
            path.write_text(json.dumps(self._metrics, indent=2, sort_keys=True) + "\n")
        self.log_metrics(metrics, step=step)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log metrics to MLflow only (e.g. per-epoch curves that do not belong in DVC)."""
        if self.run_id is None:
            return
        import mlflow

        flat = flatten(metrics)
        if flat:
            mlflow.log_metrics(flat, step=step, run_id=self.run_id)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Attach a file (plot, report, model) to the MLflow run."""
        if self.run_id is None or not Path(path).exists():
            return
        import mlflow

        mlflow.MlflowClient().log_artifact(self.run_id, str(path), artifact_path)

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
        """A nested MLflow run (per model, per device, per trial); writes no metrics file."""
        if self.run_id is None:
            yield StageRun(self.stage, None, None)
            return
        import mlflow

        client = mlflow.MlflowClient()
        parent = client.get_run(self.run_id)
        all_tags = {"mlflow.parentRunId": self.run_id, "stage": self.stage, **(tags or {})}
        all_tags.update(
            {k: v for k, v in parent.data.tags.items() if k in ("git_commit", "dataset", "dvc_exp")}
        )
        run = client.create_run(
            parent.info.experiment_id,
            run_name=name,
            tags={k: str(v) for k, v in all_tags.items()},
        )
        status = "FINISHED"
        try:
            yield StageRun(self.stage, None, run.info.run_id)
        except BaseException:
            status = "FAILED"
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
) -> Iterator[StageRun]:
    """Open the parent MLflow run of one stage execution (tags: git commit, DVC exp, stage)."""
    if not cfg.enabled:
        yield StageRun(stage, metrics_dir, None)
        return
    import mlflow

    mlflow.set_tracking_uri(_uri_with_absolute_sqlite(cfg.tracking_uri))
    exp_id = experiment_id(cfg, concern or stage)
    all_tags = {
        "stage": stage,
        "dataset": dataset,
        "git_commit": git_commit(),
        "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
        **(tags or {}),
    }
    client = mlflow.MlflowClient()
    run = client.create_run(
        exp_id, run_name=run_name or stage, tags={k: str(v) for k, v in all_tags.items()}
    )
    sr = StageRun(stage, metrics_dir, run.info.run_id)
    if params:
        sr.log_params(params)
    status = "FINISHED"
    try:
        yield sr
    except BaseException:
        status = "FAILED"
        raise
    finally:
        client.set_terminated(run.info.run_id, status)


def main(argv: list[str]) -> int:
    """`iotwatch ui`: start the MLflow UI on 127.0.0.1 for the project's store."""
    parser = argparse.ArgumentParser(prog="iotwatch ui", description=main.__doc__)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--backend-store-uri", default=TrackingConfig.tracking_uri)
    args = parser.parse_args(argv)
    cfg = TrackingConfig(tracking_uri=args.backend_store_uri)
    init_store(cfg)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    # One worker: the default four take ~25 s to start on two cores.
    cmd = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", cfg.tracking_uri,
        "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1",
    ]  # fmt: skip
    print(f"MLflow UI: http://127.0.0.1:{args.port}  (Ctrl-C to stop)", flush=True)
    return subprocess.call(cmd, env=env)
