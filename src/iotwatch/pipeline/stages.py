"""Pipeline wiring: each stage's work lives in its own module behind ``run(cfg, ctx, sr)``;
this module only types the stage's params section, opens its MLflow run and calls it.

`iotwatch stage NAME` is what dvc.yaml runs; `iotwatch run` (Hydra) calls the same functions
with a composed configuration. Stage code never composes conf/ itself.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotwatch.config import from_dict, read_params, section
from iotwatch.context import StageContext
from iotwatch.errors import ConfigError
from iotwatch.paths import DatasetConfig, PathsConfig
from iotwatch.tracking import StageRun, TrackingConfig, stage_run

log = logging.getLogger(__name__)


@dataclass
class Params:
    """params.yaml as typed objects; stage sections stay dicts until their stage types them."""

    seed: int
    tracking: TrackingConfig
    paths: PathsConfig
    dataset: DatasetConfig
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "params.yaml"

    def typed(self, name: str, cls: type) -> Any:
        """Build the dataclass ``cls`` from section ``name`` (clear error when wrong)."""
        return from_dict(cls, self.sections.get(name), f"{self.source}: {name}", strict=True)


def params_from_dict(data: dict[str, Any], source: str = "params.yaml") -> Params:
    """Type the shared sections of a composed configuration."""
    seed = data.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{source}: seed must be an integer, got {seed!r}")
    return Params(
        seed=seed,
        tracking=from_dict(
            TrackingConfig, section(data, "tracking", source), f"{source}: tracking", strict=True
        ),
        paths=from_dict(
            PathsConfig, section(data, "paths", source), f"{source}: paths", strict=True
        ),
        dataset=from_dict(
            DatasetConfig, section(data, "dataset", source), f"{source}: dataset", strict=True
        ),
        sections={k: v for k, v in data.items() if isinstance(v, dict)},
        source=source,
    )


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: the module whose ``run(cfg, ctx, sr)`` does its work, the params
    section typed into its config, its MLflow experiment and the paths it writes."""

    module: str  # iotwatch module holding ``run(cfg, ctx: StageContext, sr: StageRun)``
    config: str | None  # "Class" in that module (or "module:Class") typed from ``section``
    # params.yaml section of the stage's own settings; a tuple types {name: section, ...}
    section: str | tuple[str, ...] | None
    concern: str  # MLflow experiment: iotwatch/<concern>
    logged: tuple[str, ...]  # params sections logged with the run (besides seed)
    outputs: tuple[str, ...]  # keys of `paths` it writes (re-rooted per job in Hydra sweeps)
    # Writes reports/metrics/<stage>.json. Per-item stages (dvc.yaml foreach) do not: several
    # items would share the file; they write into their own outputs instead.
    metrics_file: bool = True

    def config_class(self) -> type | None:
        if self.config is None:
            return None
        module, _, name = self.config.rpartition(":")
        return getattr(importlib.import_module(module or self.module), name)

    def func(self) -> Callable[[Any, StageContext, StageRun], dict[str, Any]]:
        return importlib.import_module(self.module).run


STAGES: dict[str, Stage] = {
    "synth": Stage(
        "iotwatch.synth.stage", "iotwatch.synth.config:SynthConfig", "synth",
        "dataset", ("synth",), ("synth_dir",),
    ),
    "flows": Stage(
        "iotwatch.ingest", "iotwatch.flowmeter.config:FlowConfig", "flows",
        "dataset", ("flows", "dataset"), ("flows", "flows_malicious"),
    ),
    "features": Stage(
        "iotwatch.features", "FeaturesConfig", "features", "dataset", ("features", "dataset"),
        ("features_train", "features_validation", "features_test", "features_devices",
         "features_malicious"),
    ),
    "tsne": Stage(
        "iotwatch.tsne", "iotwatch.viz:TsneConfig", "tsne", "device-recognition", ("tsne",),
        ("figures_dir",),
    ),
    "classify": Stage(
        "iotwatch.classify", "ClassifyConfig", "classify", "device-recognition", ("classify",),
        ("classifier", "plots_dir"),
    ),
    "tune": Stage(
        "iotwatch.anomaly.tune", "TuneStageConfig", ("tune", "anomaly"), "behaviour",
        ("tune", "anomaly"), ("anomaly_tuned",), metrics_file=False,
    ),
    "autoencoder": Stage(
        "iotwatch.anomaly.stage", "AnomalyConfig", "anomaly", "behaviour", ("anomaly",),
        ("anomaly_models", "anomaly_plots"), metrics_file=False,
    ),
    "anomaly": Stage(
        "iotwatch.anomaly.summary", "iotwatch.anomaly.stage:AnomalyConfig", "anomaly",
        "behaviour", (), ("anomaly_plots", "anomaly_curves"),
    ),
    "report": Stage("iotwatch.report", None, None, "report", (), ("report",)),
    "export": Stage(
        "iotwatch.bundle", "iotwatch.flowmeter.config:FlowConfig", "flows", "monitor",
        ("flows",), ("models_dir",),
    ),
    "watch": Stage("iotwatch.watch", None, None, "monitor", (), ("watch_data", "watch_plots")),
}  # fmt: skip


def stage_config(stage: Stage, params: Params) -> Any:
    """The stage's typed settings (None for a stage without any)."""
    cls = stage.config_class()
    if cls is None or not stage.section:
        return None
    if isinstance(stage.section, str):
        return params.typed(stage.section, cls)
    data = {name: params.sections.get(name) for name in stage.section}
    where = f"{params.source}: {'+'.join(stage.section)}"
    return from_dict(cls, data, where, strict=True)


def run_stage(
    name: str, params: Params, *, run_options: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Run one stage inside its MLflow parent run; return its metrics. ``kwargs`` go to the
    stage's ``run`` (e.g. the tune stage's ``worker``), ``run_options`` to ``stage_run``
    (a Hydra job's tags and composed configuration)."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage '{name}'; stages: {', '.join(STAGES)}")
    stage = STAGES[name]
    logged = {"seed": params.seed}
    for s in stage.logged:
        logged[s] = params.sections.get(s, {})
    cfg = stage_config(stage, params)
    ctx = StageContext(paths=params.paths, dataset=params.dataset, seed=params.seed)
    func = stage.func()
    log.info("stage %s: starting", name)
    t0 = time.perf_counter()
    with stage_run(
        name,
        params.tracking,
        params.paths.metrics_dir if stage.metrics_file else None,
        concern=stage.concern,
        dataset=params.dataset.name,
        params=logged,
        **(run_options or {}),
    ) as sr:
        metrics = func(cfg, ctx, sr, **kwargs)
    log.info("stage %s: done in %.1f s", name, time.perf_counter() - t0)
    return metrics


def main(argv: list[str]) -> int:
    """Entry point of `iotwatch stage NAME` (what dvc.yaml runs)."""
    parser = argparse.ArgumentParser(
        prog="iotwatch stage", description="Run one pipeline stage configured by params.yaml."
    )
    parser.add_argument("name", choices=list(STAGES))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--device", default=None,
        help="one device type (dvc.yaml's tune@TYPE / autoencoder@TYPE): sets anomaly.device",
    )  # fmt: skip
    args = parser.parse_args(argv)
    data = read_params(args.params)
    if args.device is not None:
        data["anomaly"] = {**(data.get("anomaly") or {}), "device": args.device}
    params = params_from_dict(data, str(args.params))
    run_stage(args.name, params)
    return 0
