"""MLflow runs are closed whatever happens (KILLED on SIGINT/SIGTERM, stale runs of dead
processes FAILED at the next stage start), a bogus tracking URI is one line, and `iotwatch ui`
lands on the runs table and takes its server down with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from iotwatch.errors import ConfigError
from iotwatch.tracking import TrackingConfig, stage_run

BIN = Path(sys.executable).parent


def _cfg(tmp_path: Path) -> TrackingConfig:
    return TrackingConfig(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art")
    )


def _client(cfg: TrackingConfig):  # noqa: ANN202
    import mlflow

    return mlflow.MlflowClient(tracking_uri=cfg.tracking_uri)


def _runs(cfg: TrackingConfig) -> dict[str, str]:
    """{run name: status} of every run in the store."""
    client = _client(cfg)
    exps = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_name: r.info.status for r in client.search_runs(exps)}


def _sigint_default() -> None:
    """In the child before exec: SIGINT as in a terminal. A test run started in the background
    of a non-interactive shell (``make test &``) ignores SIGINT, its children inherit that and
    Python then installs no KeyboardInterrupt handler: the SIGINT cases would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_stage(tmp_path: Path) -> subprocess.Popen[str]:
    """A process inside a stage run and a child run, waiting to be stopped."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from iotwatch.tracking import TrackingConfig, stage_run
        cfg = TrackingConfig(tracking_uri="sqlite:///{tmp_path}/mlflow.db",
                             artifact_root="{tmp_path}/art")
        with stage_run("classify", cfg, None) as sr, sr.child("classify/svm"):
            print("ready", flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_sigint_default,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_marks_the_runs_killed(tmp_path: Path, sig: signal.Signals) -> None:
    proc = _start_stage(tmp_path)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert _runs(_cfg(tmp_path)) == {"classify": "KILLED", "classify/svm": "KILLED"}


def test_runs_of_a_dead_process_are_closed_failed_at_the_next_stage_start(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    proc = _start_stage(tmp_path)
    proc.kill()  # SIGKILL: nothing in the process can close its runs
    proc.wait(timeout=30)
    assert set(_runs(cfg).values()) == {"RUNNING"}
    # a run of this (live) process and one of another host stay RUNNING
    with stage_run("classify", cfg, None, run_name="live") as live, stage_run("tsne", cfg, None):
        client = _client(cfg)
        exp = client.get_run(live.run_id).info.experiment_id
        other = client.create_run(
            exp,
            run_name="elsewhere",
            tags={"stage": "classify", "iotwatch.host": "not-" + socket.gethostname(),
                  "iotwatch.pid": "1"},
        )  # fmt: skip
        with stage_run("classify", cfg, None, run_name="next") as sr:
            mid = {r.info.run_name: r.info.status for r in client.search_runs([exp])}
            assert mid["classify/svm"] == "FAILED" and mid["elsewhere"] == "RUNNING"
            assert mid["classify"] == "FAILED" and mid["live"] == "RUNNING"  # this process
            assert sr.run_id
        client.set_terminated(other.info.run_id)
    dead = [r for r in client.search_runs([exp]) if r.data.tags.get("iotwatch.closed")]
    assert sorted(r.info.run_name for r in dead) == ["classify", "classify/svm"]
    assert all(r.info.status == "FAILED" for r in dead)


@pytest.mark.parametrize(
    "uri, words",
    [
        ("nosuch://server/x", "unknown scheme"),
        ("http://127.0.0.1:9", "no MLflow server answers"),
        ("sqlite://relative.db", "sqlite:///"),
    ],
)
def test_a_bogus_tracking_uri_is_one_line(tmp_path: Path, uri: str, words: str) -> None:
    cfg = TrackingConfig(tracking_uri=uri, artifact_root=str(tmp_path / "art"))
    with pytest.raises(ConfigError) as exc, stage_run("report", cfg, None):
        pass
    msg = str(exc.value)
    assert "tracking.tracking_uri" in msg and words in msg and "\n" not in msg, msg


def test_a_bogus_tracking_uri_through_the_cli_is_one_line_without_traceback(
    tmp_path: Path,
) -> None:
    import yaml
    from tests.test_pipeline import REPO

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tracking"]["tracking_uri"] = "mysql+nodriver://u@127.0.0.1:1/x"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [str(BIN / "iotwatch"), "stage", "report"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "tracking.tracking_uri" in errors[0], proc.stderr[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_iotwatch_ui_stops_its_server(tmp_path: Path, sig: signal.Signals) -> None:
    cfg = _cfg(tmp_path)
    with stage_run("classify", cfg, None, concern="device-recognition"):
        pass
    port = _free_port()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(
        [str(BIN / "iotwatch"), "ui", "--port", str(port), "--backend-store-uri", cfg.tracking_uri],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=_sigint_default,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        # the runs table of the device-recognition experiment, classic ML view
        assert "/runs?workflowType=machine_learning" in banner, banner
        deadline = time.monotonic() + 90
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not _listening(port), f"the server still listens on {port} after {sig.name}"
    finally:
        if proc.poll() is None:
            proc.kill()


class _RacingClient:
    """An MLflow client whose tag insert loses a race once: the other worker's write lands
    first and this one gets the store's unique-key error (as on PostgreSQL)."""

    def __init__(self, other_value: str) -> None:
        self.tags: dict[str, str] = {}
        self.other_value = other_value
        self.calls = 0

    def set_experiment_tag(self, exp_id: str, key: str, value: str) -> None:
        self.calls += 1
        if self.calls == 1:
            self.tags[key] = self.other_value
            raise RuntimeError('duplicate key value violates unique constraint "experiment_tag_pk"')
        self.tags[key] = value

    def get_experiment(self, exp_id: str):  # noqa: ANN201
        from types import SimpleNamespace

        return SimpleNamespace(tags=dict(self.tags))


def test_a_tag_race_lost_to_a_worker_writing_the_same_value_is_no_error() -> None:
    from iotwatch.tracking import _set_experiment_tag

    client = _RacingClient(other_value="custom_model_development")
    _set_experiment_tag(client, "1", "mlflow.experimentKind", "custom_model_development")
    assert client.calls == 1


def test_a_tag_race_lost_to_a_different_value_is_retried() -> None:
    from iotwatch.tracking import _set_experiment_tag

    client = _RacingClient(other_value="old")
    _set_experiment_tag(client, "1", "note", "new")
    assert client.calls == 2 and client.tags["note"] == "new"
