"""Hand-made feature tables for the anomaly tests (the features stage's Parquet schema)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tests.ml.conftest import make_flows

from iotwatch.features import build_features, empty_malicious
from iotwatch.paths import PathsConfig

# Legitimate device types: camera and plug are modelled, bulb gets no attacks, 'rare' is too small.
LEGIT = {"camera": (900.0, 120.0, 0.02), "plug": (180.0, 260.0, 0.5), "bulb": (90.0, 70.0, 2.0)}
# Attacks: big sent packets at a high rate (flood) or tiny packets (scan).
ATTACKS = {"flood": (1400.0, 40.0, 0.001), "scan": (40.0, 40.0, 0.0005)}


def feature_tables(per_class: int = 100, seed: int = 0) -> dict[str, pd.DataFrame]:
    """train / validation / test (60/20/20 per class) and malicious tables."""
    legit = build_features(
        make_flows(per_class=per_class, seed=seed, classes=LEGIT), 10, "device_type", "legit"
    )
    rare = build_features(
        make_flows(per_class=12, seed=seed + 1, classes={"rare": (500.0, 500.0, 1.0)}),
        10, "device_type", "rare",
    )  # fmt: skip
    table = pd.concat([legit, rare], ignore_index=True)
    rng = np.random.default_rng(seed)
    part = np.empty(len(table), dtype=object)
    for _, idx in table.groupby("label").groups.items():
        idx = rng.permutation(np.asarray(idx))
        n = len(idx)
        part[idx[: int(0.6 * n)]] = "train"
        part[idx[int(0.6 * n) : int(0.8 * n)]] = "validation"
        part[idx[int(0.8 * n) :]] = "test"
    out = {k: table[part == k].reset_index(drop=True) for k in ("train", "validation", "test")}
    mals = []
    for i, (attack, params) in enumerate(ATTACKS.items()):
        flows = make_flows(per_class=40, seed=seed + 10 + i, classes={"camera": params})
        mal = build_features(flows, 10, "device_type", "malicious")
        mal["attack_type"] = pd.array([attack] * len(mal), dtype="string")
        # 30 aimed at the camera, 10 at the plug
        target = np.where(np.arange(len(mal)) < 30, "camera", "plug")
        mal["gt_device_type"] = pd.array(target, dtype="string")
        mal["gt_device_name"] = pd.array([f"{t}-1" for t in target], dtype="string")
        mals.append(mal)
    mal = pd.concat(mals, ignore_index=True)
    # an unmatched malicious-capture flow (no ground truth): never used
    extra = mal.iloc[:1].copy()
    extra[["attack_type", "gt_device_type", "gt_device_name"]] = pd.NA
    mal = pd.concat([mal, extra], ignore_index=True)
    assert list(mal.columns) == list(empty_malicious(10).columns)
    out["malicious"] = mal
    return out


def write_tables(
    paths: PathsConfig,
    split_seed: int = 7,
    malicious: str = "device",
    attack_ratio: float | None = None,
    **kwargs: object,
) -> dict[str, pd.DataFrame]:
    """The feature tables and, as the features stage writes them, the per-device tables."""
    from iotwatch.features import FeaturesConfig, write_anomaly_tables

    tables = feature_tables(**kwargs)  # type: ignore[arg-type]
    for key, path in (
        ("train", paths.features_train),
        ("validation", paths.features_validation),
        ("test", paths.features_test),
        ("malicious", paths.features_malicious),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        tables[key].to_parquet(path, index=False)
    tables["train"].iloc[0:0].to_parquet(paths.features_devices, index=False)
    cfg = FeaturesConfig(anomaly_malicious=malicious, anomaly_attack_ratio=attack_ratio)  # type: ignore[arg-type]
    write_anomaly_tables(
        tables["train"], tables["validation"], tables["test"], tables["malicious"], cfg, [],
        paths.anomaly_data, split_seed,
    )  # fmt: skip
    return tables
