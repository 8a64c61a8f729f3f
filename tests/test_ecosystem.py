"""DVC and Hydra as their users expect: `iotwatch params` choices survive `dvc exp run`, Hydra
jobs are tagged with the dataset they really read and their sweep, `dvc plots show` has a
picture per model and works offline, `dvc metrics show` keeps the compared figures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from iotwatch.classify import ESTIMATORS
from iotwatch.errors import ConfigError
from iotwatch.pipeline.params_cli import merge_overrides

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{(proc.stdout + proc.stderr)[-3000:]}"
    return proc.stdout + proc.stderr


def _project(tmp_path: Path) -> Path:
    """conf/, .dvc/config and a one-stage dvc.yaml reading the params DVC recomposes."""
    work = tmp_path / "repo"
    shutil.copytree(REPO / "conf", work / "conf")
    (work / ".dvc").mkdir()
    shutil.copy2(REPO / ".dvc/config", work / ".dvc/config")
    (work / "conf/choices.yaml").unlink(missing_ok=True)
    stage = {
        "cmd": f"{sys.executable} -c \"import yaml; p = yaml.safe_load(open('params.yaml')); "
        "open('used.txt', 'w').write(p['dataset']['name'])\"",
        "params": ["dataset.name", "classify.models.knn.params.n_neighbors"],
        "outs": [{"used.txt": {"cache": False}}],
    }
    (work / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"use": stage}}))
    _run(["git", "init", "-q"], work)
    return work


def test_params_choices_survive_dvc_exp_run(tmp_path: Path) -> None:
    work = _project(tmp_path)
    _run(["iotwatch", "params", "dataset=iot_sentinel", "seed=7"], work)
    assert (work / "conf/choices.yaml").is_file()
    _run(["git", "add", "-A"], work)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "mine"], work)
    _run(["dvc", "exp", "run", "-S", "classify.models.knn.params.n_neighbors=9"], work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert params["dataset"]["name"] == "iot_sentinel"  # was silently `synthetic`
    assert params["seed"] == 7
    assert params["classify"]["models"]["knn"]["params"]["n_neighbors"] == 9
    assert (work / "used.txt").read_text() == "iot_sentinel"
    # --check agrees with what DVC composed, minus the -S value
    _run(["iotwatch", "params", "--reset"], work)
    assert yaml.safe_load((work / "params.yaml").read_text())["dataset"]["name"] == "synthetic"


def test_choices_merge_by_key_and_bad_ones_are_one_line(tmp_path: Path) -> None:
    assert merge_overrides(["dataset=a", "seed=1"], ["seed=2", "x.y=3"]) == [
        "dataset=a", "seed=2", "x.y=3"
    ]  # fmt: skip
    work = _project(tmp_path)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    for bad in ("dataset=nope", "nosuch.key=1", "seed=1,2"):
        proc = subprocess.run(
            ["iotwatch", "params", bad], cwd=work, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (work / "conf/choices.yaml").exists()  # nothing half-written
    with pytest.raises(ConfigError):
        merge_overrides([], ["seed=[1"])


def test_committed_choices_are_conf_defaults() -> None:
    from iotwatch.pipeline.params_cli import saved_overrides

    assert saved_overrides(REPO / "conf") == []
    cfg = (REPO / ".dvc/config").read_text()
    assert "config_name = choices" in cfg


def _plots() -> list:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]


def test_dvc_plots_show_a_confusion_matrix_per_model_tsne_and_the_anomaly_curves() -> None:
    ids = [next(iter(p)) if isinstance(p, dict) else p for p in _plots()]
    files = [next(iter(p[k]["y"])) for p in _plots() if isinstance(p, dict) for k in p]
    for name in ESTIMATORS:
        assert f"${{paths.plots_dir}}/confusion_{name}.csv" in files, name
    assert "${paths.figures_dir}/tsne.png" in ids and "${paths.anomaly_plots}" in ids


def test_dvc_plots_html_works_offline() -> None:
    from iotwatch.plots_offline import LIBRARIES, TEMPLATE

    template = REPO / TEMPLATE
    assert "html_template = plots/offline.html" in (REPO / ".dvc/config").read_text()
    text = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in text and "<script src=" not in text and "cdn." not in text
    for spec in LIBRARIES:
        assert f"/* {spec} (npm) */" in text


def test_dvc_metrics_are_the_compared_figures_only() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("synth", "flows", "features", "tsne"):
        stage = stages[name].get("do", stages[name])
        assert "metrics" not in stage, f"{name}: a summary, not a compared metric"
    assert "metrics" in stages["classify"]


def test_hydra_jobs_are_tagged_with_the_dataset_they_read_and_their_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from tests.ml.conftest import make_flows

    from iotwatch.context import StageContext
    from iotwatch.features import FeaturesConfig
    from iotwatch.features import run as run_features
    from iotwatch.tracking import TrackingConfig, stage_run

    work = _project(tmp_path)
    # the pipeline's params.yaml and its feature tables are of the IoT Sentinel dataset
    _run(["iotwatch", "params", "dataset=iot_sentinel", "experiment=tiny"], work)
    monkeypatch.chdir(work)
    from iotwatch.pipeline.stages import params_from_dict

    params = params_from_dict(yaml.safe_load((work / "params.yaml").read_text()))
    paths = params.paths
    Path(paths.flows).parent.mkdir(parents=True)
    make_flows(per_class=40, seed=1, units=2).to_parquet(paths.flows)
    ctx = StageContext(paths=paths, dataset=replace(params.dataset, ground_truth=None), seed=1)
    with stage_run("features", TrackingConfig(enabled=False), None) as sr:
        run_features(params.typed("features", FeaturesConfig), ctx, sr)
    # a job whose configuration names another dataset, classify only (reads those tables)
    _run(["iotwatch", "run", "classify", "-m", "dataset=synthetic", "seed=1,2"], work)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("iotwatch/device-recognition")
    parents = [
        r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "classify"
    ]  # fmt: skip
    assert len(parents) == 2
    assert {r.data.tags["dataset"] for r in parents} == {"iot_sentinel"}  # what was read
    assert sorted(r.data.tags["hydra.job_num"] for r in parents) == ["0", "1"]
    for r in parents:
        assert r.data.tags["hydra.mode"] == "multirun"
        assert Path(r.data.tags["hydra.sweep_dir"]).is_dir()
        assert "dataset=synthetic" in r.data.tags["hydra.overrides"]
        config = mlflow.artifacts.load_text(f"{r.info.artifact_uri}/hydra/config.yaml")
        assert "seed: " + r.data.tags["hydra.overrides"].split("seed=")[1][0] in config
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'"
    )
    assert children and all(c.data.tags["hydra.job_num"] for c in children)
