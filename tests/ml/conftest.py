"""Fixtures for the ML tests: hand-made flow tables in the flow meter's schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iotwatch.features import feature_columns
from iotwatch.paths import PathsConfig

N = 10
# device type -> (mean sent size, mean recv size, mean iat s)
CLASSES = {
    "camera": (900.0, 120.0, 0.02),
    "plug": (180.0, 260.0, 0.5),
    "bulb": (90.0, 70.0, 2.0),
}


def make_flows(
    per_class: int = 40,
    seed: int = 0,
    classes: dict[str, tuple[float, float, float]] | None = None,
    t0: float = 1_700_000_000.0,
    unknown: int = 0,
    units: int = 1,
) -> pd.DataFrame:
    """A fake flow table of the flow meter's schema; classes drawn from different distributions.

    Each class has ``units`` device units (own MAC, IP and name ``<type>-<k>``), flows dealt
    round-robin."""
    rng = np.random.default_rng(seed)
    classes = classes or CLASSES
    rows = []
    fid = 0
    for ci, (dtype, (ms, mr, mi)) in enumerate(
        list(classes.items()) + [("", (500.0, 500.0, 1.0))] * (unknown > 0)
    ):
        count = unknown if dtype == "" else per_class
        for j in range(count):
            unit = j % units
            start = t0 + rng.uniform(0, 86400 * 3)
            row = {
                "capture": f"cap{j % 3}.pcap",
                "flow_id": fid,
                "proto": 6,
                "ip_version": 4,
                "vlan": 0,
                "dev_mac": f"02:00:00:00:{unit:02x}:{ci:02x}",
                "dev_ip": f"192.168.{1 + unit}.{10 + ci}",
                "dev_port": int(40000 + j),
                "peer_mac": "02:00:00:00:ff:ff",
                "peer_ip": "93.184.216.34",
                "peer_port": 443,
                "device_known": dtype != "",
                "device_type": dtype or None,
                "device_name": f"{dtype}-{unit + 1}" if dtype else None,
                "start": start,
            }
            fid += 1
            sizes_s = np.clip(rng.normal(ms, ms * 0.1, N), 40, 1500).astype("int32")
            sizes_r = np.clip(rng.normal(mr, mr * 0.1, N), 40, 1500).astype("int32")
            iat_s = rng.exponential(mi, N - 1)
            iat_r = rng.exponential(mi, N - 1)
            dur = float(iat_s.sum())
            row.update(end=start + dur, duration=dur, packets_sent=N, packets_recv=N,
                       bytes_sent=int(sizes_s.sum()), bytes_recv=int(sizes_r.sum()),
                       packets=2 * N, bytes=int(sizes_s.sum() + sizes_r.sum()), end_reason="fin")  # fmt: skip
            for i in range(N):
                row[f"size_sent_{i + 1}"] = sizes_s[i]
                row[f"size_recv_{i + 1}"] = sizes_r[i]
            for i in range(N - 1):
                row[f"iat_sent_{i + 1}"] = iat_s[i]
                row[f"iat_recv_{i + 1}"] = iat_r[i]
            rows.append(row)
    df = pd.DataFrame(rows)
    for c in feature_columns(N):
        df[c] = df[c].astype("int32" if c.startswith("size_") else "float64")
    df["device_type"] = df["device_type"].astype("string")
    df["device_name"] = df["device_name"].astype("string")
    return df


def make_paths(tmp_path: Path) -> PathsConfig:
    """Every pipeline path under ``tmp_path``."""
    return PathsConfig(
        synth_dir=tmp_path / "raw",
        flows=tmp_path / "interim/flows.parquet",
        flows_malicious=tmp_path / "interim/flows_malicious.parquet",
        features_train=tmp_path / "processed/train.parquet",
        features_validation=tmp_path / "processed/validation.parquet",
        features_test=tmp_path / "processed/test.parquet",
        features_devices=tmp_path / "processed/devices.parquet",
        features_malicious=tmp_path / "processed/malicious.parquet",
        metrics_dir=tmp_path / "reports/metrics",
        figures_dir=tmp_path / "reports/figures",
        plots_dir=tmp_path / "reports/plots",
        models_dir=tmp_path / "models",
        classifier=tmp_path / "models/classifier.skops",
        anomaly_data=tmp_path / "processed/anomaly",
        anomaly_tuned=tmp_path / "models/tuned",
        anomaly_models=tmp_path / "models/anomaly",
        anomaly_plots=tmp_path / "reports/anomaly",
        anomaly_curves=tmp_path / "reports/anomaly_curves",
        watch_data=tmp_path / "interim/watch",
        watch_plots=tmp_path / "reports/watch",
        report=tmp_path / "reports/report.md",
    )


@pytest.fixture
def paths(tmp_path: Path) -> PathsConfig:
    """Every pipeline path under a temporary folder."""
    return make_paths(tmp_path)


def composed(*overrides: str):  # noqa: ANN201
    """The real conf/ composed with ``overrides`` (as `iotwatch params` does), typed."""
    import yaml

    from iotwatch.pipeline.params_cli import compose_params
    from iotwatch.pipeline.stages import params_from_dict

    conf = Path(__file__).resolve().parents[2] / "conf"
    return params_from_dict(yaml.safe_load(compose_params(list(overrides), conf)))


@pytest.fixture
def flows_factory():  # noqa: ANN201
    """``flows_factory(per_class=40, seed=0, ...)``: a fake flow table (see ``make_flows``)."""
    return make_flows
