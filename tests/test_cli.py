"""The `iotwatch` dispatcher: help, clean errors (never a traceback), and the MLflow UI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from iotwatch.cli import COMMANDS, main

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _iotwatch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "iotwatch"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in out


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_stage_without_params_is_a_clean_error(tmp_path: Path) -> None:
    proc = _iotwatch("stage", "flows", cwd=tmp_path)
    assert proc.returncode == 2
    assert "params.yaml: not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def _write_params(tmp_path: Path, *overrides: str) -> None:
    """A complete params.yaml (conf/ composed, as `iotwatch params` writes it) in ``tmp_path``."""
    from iotwatch.pipeline.params_cli import compose_params

    text = compose_params(["tracking.enabled=false", *overrides], REPO / "conf")
    (tmp_path / "params.yaml").write_text(text)


def test_stage_with_missing_captures_is_a_clean_error(tmp_path: Path) -> None:
    _write_params(tmp_path, "dataset=captures", "dataset.captures=nowhere")
    proc = _iotwatch("stage", "flows", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nowhere: no such capture file or directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stage_with_bad_config_value_names_it(tmp_path: Path) -> None:
    _write_params(tmp_path, "flows.idle_timeout=soon")
    proc = _iotwatch("stage", "flows", cwd=tmp_path)
    assert proc.returncode == 2
    assert "flows.idle_timeout" in proc.stderr and "Traceback" not in proc.stderr


def test_stage_with_a_key_left_out_names_it(tmp_path: Path) -> None:
    _write_params(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(params.read_text().replace("  reorder_window: 2.0\n", ""))
    proc = _iotwatch("stage", "flows", cwd=tmp_path)
    assert proc.returncode == 2
    assert "params.yaml: flows: missing key(s) ['reorder_window']" in proc.stderr
    assert "Traceback" not in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_ui_serves_the_store_on_localhost(tmp_path: Path) -> None:
    port = _free_port()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(
        [str(BIN / "iotwatch"), "ui", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        body = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert body.strip() == "OK"
        assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    finally:
        os.killpg(proc.pid, 15)
        out = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in out
