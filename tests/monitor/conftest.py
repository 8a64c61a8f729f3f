"""Tiny trained models for the monitor tests, made once per session through the library.

Two synthetic homes from the tiny profile (one day each): ``train`` (seed 7) gives the flows the classifier and
the per-type autoencoders are fitted on, the way the pipeline fits them (features, a stratified
validation split, ``classify.make_pipeline``, ``anomaly.stage.run_device``); ``other`` (seed 8)
is the traffic the monitor has never seen. ``bundle`` is the exported bundle of all four types,
``bundle_without(t)`` one whose classifier and autoencoders never saw type ``t``.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from iotwatch.flowmeter.config import FlowConfig

SEED = 7
OTHER_SEED = 8
LOCAL_NET = "192.168.1.0/24"
DAYS = 1.0  # the tiny profile's 6 hours give a device too few flows for votes of 20


@dataclasses.dataclass(frozen=True)
class Trained:
    """Everything the tests share."""

    root: Path
    train_home: Path
    other_home: Path
    tables: dict[str, pd.DataFrame]
    bundle: Path
    make: Callable[[str | None], Path]


def _home(out: Path, seed: int) -> Path:
    from iotwatch.synth.cli import load_config
    from iotwatch.synth.dataset import generate

    if not (out / "ground_truth.csv").is_file():
        generate(load_config("tiny", seed=seed, days=DAYS), out)
    return out


def _tables(home: Path) -> dict[str, pd.DataFrame]:
    from iotwatch.features import (
        FeaturesConfig,
        build_features,
        malicious_features,
        read_ground_truth,
        split_stratified,
    )
    from iotwatch.flowmeter import meter_captures
    from iotwatch.ingest import list_captures
    from iotwatch.inventory import read_inventory_csv

    inv = read_inventory_csv(home / "inventory.csv")
    cfg = FlowConfig()
    benign = meter_captures(list_captures(home / "benign"), cfg, inventory=inv).table.to_pandas()
    mal = meter_captures(list_captures(home / "malicious"), cfg, inventory=inv).table.to_pandas()
    feats = build_features(benign, cfg.n_packets, "device_type", "benign")
    feats = feats[feats["label"].notna()].reset_index(drop=True)
    train, validation = split_stratified(feats, 0.3, SEED)
    malicious, _ = malicious_features(mal, read_ground_truth(home / "ground_truth.csv"),
                                      FeaturesConfig(), "malicious")  # fmt: skip
    return {"train": train, "validation": validation, "test": validation, "malicious": malicious}


def _autoencoders(root: Path, tables: dict[str, pd.DataFrame]) -> Path:
    """One autoencoder per device type, as the anomaly stage trains it (small and quick)."""
    from iotwatch.anomaly.data import Tables, device_data
    from iotwatch.anomaly.stage import AnomalyConfig, run_device
    from iotwatch.features import model_columns
    from iotwatch.tracking import StageRun

    out = root / "anomaly"
    acfg = AnomalyConfig(hidden=16, max_epochs=25, batch_size=128, patience=4, accelerator="cpu",
                         min_train_flows=20, plots=False, baselines={})  # fmt: skip
    cols = model_columns(tables["train"])
    tabs = Tables(tables["train"], tables["validation"], tables["test"], tables["malicious"], cols)
    for device in tabs.device_types():
        d = device_data(tabs, device, "device", 0.5, SEED)
        run_device(acfg, d, SEED, out, root / "plots", StageRun("anomaly", None, None))
    return out


def _fit(root: Path, tables: dict[str, pd.DataFrame], anomaly: Path, without: str | None) -> Path:
    """The classifier (optionally never seeing type ``without``), then the bundle with every
    other type's autoencoder (an autoencoder is fitted on its own type's flows only)."""
    from iotwatch.bundle import ExportInputs, write_bundle
    from iotwatch.classify import ClassifierBundle, ModelConfig, make_pipeline, save_classifier
    from iotwatch.features import LABEL, model_columns

    keep = {k: t if without is None else t[t[LABEL].astype(str) != without].reset_index(drop=True)
            for k, t in tables.items() if k != "malicious"}  # fmt: skip
    work = root / f"models-{without or 'all'}"
    cols = model_columns(keep["train"])
    pipe = make_pipeline("random_forest", ModelConfig(params={"n_estimators": 30, "n_jobs": 1}),
                         SEED)  # fmt: skip
    pipe.fit(keep["train"][cols], keep["train"][LABEL].astype(str).to_numpy())
    labels = sorted(set(keep["train"][LABEL].astype(str)))
    save_classifier(
        ClassifierBundle(pipe, labels, cols, "random_forest"), work / "classifier.skops"
    )
    for folder in anomaly.iterdir():
        if folder.name != without:
            shutil.copytree(folder, work / "anomaly" / folder.name)
    val_path = work / "validation.parquet"
    keep["validation"].to_parquet(val_path)
    keep["train"].to_parquet(work / "train.parquet")
    inputs = ExportInputs(
        classifier=work / "classifier.skops", anomaly_models=work / "anomaly",
        features_validation=val_path, training_tables=[work / "train.parquet", val_path],
        metrics_dir=None, flow_config=FlowConfig(), local_networks=[],
    )  # fmt: skip
    out = work / "bundle"
    write_bundle(inputs, out)
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("monitor")
    train_home = _home(root / "home-train", SEED)
    other_home = _home(root / "home-other", OTHER_SEED)
    tables = _tables(train_home)
    anomaly = _autoencoders(root, tables)
    made: dict[str | None, Path] = {}

    def make(without: str | None = None) -> Path:
        if without not in made:
            made[without] = _fit(root, tables, anomaly, without)
        return made[without]

    return Trained(root, train_home, other_home, tables, make(None), make)


def read_alerts(path: Path) -> list[dict[str, Any]]:
    import json

    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [a for a in lines if a.get("kind") != "incident"]  # the alerts, not the incidents


def flow_key(a: dict[str, Any]) -> tuple[Any, ...]:
    return (a["device_ip"], a["device_port"], a["peer_ip"], a["peer_port"], a["proto"])


@pytest.fixture(scope="session")
def hue_home(trained: Trained) -> Path:
    """The unseen home with a fifth device type the models never saw (the synthesizer's Hue
    bridge template), or skip when this synthesizer has none."""
    from iotwatch.errors import IotwatchError
    from iotwatch.synth.cli import load_config
    from iotwatch.synth.dataset import generate

    try:
        cfg = load_config("tiny", seed=OTHER_SEED, days=DAYS, extra_devices=["hue_bridge"])
    except (TypeError, IotwatchError) as exc:
        pytest.skip(f"the synthesizer has no hue_bridge device template ({exc})")
    out = trained.root / "home-hue"
    if not (out / "ground_truth.csv").is_file():
        generate(cfg, out)
    return out
