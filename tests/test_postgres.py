"""Past one machine through the engines themselves, with real servers: PostgreSQL on 127.0.0.1
in a temporary folder holds one Optuna study that two `iotwatch tune` worker processes share
(trials split between them, none lost or duplicated) and the database of an `mlflow server`
the workers log to; then both servers are stopped.

Skips with the reason where Debian's `postgresql` (initdb, pg_ctl) or psycopg (3: SQLAlchemy
2.1's driver for postgresql:// URLs) is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _pg_bin() -> Path:
    for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (cand / "initdb").is_file():
            return cand
    found = shutil.which("initdb")
    if found is None:
        pytest.skip("PostgreSQL not installed (Debian: apt-get install postgresql)")
    return Path(found).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 in a temporary folder; yields postgresql://...:PORT."""
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'psycopg[binary]')")
    pg = _pg_bin()
    folder = Path(tempfile.mkdtemp(prefix="iotwatch-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own user, its folder
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run PostgreSQL as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = folder / "data"

    def pg_run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    pg_run(str(pg / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=60"
    pg_run(
        str(pg / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(folder / "log"), "-w", "start"
    )
    try:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE mlflow")
            conn.execute("CREATE DATABASE optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*prefix, str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True, timeout=120,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` backed by the PostgreSQL database ``mlflow``; yields its URL."""
    port = _free_port()
    art = tmp_path_factory.mktemp("mlflow-artifacts")
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(art / "server.log", "w")  # noqa: SIM115 (open for the server's lifetime)
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"{postgres}/mlflow",
         "--artifacts-destination", str(art), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "mlflow server did not start:\n" + (art / "server.log").read_text()[-3000:]
                )
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    with socket.socket() as s:  # stopped: nothing listens any more
        assert s.connect_ex(("127.0.0.1", port)) != 0


def _project(tmp: Path, tracking_uri: str) -> Path:
    """params.yaml (tiny, one device type, MLflow on the server) and its feature tables."""
    from tests.anomaly.conftest import write_tables

    from iotwatch.pipeline.params_cli import compose_params
    from iotwatch.pipeline.stages import params_from_dict

    data = yaml.safe_load(compose_params(["experiment=tiny"], REPO / "conf"))
    data["tracking"]["tracking_uri"] = tracking_uri
    data["dataset"]["device_types"] = ["camera"]
    data["anomaly"]["hidden"] = 6
    data["tune"].update({"trials": 6, "pruner": "none", "max_epochs": 3})
    data["paths"] = {k: str(tmp / v) for k, v in data["paths"].items()}
    (tmp / "params.yaml").write_text(yaml.safe_dump(data))
    write_tables(params_from_dict(data).paths)
    return tmp / "params.yaml"


def test_two_tune_workers_share_a_postgres_study_and_log_to_an_mlflow_server(
    postgres: str, mlflow_server: str, tmp_path: Path
) -> None:
    import mlflow
    import optuna

    params = _project(tmp_path, mlflow_server)
    storage = f"{postgres}/optuna"
    optuna.create_study(storage=storage, study_name="warm-up")  # tables before the race
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    procs = [
        subprocess.Popen(
            [
                str(BIN / "iotwatch"),
                "tune",
                "--params",
                str(params),
                "--device",
                "camera",
                "--storage",
                storage,
                "--worker",
                str(w),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for w in (0, 1)
    ]
    outs = [p.communicate(timeout=540)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    tuned = yaml.safe_load(params.read_text())["paths"]["anomaly_tuned"]
    res = json.loads((Path(tuned) / "camera.json").read_text())
    done = [
        t for t in optuna.load_study(study_name=res["study"], storage=storage).trials
        if t.state.is_finished()
    ]  # fmt: skip
    # every trial ran once, split between the workers (one may start a last extra trial)
    assert 6 <= len(done) <= 7
    assert len({t.number for t in done}) == len(done)
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done)
    assert {t.user_attrs.get("worker") for t in done} == {0, 1}
    # the stage's runs are in the MLflow server, closed, from both workers
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("iotwatch/behaviour")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    assert len({r.data.tags["iotwatch.pid"] for r in parents}) == 2
    assert len(runs) > len(parents)  # the trials' child runs
