"""The platform: params.yaml in sync with conf/, dvc.yaml consistent with the stage runner,
and the whole pipeline end to end with DVC (tiny profile) in a temporary copy of the repo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from iotwatch.paths import PathsConfig
from iotwatch.pipeline.params_cli import compose_params
from iotwatch.pipeline.stages import STAGES, params_from_dict

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_committed_params_yaml_matches_conf() -> None:
    committed = (REPO / "params.yaml").read_text(encoding="utf-8")
    assert committed == compose_params([], REPO / "conf"), (
        "params.yaml is out of date with conf/: run `iotwatch params`"
    )


def test_params_yaml_types() -> None:
    data = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params = params_from_dict(data)
    assert params.dataset.name == "synthetic"
    assert params.tracking.tracking_uri == "sqlite:///mlruns/mlflow.db"
    # every stage section is typed by its stage without error
    from iotwatch.classify import ClassifyConfig
    from iotwatch.features import FeaturesConfig
    from iotwatch.flowmeter import FlowConfig
    from iotwatch.synth import SynthConfig
    from iotwatch.viz import TsneConfig

    for name, cls in [("synth", SynthConfig), ("flows", FlowConfig), ("features", FeaturesConfig),
                      ("tsne", TsneConfig), ("classify", ClassifyConfig)]:  # fmt: skip
        params.typed(name, cls)


def test_no_hydra_or_env_interpolations_in_conf() -> None:
    for path in (REPO / "conf").rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert "${hydra:" not in text and "${oc.env:" not in text, path


def test_dvc_yaml_matches_stage_runner() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    assert list(dvc["stages"]) == list(STAGES)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    path_keys = set(PathsConfig.__dataclass_fields__)
    text = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    for ref in re.findall(r"\$\{([a-z_.]+)\}", text):
        head, _, key = ref.partition(".")
        assert head in ("paths", "dataset"), ref
        if head == "paths":
            assert key in path_keys, ref
        assert key in params[head], ref
    for name, stage in dvc["stages"].items():
        assert stage["cmd"] == f"iotwatch stage {name}"
        for p in stage.get("params", []):
            top = p.split(".")[0]
            assert top in params, f"{name}: params section {p} not in params.yaml"
        for key in STAGES[name].outputs:
            assert f"${{paths.{key}}}" in yaml.safe_dump(stage), f"{name} must declare {key}"


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-4000:]}"
    return out


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z]+)'", output))


@pytest.mark.slow
def test_dvc_repro_then_exp_run_reruns_only_affected_stages(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    _copy_repo(work)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):  # fmt: skip
        _run(cmd, work)
    _run(["iotwatch", "params", "experiment=tiny"], work)
    out = _run(["dvc", "repro"], work)
    assert _ran(out) == set(STAGES)
    metrics = json.loads((work / "reports/metrics/classify.json").read_text())
    for model in ("random_forest", "gaussian_nb"):
        assert set(metrics[model]) >= {"accuracy", "precision_micro", "recall_micro",
                                       "f1_micro", "f1_macro"}  # fmt: skip
        assert 0.0 <= metrics[model]["accuracy"] <= 1.0
    assert (work / "reports/report.md").read_text().count("|") > 10
    assert (work / "reports/figures/tsne.png").stat().st_size > 1000
    assert (work / "models/classifier.skops").is_file()
    assert (work / "mlruns/mlflow.db").is_file()
    shown = _run(["dvc", "metrics", "show", "--json"], work)
    assert "classify.json" in shown

    # Nothing changed: nothing reruns.
    assert _ran(_run(["dvc", "repro"], work)) == set()
    _run(["git", "add", "-A"], work)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run"], work)

    # One classifier setting changed through DVC's Hydra composition: classify and report only.
    out = _run(
        ["dvc", "exp", "run", "-S", "experiment=tiny",
         "-S", "classify.models.knn.params.n_neighbors=7"], work,
    )  # fmt: skip
    assert _ran(out) == {"classify", "report"}, out[-3000:]
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert params["classify"]["models"]["knn"]["params"]["n_neighbors"] == 7
    shown = _run(["dvc", "exp", "show", "--csv"], work)
    assert "random_forest.accuracy" in shown and "classify.models.knn.params.n_neighbors" in shown

    # Hydra multirun outside DVC, two parallel jobs: each in its own folder, each in MLflow.
    _run(
        ["iotwatch", "run", "classify", "-m", "classify.optuna.enabled=false",
         "classify.models.knn.params.n_neighbors=1,5", "hydra/launcher=joblib",
         "hydra.launcher.n_jobs=2"], work,
    )  # fmt: skip
    jobs = sorted((work / "multirun").glob("*/*/[0-9]"))
    assert len(jobs) == 2
    accs = [json.loads((j / "reports/metrics/classify.json").read_text())["knn"]["accuracy"]
            for j in jobs]  # fmt: skip
    assert all(0 <= a <= 1 for a in accs)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    runs = mlflow.search_runs(
        experiment_names=["iotwatch/device-recognition"], output_format="list"
    )
    parents = [
        r for r in runs if r.info.run_name == "classify" and "mlflow.parentRunId" not in r.data.tags
    ]
    # dvc repro + dvc exp run + two sweep jobs = 4 classify stage runs, each with nested models
    assert len(parents) == 4
    assert all(r.data.tags["git_commit"] != "unknown" for r in parents)
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.info.run_name for r in nested} >= {"random_forest", "gaussian_nb"}
