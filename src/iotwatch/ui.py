"""`iotwatch ui`: MLflow's UI on 127.0.0.1 for the project's store, opened where people look.

It lands on the device-recognition runs table in MLflow 3's classic ML view
(``workflowType=machine_learning``; the experiments are also tagged
``mlflow.experimentKind``) with the compared metrics as columns: MLflow's "shared view" read
from the experiment tag ``mlflow.sharedViewState.<key>``, which this command writes. The
server runs in its own process group, so SIGINT or SIGTERM of `iotwatch ui` stops it (and
the uvicorn child it starts) instead of leaving it listening.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from contextlib import suppress
from typing import Any

from iotwatch.tracking import (
    EXPERIMENT_DESCRIPTIONS,
    TrackingConfig,
    experiment_id,
    init_store,
    sigterm_raises,
)

LANDING_EXPERIMENT = "device-recognition"
# The runs table's columns per experiment: what people compare. MLflow's UI reads a view from
# the experiment tag ``mlflow.sharedViewState.<key>`` when the URL names the key (its "share
# view" feature); ``iotwatch ui`` writes one so the table opens with these columns.
VIEW_KEY = "iotwatch"
VIEW_COLUMNS = {
    "device-recognition": (
        "params.`model`",
        "metrics.`validation/accuracy`",
        "metrics.`test/accuracy`",
        "metrics.`test/f1_macro`",
        "metrics.`devices/accuracy`",
        "metrics.`best_model/validation_accuracy`",
        "metrics.`best_model/test_accuracy`",
        "tags.`dataset`",
    ),
    "behaviour": (
        "params.`device_type`",
        "metrics.`f1`",
        "metrics.`recall`",
        "metrics.`fpr`",
        "metrics.`auc`",
        "tags.`dataset`",
    ),
}


def share_view(client: Any, exp_id: str, concern: str) -> None:
    """Store the runs-table view of ``concern`` (its columns, newest first) as the experiment's
    shared view ``VIEW_KEY`` (MLflow keeps expanded rows out of shared views: "Expand rows")."""
    columns = VIEW_COLUMNS.get(concern)
    if not columns:
        return
    state = {
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "selectedColumns": list(columns),
    }
    client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(state))


def landing_url(port: int, exp_id: str | None) -> str:
    """The runs table (classic ML view, the shared view's columns) of the device-recognition
    experiment, newest first."""
    base = f"http://127.0.0.1:{port}/"
    if exp_id is None:
        return base + "#/experiments?workflowType=machine_learning"
    return (
        base + f"#/experiments/{exp_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={VIEW_KEY}"
    )


def _landing_experiment(cfg: TrackingConfig) -> str | None:
    import mlflow

    exp = mlflow.MlflowClient().get_experiment_by_name(
        f"{cfg.experiment_prefix}/{LANDING_EXPERIMENT}"
    )
    return None if exp is None else exp.experiment_id


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> int:
    """Stop the server's whole process group (mlflow ui runs uvicorn as a child): SIGTERM,
    then SIGKILL after ``grace_s``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.wait()
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def main(argv: list[str]) -> int:
    """`iotwatch ui`: start the MLflow UI on 127.0.0.1 for the project's store."""
    parser = argparse.ArgumentParser(prog="iotwatch ui", description=main.__doc__)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--backend-store-uri", default=TrackingConfig.tracking_uri)
    args = parser.parse_args(argv)
    cfg = TrackingConfig(tracking_uri=args.backend_store_uri)
    init_store(cfg)
    import mlflow

    client = mlflow.MlflowClient()
    for concern in EXPERIMENT_DESCRIPTIONS:  # descriptions, ML view and columns everywhere
        if client.get_experiment_by_name(f"{cfg.experiment_prefix}/{concern}"):
            share_view(client, experiment_id(cfg, concern), concern)
    url = landing_url(args.port, _landing_experiment(cfg))
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    # One worker: the default four take ~25 s to start on two cores.
    cmd = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", cfg.tracking_uri,
        "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1",
    ]  # fmt: skip
    # Its own process group, so that stopping `iotwatch ui` stops uvicorn too.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    print(f"MLflow UI: {url}  (Ctrl-C to stop)", flush=True)
    try:
        with sigterm_raises():
            return proc.wait()
    except KeyboardInterrupt:
        _stop_group(proc)
        raise
    finally:
        if proc.poll() is None:
            _stop_group(proc)
