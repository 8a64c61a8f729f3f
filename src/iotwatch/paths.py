"""Typed views of params.yaml's shared sections: paths and dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PathsConfig:
    """Every file or folder the pipeline reads or writes (conf/config.yaml `paths:`)."""

    synth_dir: Path = Path("data/raw/synthetic")
    flows: Path = Path("data/interim/flows.parquet")
    flows_malicious: Path = Path("data/interim/flows_malicious.parquet")
    features_train: Path = Path("data/processed/train.parquet")
    features_validation: Path = Path("data/processed/validation.parquet")
    features_test: Path = Path("data/processed/test.parquet")
    features_devices: Path = Path("data/processed/devices.parquet")
    features_malicious: Path = Path("data/processed/malicious.parquet")
    metrics_dir: Path = Path("reports/metrics")
    figures_dir: Path = Path("reports/figures")
    plots_dir: Path = Path("reports/plots")
    models_dir: Path = Path("models")
    classifier: Path = Path("models/classifier.skops")
    report: Path = Path("reports/report.md")


@dataclass
class DatasetConfig:
    """Where the captures and their labels are (conf/dataset/*.yaml)."""

    name: str = "synthetic"
    # Stages that generate this dataset (dvc.yaml runs the synth stage once per item): [home]
    # for the built-in synthetic home, [] for real captures (nothing is generated).
    generate: list[str] = field(default_factory=list)
    captures: Path = Path("data/raw/synthetic/benign")
    malicious: Path | None = None
    inventory: Path = Path("data/raw/synthetic/inventory.csv")
    inventory_format: str = "csv"
    ground_truth: Path | None = None
    local_networks: list[str] = field(default_factory=list)
