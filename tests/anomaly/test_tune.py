"""The tune stage: Optuna studies per device type, resumable, shared by workers, validation only."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import yaml
from tests.ml.conftest import composed, make_paths

from iotwatch.anomaly.stage import AnomalyConfig, tuned_params
from iotwatch.anomaly.tune import TuneConfig, TuneStageConfig, redacted, run, storage_url
from iotwatch.config import from_dict, to_dict
from iotwatch.context import StageContext
from iotwatch.errors import InputError
from iotwatch.tracking import TrackingConfig, stage_run

from .conftest import write_tables

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp: Path, **tune_over: object) -> TuneStageConfig:
    a = yaml.safe_load((REPO / "conf/anomaly/tiny.yaml").read_text())
    a.update({"hidden": 6, "device": "camera"})
    t = yaml.safe_load((REPO / "conf/tune/tiny.yaml").read_text())
    t.update({"storage": f"sqlite:///{tmp}/optuna.db", "max_epochs": 3}, **tune_over)
    return from_dict(TuneStageConfig, {"tune": t, "anomaly": a}, "tune+anomaly", strict=True)


def _ctx(tmp: Path) -> StageContext:
    dataset = replace(composed("experiment=tiny").dataset, device_types=[])
    return StageContext(paths=make_paths(tmp), dataset=dataset, seed=5)


def _tune(tmp: Path, cfg: TuneStageConfig, worker: int = 0, mlflow: bool = False) -> dict:
    tracking = TrackingConfig(
        tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifact_root=str(tmp / "art"), enabled=mlflow
    )
    with stage_run("tune", tracking, None, concern="behaviour") as sr:
        return run(cfg, _ctx(tmp), sr, worker=worker)


def _trials(tmp: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp}/optuna.db").trials


def test_two_trials_then_resume_without_new_trials(tmp_path) -> None:
    import mlflow

    write_tables(make_paths(tmp_path))
    cfg = _cfg(tmp_path)
    res = _tune(tmp_path, cfg, mlflow=True)["camera"]
    assert res["tuned"] and sum(res["trials"].values()) == 2  # complete + pruned
    assert set(res["params"]) == {"hidden", "sparsity_target", "sparsity_weight"}
    assert res["objective"] == "auc" and 0.5 <= res["value"] <= 1.0
    # trial 0 is conf/anomaly's own values: tuning never ends worse than them on validation
    trials = _trials(tmp_path, res["study"])
    assert trials[0].params == {"hidden": 6, "sparsity_target": 0.1, "sparsity_weight": 0.2}
    assert res["value"] >= res["defaults_value"]
    path = make_paths(tmp_path).anomaly_tuned / "camera.json"
    assert json.loads(path.read_text()) == res
    # the autoencoder stage trains with the tuned values (and can be told not to)
    acfg = cfg.anomaly
    tuned, applied = tuned_params(acfg, path)
    assert applied == res["params"] and tuned.hidden == res["params"]["hidden"]
    assert tuned_params(replace(acfg, tuned=False), path) == (replace(acfg, tuned=False), {})
    # a rerun resumes the study: nothing left to do, same result file
    again = _tune(tmp_path, cfg)["camera"]
    assert again == res and len(_trials(tmp_path, res["study"])) == 2
    # more trials asked: only the missing one runs
    more = _tune(tmp_path, replace(cfg, tune=replace(cfg.tune, trials=3)))["camera"]
    assert more["trials"]["complete"] + more["trials"]["pruned"] == 3
    # each trial is a nested MLflow run under the device's run
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("iotwatch/behaviour")
    names = sorted(r.info.run_name for r in client.search_runs([exp.experiment_id]))
    assert names == ["tune", "tune/camera", "tune/camera/trial-0", "tune/camera/trial-1"]
    trial_run = next(
        r for r in client.search_runs([exp.experiment_id])
        if r.info.run_name == "tune/camera/trial-0"
    )  # fmt: skip
    assert "val/auc" in trial_run.data.metrics and "val_loss" in trial_run.data.metrics
    assert trial_run.data.tags["optuna.state"] == "COMPLETE"


def test_changed_data_starts_a_new_study(tmp_path) -> None:
    write_tables(make_paths(tmp_path), split_seed=1)
    first = _tune(tmp_path, _cfg(tmp_path, trials=1))["camera"]["study"]
    write_tables(make_paths(tmp_path), split_seed=2)
    second = _tune(tmp_path, _cfg(tmp_path, trials=1))["camera"]["study"]
    assert first != second


def _worker(tmp: str, worker: int) -> None:
    _tune(Path(tmp), _cfg(Path(tmp), trials=6, pruner="none"), worker=worker)


def test_two_worker_processes_share_one_sqlite_study(tmp_path) -> None:
    write_tables(make_paths(tmp_path))
    # create the study (and its tables) before the workers race for it
    optuna.create_study(storage=storage_url(_cfg(tmp_path).tune), study_name="warm-up")
    code = "import sys; from tests.anomaly.test_tune import _worker; _worker(sys.argv[1], int(sys.argv[2]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(w)], cwd=REPO)
        for w in (0, 1)
    ]
    for p in procs:
        assert p.wait(300) == 0
    res = json.loads((make_paths(tmp_path).anomaly_tuned / "camera.json").read_text())
    trials = _trials(tmp_path, res["study"])
    done = [t for t in trials if t.state.is_finished()]
    # every trial ran once: distinct numbers and parameters, none lost (a worker may start one
    # more while the other finishes the last)
    assert 6 <= len(done) <= 7
    assert len({t.number for t in done}) == len(done)
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done)
    assert {t.user_attrs.get("worker") for t in done} == {0, 1}


def test_no_attack_flows_is_a_clear_skip(tmp_path) -> None:
    write_tables(make_paths(tmp_path))
    cfg = _cfg(tmp_path)
    res = _tune(tmp_path, replace(cfg, anomaly=replace(cfg.anomaly, device="bulb")))["bulb"]
    assert res["tuned"] is False and "attack flows" in res["reason"]


def test_zero_trials_writes_an_untuned_file(tmp_path) -> None:
    write_tables(make_paths(tmp_path))
    res = _tune(tmp_path, _cfg(tmp_path, trials=0))["camera"]
    assert res == {
        "format": "iotwatch-tuned/1", "device_type": "camera", "tuned": False,
        "reason": "tune.trials is 0",
    }  # fmt: skip


def test_unreachable_storage_is_one_clear_error(tmp_path) -> None:
    write_tables(make_paths(tmp_path))
    cfg = _cfg(tmp_path, storage="postgresql://user:secret@127.0.0.1:1/none")
    with pytest.raises(InputError, match=r"cannot open the Optuna storage .*user:\*\*\*@"):
        _tune(tmp_path, cfg)


def test_redacted_and_sqlite_made_absolute(tmp_path, monkeypatch) -> None:
    assert redacted("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redacted("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.chdir(tmp_path)
    url = storage_url(TuneConfig(storage="sqlite:///mlruns/o.db"))
    assert url == f"sqlite:///{tmp_path}/mlruns/o.db" and (tmp_path / "mlruns").is_dir()


def test_defaults_equal_default_yaml_and_bad_search() -> None:
    data = yaml.safe_load((REPO / "conf/tune/default.yaml").read_text())
    assert to_dict(from_dict(TuneConfig, data, "tune", strict=True)) == to_dict(TuneConfig())
    with pytest.raises(ValueError, match="unknown parameter"):
        TuneConfig(search={"epochs": [1, 2]})
    with pytest.raises(ValueError, match="low <= high"):
        TuneConfig(search={"hidden": [8, 4]})


def test_bad_tuned_file_is_input_error(tmp_path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"tuned": True, "params": {"epochs": 3}}))
    with pytest.raises(InputError, match="unknown tuned parameter"):
        tuned_params(AnomalyConfig(), path)
