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
    from tests.test_dvc_deps import dvc_stages

    dvc = dvc_stages()
    assert list(dvc) == list(STAGES)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    path_keys = set(PathsConfig.__dataclass_fields__)
    text = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    for ref in re.findall(r"\$\{([a-z_.]+)\}", text):
        if ref == "item":  # a foreach stage's item (dataset.generate / dataset.device_types)
            continue
        head, _, key = ref.partition(".")
        assert head in ("paths", "dataset"), ref
        if head == "paths":
            assert key in path_keys, ref
        assert key in params[head], ref
    for name, stage in dvc.items():
        item = " --device ${item}" if name in ("tune", "autoencoder") else ""
        assert stage["cmd"] == f"iotwatch stage {name}{item}"
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
        if src.is_file() and not rel.startswith(("data/", "models/", "reports/", "dvc.lock")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-4000:]}"
    return out


def _ran(output: str) -> set[str]:
    return {s.split("@")[0] for s in re.findall(r"Running stage '([a-z_@]+)'", output)}


def _commit(work: Path, message: str) -> None:
    _run(["git", "add", "-A"], work)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message], work)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project where `dvc repro` ran once on the tiny experiment."""
    work = tmp_path_factory.mktemp("e2e") / "repo"
    work.mkdir()
    _copy_repo(work)
    _run(["git", "init", "-q"], work)
    _commit(work, "copy")
    _run(["iotwatch", "params", "experiment=tiny"], work)
    out = _run(["dvc", "repro"], work)
    assert _ran(out) == set(STAGES), out[-3000:]
    _commit(work, "run")
    return work


def _classify(work: Path) -> dict:
    return json.loads((work / "reports/metrics/classify.json").read_text())


@pytest.mark.slow
def test_repro_writes_every_output_and_then_nothing_reruns(repo: Path) -> None:
    for rel in ("data/processed/train.parquet", "data/processed/validation.parquet",
                "data/processed/test.parquet", "data/processed/devices.parquet",
                "models/classifier.skops", "reports/figures/tsne.png", "reports/report.md",
                "reports/plots/confusion.csv", "mlruns/mlflow.db", "mlruns/optuna.db",
                "reports/metrics/anomaly.json", "reports/anomaly/summary.png"):  # fmt: skip
        assert (repo / rel).is_file(), rel
    params = yaml.safe_load((repo / "params.yaml").read_text())
    anomaly = json.loads((repo / "reports/metrics/anomaly.json").read_text())
    for device in params["dataset"]["device_types"]:  # one tune@ and autoencoder@ each
        assert (repo / "models/tuned" / f"{device}.json").is_file(), device
        assert (repo / "models/anomaly" / device / "state_dict.pt").is_file(), device
        assert {"f1", "recall", "fpr", "auc", "baselines"} <= set(anomaly[device]), device
    assert _classify(repo)["best_model"]["selected_on"] == "validation"
    assert _ran(_run(["dvc", "repro"], repo)) == set()
    status = _run(["dvc", "status", "--json"], repo)
    assert json.loads(status) == {}, status


@pytest.mark.slow
def test_exp_run_with_a_classify_param_reruns_classify_and_report_only(repo: Path) -> None:
    before = _classify(repo)
    out = _run(
        ["dvc", "exp", "run", "-S", "experiment=tiny",
         "-S", "classify.models.svm.params.C=0.01"], repo,
    )  # fmt: skip
    # export bundles it; the watch period is monitored with the new bundle, the report shows it
    assert _ran(out) == {"classify", "report", "export", "watch"}, out[-3000:]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["classify"]["models"]["svm"]["params"]["C"] == 0.01
    after = _classify(repo)
    # that model's metrics change (C=0.01 underfits), the others' do not
    assert after["svm"]["validation"] != before["svm"]["validation"]
    for model in ("random_forest", "gaussian_nb"):
        assert after[model]["test"] == before[model]["test"]
    shown = _run(["dvc", "exp", "show", "--csv"], repo)
    assert "classify.models.svm.params.C" in shown
    # back to the committed state for the other tests
    _run(["git", "checkout", "--", "."], repo)
    _run(["dvc", "checkout", "--force"], repo)


@pytest.mark.slow
def test_a_changed_module_marks_the_stages_that_run_it(repo: Path) -> None:
    inventory = repo / "src/iotwatch/inventory.py"
    original = inventory.read_text()
    inventory.write_text(original + "\n# labelling changed\n")
    try:
        changed = set(json.loads(_run(["dvc", "status", "--json"], repo)))
    finally:
        inventory.write_text(original)
    # inventory.py labels flows: the flows stage (and synth, which writes the inventory)
    assert {"flows", "synth@home"} <= changed
    assert "classify" not in changed and "report" not in changed


@pytest.mark.slow
def test_a_real_capture_dataset_does_not_run_the_synthesizer(repo: Path) -> None:
    # the user's own captures, where conf/dataset/captures.yaml expects them
    shutil.copytree(repo / "data/raw/synthetic/benign", repo / "data/raw/captures")
    shutil.copy2(repo / "data/raw/synthetic/inventory.csv", repo / "data/raw/inventory.csv")
    _run(["iotwatch", "params", "experiment=tiny", "dataset=captures"], repo)
    try:
        out = _run(["dvc", "repro", "--dry"], repo)
        stages = yaml.safe_load((repo / "params.yaml").read_text())["dataset"]["generate"]
    finally:
        _run(["git", "checkout", "--", "params.yaml", "conf/choices.yaml"], repo)
        shutil.rmtree(repo / "data/raw/captures")
        (repo / "data/raw/inventory.csv").unlink()
    assert stages == []
    assert "synth" not in _ran(out) and "flows" in _ran(out), out[-2000:]


@pytest.mark.slow
def test_multirun_jobs_are_logged_with_their_override_values(repo: Path) -> None:
    import mlflow

    _run(
        ["iotwatch", "run", "classify", "-m", "experiment=tiny",
         "classify.models.svm.params.C=0.5,50.0", "hydra/launcher=joblib",
         "hydra.launcher.n_jobs=2"], repo,
    )  # fmt: skip
    jobs = sorted((repo / "multirun").glob("*/*/[0-9]"))
    assert len(jobs) == 2
    for job in jobs:  # each job writes its own metrics, never the pipeline's
        assert "svm" in json.loads((job / "reports/metrics/classify.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlruns/mlflow.db")
    runs = mlflow.search_runs(
        experiment_names=["iotwatch/device-recognition"], output_format="list"
    )
    svm_runs = [
        r for r in runs
        if r.info.run_name == "classify/svm" and r.data.params.get("C") in ("0.5", "50.0")
    ]  # fmt: skip
    assert sorted(r.data.params["C"] for r in svm_runs) == ["0.5", "50.0"]


def _no_times(m: object) -> object:
    if isinstance(m, dict):
        return {k: _no_times(v) for k, v in m.items() if not k.endswith("seconds")}
    return m


@pytest.mark.slow
def test_step_two_is_tracked_and_a_forced_rerun_gives_identical_metrics(repo: Path) -> None:
    import mlflow

    path = repo / "reports/metrics/anomaly.json"
    before = json.loads(path.read_text())
    device = yaml.safe_load((repo / "params.yaml").read_text())["dataset"]["device_types"][0]
    out = _run(["dvc", "repro", "-f", "-s", f"autoencoder@{device}", "anomaly"], repo)
    assert f"autoencoder@{device}" in out
    after = json.loads(path.read_text())
    assert _no_times(after) == _no_times(before)
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["iotwatch/behaviour"], output_format="list")
    names = {r.info.run_name for r in runs}
    assert {f"anomaly/{device}", f"tune/{device}", f"tune/{device}/trial-0"} <= names
    dev_run = next(r for r in runs if r.info.run_name == f"anomaly/{device}")
    for key in ("test/f1", "test/fpr", "test/auc", "test/recall", "val/f1", "val_loss"):
        assert key in dev_run.data.metrics, key
    # the monitor's bundle, the stage's folder and the registered version hold the same weights
    import hashlib

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    weights = "weights.safetensors"
    staged = digest(repo / "models/anomaly" / device / weights)
    _run(["dvc", "repro", "export"], repo)
    assert digest(repo / "models/bundle/anomaly" / device / weights) == staged
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='iotwatch-anomaly-{device}'")
    latest = max(versions, key=lambda v: int(v.version))
    assert latest.tags[f"sha256.{weights}"] == staged
    _run(["git", "checkout", "--", "."], repo)


@pytest.mark.slow
def test_multirun_over_anomaly_parameters(repo: Path) -> None:
    _run(
        ["iotwatch", "run", "autoencoder", "anomaly", "-m", "experiment=tiny",
         "anomaly.tuned=false", "anomaly.hidden=4,8", "anomaly.device=tplink_plug"], repo,
    )  # fmt: skip
    jobs = sorted((repo / "multirun").glob("*/*/[0-9]"))
    jobs = [j for j in jobs if (j / "reports/metrics/anomaly.json").is_file()]
    assert len(jobs) == 2
    hidden = []
    for job in jobs:  # each job its own models and metrics, never the pipeline's
        folder = job / "models/anomaly/tplink_plug"
        hidden.append(json.loads((folder / "model.json").read_text())["hparams"]["hidden"])
        assert "tplink_plug" in json.loads((job / "reports/metrics/anomaly.json").read_text())
    assert sorted(hidden) == [4, 8]


def test_build_caches_do_not_count_as_code_changes(tmp_path: Path) -> None:
    """The numba JIT path writes its cache beside the kernels: DVC must ignore it."""
    code = (
        "from iotwatch.flowmeter import FlowConfig, meter_captures\n"
        "import sys\n"
        "meter_captures([sys.argv[1]], FlowConfig())\n"
    )
    from scapy.all import IP, TCP, Ether, wrpcap

    cap = tmp_path / "c.pcap"
    frames = [
        Ether() / IP(src="10.0.0.2", dst="10.0.0.9") / TCP(sport=40000, dport=443, flags=f)
        for f in ("S", "A", "PA", "FA")
    ]
    for i, fr in enumerate(frames):
        fr.time = 1_700_000_000 + i
    wrpcap(str(cap), frames)

    def untracked() -> set[str]:
        out = subprocess.run(
            ["git", "ls-files", "-o", "-z", "src"], cwd=REPO, capture_output=True, check=True
        ).stdout.decode()
        return {u for u in out.split("\0") if u}

    # a fresh JIT cache: drop the one an earlier run left, then meter once with the JIT
    for old in (REPO / "src").rglob("*.nb[ic]"):
        old.unlink()
    before = untracked()
    _run([sys.executable, "-c", code, str(cap)], REPO, env={"IOTWATCH_KERNELS": "jit"})
    new = sorted(untracked() - before)
    assert any(u.endswith((".nbi", ".nbc")) for u in new), new  # the JIT cache
    proc = subprocess.run(
        [str(BIN / "dvc"), "check-ignore", "--non-matching", "--details", *new],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    not_ignored = [ln for ln in proc.stdout.splitlines() if ln.startswith("::")]
    assert not not_ignored, f"DVC would see build products as code changes: {not_ignored}"
