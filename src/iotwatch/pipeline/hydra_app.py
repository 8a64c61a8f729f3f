"""`iotwatch run STAGE... [-m] [OVERRIDE...]`: run stages from conf/ with Hydra (sweeps).

Experiments outside DVC: every job composes conf/ with its overrides, runs the named stages
and logs to MLflow. Jobs never overwrite the DVC pipeline's outputs: the paths a job writes are
re-rooted into its Hydra job folder (outputs/... or multirun/...); inputs produced by stages
not being run are read from the pipeline's usual places.

    iotwatch run classify -m classify.models.knn.params.n_neighbors=1,5,15
    iotwatch run features classify -m features.split=stratified,time seed=1,2,3

Jobs compose conf/choices.yaml (your `iotwatch params` choices) like DVC does. Each job's
MLflow runs are tagged with the dataset the stages really read (the pipeline's, from
params.yaml, when the flows stage is not among the job's stages: its flows or features come
from the pipeline's outputs), the sweep (``hydra.sweep_dir``, ``hydra.job_num``,
``hydra.overrides``) and carry the composed configuration as ``hydra/config.yaml``.
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


# Stages that read the dataset's captures themselves: with one of them in the job, the job's
# own dataset is what its stages use; otherwise they read the pipeline's flows or features.
_READS_CAPTURES = ("synth", "flows")


def dataset_used(stages: list[str], job_dataset: str, pipeline_params: Path) -> str:
    """The dataset the job's stages really read: the job's own when it meters captures, else
    the one the pipeline's outputs were made from (params.yaml's ``dataset.name``)."""
    if any(s in _READS_CAPTURES for s in stages):
        return job_dataset
    try:
        data = yaml.safe_load(pipeline_params.read_text(encoding="utf-8")) or {}
        name = str(data["dataset"]["name"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        log.warning("%s: cannot read the pipeline's dataset; tagging the job's", pipeline_params)
        return job_dataset
    if name != job_dataset:
        log.warning(
            "the job's configuration names dataset %s, but %s read the pipeline's outputs, "
            "made from dataset %s: runs are tagged %s",
            job_dataset, ", ".join(stages), name, name,
        )  # fmt: skip
    return name


def job_tags(hc: object, dataset: str) -> dict[str, str]:
    """MLflow tags of a Hydra job: the dataset it used and where it sits in its sweep."""
    from hydra.types import RunMode

    mode = getattr(hc, "mode", None)
    tags = {
        "dataset": dataset,
        "hydra.mode": "multirun" if mode == RunMode.MULTIRUN else "run",
        "hydra.job_dir": str(Path(hc.runtime.output_dir).resolve()),  # type: ignore[attr-defined]
        "hydra.overrides": " ".join(hc.overrides.task) or "(none)",  # type: ignore[attr-defined]
    }
    if mode == RunMode.MULTIRUN:
        tags["hydra.sweep_dir"] = str(Path(hc.sweep.dir).resolve())  # type: ignore[attr-defined]
        tags["hydra.job_num"] = str(hc.job.num)  # type: ignore[attr-defined]
    return tags


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
    from iotwatch.pipeline.params_cli import compose_params, primary_config
    from iotwatch.pipeline.stages import params_from_dict, run_stage
    from iotwatch.tracking import TrackingConfig, init_store

    conf_dir = find_conf_dir()
    pipeline_params = Path("params.yaml").resolve()
    # Create the MLflow tables once, before parallel workers race on them; honour a
    # (non-swept) tracking override such as tracking.tracking_uri=http://server:5000.
    tracking_overrides = [a for a in hydra_args if a.startswith("tracking.") and "," not in a]
    base = yaml.safe_load(compose_params(tracking_overrides, conf_dir))
    init_store(from_dict(TrackingConfig, section(base, "tracking"), "tracking"))

    def task(cfg: DictConfig) -> float | None:
        data = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(data, dict)
        hc = HydraConfig.get()
        job_dir = Path(hc.runtime.output_dir)
        params = params_from_dict(_rerooted(data, stages, job_dir), "conf/ (Hydra)")
        options = {
            "tags": job_tags(hc, dataset_used(stages, params.dataset.name, pipeline_params)),
            "texts": {"hydra/config.yaml": OmegaConf.to_yaml(cfg, resolve=True)},
        }
        metrics: dict[str, Any] = {}
        for name in stages:
            metrics = run_stage(name, params, run_options=options)
        # A scalar return lets sweepers optimise: the best classifier's VALIDATION accuracy
        # (never a test figure: test is only reported).
        best = metrics.get("best_model") if isinstance(metrics, dict) else None
        if isinstance(best, dict) and "validation_accuracy" in best:
            return float(best["validation_accuracy"])
        return None

    app = hydra.main(
        config_path=str(conf_dir), config_name=primary_config(conf_dir), version_base="1.3"
    )(task)
    saved = sys.argv
    sys.argv = ["iotwatch-run", *hydra_args]
    try:
        app()
    finally:
        sys.argv = saved
    return 0
