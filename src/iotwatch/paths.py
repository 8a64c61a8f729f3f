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
    watch_data: Path
    watch_plots: Path
    report: Path


@dataclass
class WatchInfection:
    """An attack capture's infected host rewritten onto one of the home's devices
    (``iotwatch watchset``): what the watch period is known to be infected with."""

    device: str  # the infected device: its inventory name
    attack: Path  # the attack capture (an infected host's traffic, recorded anywhere)
    host: str  # the infected host's IPv4 address in that capture
    label: str  # attack type written to the ground truth
    after_days: float  # the attack's first packet, in days after the watch period starts


@dataclass
class WatchConfig:
    """The deployment evaluation: the monitor trained on the first ``train_days`` watches the
    rest (the watch stage; ``reports/metrics/watch.json``)."""

    captures: Path  # captures watched (their packets after the training period)
    extra: Path | None  # attack captures merged in as they are (e.g. the synthetic home's)
    attacks: Path | None  # ground-truth CSV of ``extra`` (features' ground-truth format)
    infection: WatchInfection | None = None


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
    # Days of traffic (from the captures' first packet) the pipeline trains on; the rest is the
    # watch period (null: every flow trains).
    train_days: float | None
    # The deployment evaluation over the days after training (null: none; the watch stage
    # then writes an empty report).
    watch: WatchConfig | None

    def __post_init__(self) -> None:
        if self.train_days is not None and not self.train_days > 0:
            raise ValueError(f"train_days must be > 0, got {self.train_days}")
        if self.watch is not None and self.train_days is None:
            raise ValueError("watch needs train_days (the watch period is what follows it)")
