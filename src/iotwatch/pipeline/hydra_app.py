"""`iotwatch run STAGE... [-m] [OVERRIDE...]`: run stages from conf/ with Hydra (sweeps).

Experiments outside DVC: every job composes conf/ with its overrides, runs the named stages
and logs to MLflow. Jobs never overwrite the DVC pipeline's outputs: the paths a job writes are
re-rooted into its Hydra job folder (outputs/... or multirun/...); inputs produced by stages
not being run are read from the pipeline's usual places.

    iotwatch run classify -m classify.models.knn.params.n_neighbors=1,5,15
    iotwatch run features classify -m features.split=stratified,time seed=1,2,3
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from iotwatch.config import find_conf_dir
from iotwatch.errors import ConfigError

log = logging.getLogger(__name__)


def _rerooted(data: dict[str, Any], stages: list[str], job_dir: Path) -> dict[str, Any]:
    """Send every path the given stages write (and the metrics folder) into ``job_dir``."""
    from iotwatch.pipeline.stages import STAGES

    paths = dict(data["paths"])
    keys = {"metrics_dir"} | {k for s in stages for k in STAGES[s].outputs}
    for key in keys:
        paths[key] = str(job_dir / paths[key])
    return {**data, "paths": paths}


def _split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    from iotwatch.pipeline.stages import STAGES

    stages = []
    rest = list(argv)
    while rest and not rest[0].startswith("-") and "=" not in rest[0]:
        name = rest.pop(0)
        if name not in STAGES:
            raise ConfigError(f"unknown stage '{name}'; stages: {', '.join(STAGES)}")
        stages.append(name)
    return stages, rest


def main(argv: list[str]) -> int:
    """Entry point of `iotwatch run`."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        from iotwatch.pipeline.stages import STAGES

        print("stages: " + ", ".join(STAGES))
        return 0
    stages, hydra_args = _split_args(argv)
    if not stages:
        raise ConfigError("name at least one stage, e.g. `iotwatch run classify -m seed=1,2`")

    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from iotwatch.config import from_dict, section
    from iotwatch.pipeline.params_cli import compose_params
    from iotwatch.pipeline.stages import params_from_dict, run_stage
    from iotwatch.tracking import TrackingConfig, init_store

    conf_dir = find_conf_dir()
    # Create the MLflow tables once, before parallel workers race on them; honour a
    # (non-swept) tracking override such as tracking.tracking_uri=http://server:5000.
    tracking_overrides = [a for a in hydra_args if a.startswith("tracking.") and "," not in a]
    base = yaml.safe_load(compose_params(tracking_overrides, conf_dir))
    init_store(from_dict(TrackingConfig, section(base, "tracking"), "tracking"))

    def task(cfg: DictConfig) -> float | None:
        data = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(data, dict)
        job_dir = Path(HydraConfig.get().runtime.output_dir)
        params = params_from_dict(_rerooted(data, stages, job_dir), "conf/ (Hydra)")
        metrics: dict[str, Any] = {}
        for name in stages:
            metrics = run_stage(name, params)
        # A scalar return lets sweepers optimise: the best classifier's VALIDATION accuracy
        # (never a test figure: test is only reported).
        best = metrics.get("best_model") if isinstance(metrics, dict) else None
        if isinstance(best, dict) and "validation_accuracy" in best:
            return float(best["validation_accuracy"])
        return None

    app = hydra.main(config_path=str(conf_dir), config_name="config", version_base="1.3")(task)
    saved = sys.argv
    sys.argv = ["iotwatch-run", *hydra_args]
    try:
        app()
    finally:
        sys.argv = saved
    return 0
