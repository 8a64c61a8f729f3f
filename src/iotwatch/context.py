"""What every pipeline stage receives besides its own section: the paths, the dataset, the seed."""

from __future__ import annotations

from dataclasses import dataclass

from iotwatch.paths import DatasetConfig, PathsConfig


@dataclass(frozen=True)
class StageContext:
    """The shared sections of params.yaml a stage's ``run(cfg, ctx, sr)`` may read."""

    paths: PathsConfig
    dataset: DatasetConfig
    seed: int
