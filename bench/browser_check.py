"""Browser check (headless Chromium): `dvc plots show` renders offline, and screenshots of
the MLflow views people use. Run in a project where `dvc repro` ran:

    python bench/browser_check.py [--repo DIR] [--out DIR]

Prints what it checked and where the PNGs are; exits 0 when every DVC plot rendered (a vega
plot as an <svg>/<canvas>, an image as <img>), 1 otherwise, 77 without Chromium. The
screenshots are for people to look at: the device-recognition runs table, the compare view of
the classifiers and of the per-device autoencoders, and the DVC plots page.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def _browser(exe: str, url: str, *args: str, budget_ms: int = 20000) -> str:
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--virtual-time-budget={budget_ms}", "--window-size=1600,1000", *args, url,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout


def check_dvc_plots(exe: str, repo: Path, out: Path) -> bool:
    """`dvc plots show` to out/dvc_plots, then count rendered plots in the DOM (file://, so no
    network: vega must come from the template)."""
    target = out / "dvc_plots"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(
        ["dvc", "plots", "show", "--out", str(target)],
        cwd=repo, env=env, check=True, capture_output=True,
    )  # fmt: skip
    page = target / "index.html"
    html = page.read_text()
    vega = len(re.findall(r"vegaEmbed\('#", html))  # the plots' calls, not the inlined library
    images = len(re.findall(r'<img src="static/', html))
    dom = _browser(exe, page.as_uri(), "--dump-dom")
    rendered = len(re.findall(r"<svg[^>]*class=\"marks\"|<canvas[^>]*class=\"marks\"", dom))
    _browser(exe, page.as_uri(), f"--screenshot={out / 'dvc_plots.png'}", "--window-size=1600,4000")
    cdn = "cdn.jsdelivr" in html
    print(f"dvc plots: {vega} vega plots, {rendered} rendered; {images} images; CDN used: {cdn}")
    return rendered == vega and vega > 0 and images > 0 and not cdn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_screenshots(exe: str, repo: Path, out: Path) -> None:
    import mlflow

    uri = f"sqlite:///{repo}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    port = _free_port()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    ui = subprocess.Popen(
        ["iotwatch", "ui", "--port", str(port), "--backend-store-uri", uri],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert ui.stdout is not None
        landing = ui.stdout.readline().split()[2]
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("MLflow UI did not start")
            time.sleep(0.5)
        time.sleep(2)
        shots = {"mlflow_runs_table.png": landing}
        for concern, prefix, png in (
            ("device-recognition", "classify/", "mlflow_compare_classifiers.png"),
            ("behaviour", "anomaly/", "mlflow_compare_autoencoders.png"),
        ):
            exp = client.get_experiment_by_name(f"iotwatch/{concern}")
            if exp is None:
                continue
            runs = [
                r for r in client.search_runs([exp.experiment_id], order_by=["start_time DESC"])
                if r.info.run_name.startswith(prefix) and r.info.run_name.count("/") == 1
            ]  # fmt: skip
            latest: dict[str, str] = {}
            for r in runs:
                latest.setdefault(r.info.run_name, r.info.run_id)
            ids = json.dumps(list(latest.values()))
            shots[png] = (
                f"http://127.0.0.1:{port}/#/compare-runs?runs={ids}"
                f"&experiments={json.dumps([exp.experiment_id])}"
            )
        for png, url in shots.items():
            size = "2200,1100" if png == "mlflow_runs_table.png" else "1800,3200"
            _browser(exe, url, f"--screenshot={out / png}", f"--window-size={size}")
            print(f"screenshot {out / png}: {url}")
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--out", type=Path, default=Path("reports/browser"))
    args = parser.parse_args()
    exe = chromium()
    if exe is None:
        print("skipped: no Chromium (Debian: apt-get install chromium)")
        return 77
    args.out.mkdir(parents=True, exist_ok=True)
    ok = check_dvc_plots(exe, args.repo.resolve(), args.out.resolve())
    mlflow_screenshots(exe, args.repo.resolve(), args.out.resolve())
    print("dvc plots render offline" if ok else "FAILED: some dvc plots did not render")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
