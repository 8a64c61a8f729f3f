"""Typed views of params.yaml's shared sections: paths and dataset.

No defaults: every value comes from conf/ (config.yaml `paths:`, conf/dataset/*.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class PathsConfig:
    """Every file or folder the pipeline reads or writes (conf/config.yaml `paths:`)."""

    synth_dir: Path
    flows: Path
    flows_malicious: Path
    features_train: Path
    features_validation: Path
    features_test: Path
    features_devices: Path
    features_malicious: Path
    metrics_dir: Path
    figures_dir: Path
    plots_dir: Path
    models_dir: Path
    classifier: Path
    anomaly_data: Path
    anomaly_tuned: Path
    anomaly_models: Path
    anomaly_plots: Path
    anomaly_curves: Path
    report: Path


@dataclass
class DatasetConfig:
    """Where the captures and their labels are (conf/dataset/*.yaml)."""

    name: str
    # Stages that generate this dataset (dvc.yaml runs the synth stage once per item): [home]
    # for the built-in synthetic home, [] for real captures (nothing is generated).
    generate: list[str]
    captures: Path
    malicious: Path | None
    inventory: Path
    inventory_format: str
    ground_truth: Path | None
    # Optional CSV (ip and/or mac, label) naming the malicious hosts of the `malicious`
    # captures: every flow of a listed host is an attack of that label. Without it (and without
    # ground_truth) every flow of those captures is an attack.
    malicious_hosts: Path | None
    # Device types that get an anomaly detector (dvc.yaml runs tune@/autoencoder@ per item).
    device_types: list[str]
    # CIDRs of the monitored network (which side of a flow is the device): the one home of
    # this setting; the flows stage hands it to the flow meter (FlowConfig.local_networks).
    local_networks: list[str]
