"""Pipeline stages: each reads its typed config from params.yaml and records its metrics.

`iotwatch stage NAME` is what dvc.yaml runs; `iotwatch run` (Hydra) calls the same functions
with a composed configuration. Stage code never composes conf/ itself.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from iotwatch.config import from_dict, read_params, section
from iotwatch.errors import ConfigError, InputError
from iotwatch.paths import DatasetConfig, PathsConfig
from iotwatch.tracking import StageRun, TrackingConfig, stage_run

log = logging.getLogger(__name__)

CAPTURE_MAGICS = (
    b"\xd4\xc3\xb2\xa1",  # pcap, little-endian, microseconds
    b"\xa1\xb2\xc3\xd4",  # pcap, big-endian, microseconds
    b"\x4d\x3c\xb2\xa1",  # pcap, little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d",  # pcap, big-endian, nanoseconds
    b"\x0a\x0d\x0d\x0a",  # pcapng section header
    b"\x1f\x8b",  # gzip
)


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
        return from_dict(cls, self.sections.get(name), f"{self.source}: {name}")


def params_from_dict(data: dict[str, Any], source: str = "params.yaml") -> Params:
    """Type the shared sections of a composed configuration."""
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{source}: seed must be an integer, got {seed!r}")
    return Params(
        seed=seed,
        tracking=from_dict(
            TrackingConfig, section(data, "tracking", source), f"{source}: tracking"
        ),
        paths=from_dict(PathsConfig, section(data, "paths", source), f"{source}: paths"),
        dataset=from_dict(DatasetConfig, section(data, "dataset", source), f"{source}: dataset"),
        sections={k: v for k, v in data.items() if isinstance(v, dict)},
        source=source,
    )


def list_captures(path: Path) -> list[Path]:
    """A capture file, or every capture (recognised by magic number) under a directory."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such capture file or directory")
    found = []
    for p in sorted(path.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        with p.open("rb") as fh:
            head = fh.read(4)
        if head.startswith(CAPTURE_MAGICS):
            found.append(p)
    return found


# --- stages -------------------------------------------------------------------------------


def stage_synth(p: Params, sr: StageRun) -> dict[str, Any]:
    """Generate the synthetic smart home (captures, inventory, ground truth)."""
    from iotwatch.synth import SynthConfig, generate

    cfg = p.typed("synth", SynthConfig)
    out = p.paths.synth_dir
    metrics = generate(cfg, out, progress=True)
    sr.record(metrics)
    return metrics


def _meter_dataset(
    captures: Path, p: Params, flow_cfg: Any, *, required: bool
) -> tuple[Any, dict[str, Any]]:
    """Meter every capture of a dataset folder with its inventory; return (table, metrics)."""
    import pyarrow as pa

    from iotwatch.flowmeter import meter_captures
    from iotwatch.flowmeter.packets import ReadStats
    from iotwatch.inventory import load_inventory

    files = list_captures(captures)
    if not files:
        if required:
            raise InputError(f"{captures}: no capture files found (pcap, pcapng or gzip)")
        return None, {"files": 0}
    ds = p.dataset
    if ds.inventory_format == "sentinel":
        # One folder per device type, each labelled by its own MAC only: two folders may
        # share a MAC (HueSwitch / HueBridge), so a global inventory would mislabel them.
        folders: dict[Path, list[Path]] = {}
        for f in files:
            folders.setdefault(f.parent, []).append(f)
        groups = []
        for folder, group in sorted(folders.items()):
            try:
                groups.append((group, load_inventory(folder, "sentinel-folder")))
            except InputError as exc:
                log.warning("%s", exc)
    else:
        groups = [(files, load_inventory(ds.inventory, ds.inventory_format))]
    stats = ReadStats()
    tables = []
    for group, inv in groups:
        res = meter_captures(group, flow_cfg, inventory=inv, progress=len(groups) == 1)
        if len(groups) == 1:
            log.info("%s", res.summary_line())
        stats.merge(res.stats)
        tables.append(res.table)
    for issue in stats.issues[:10]:
        log.warning("%s", issue)
    table = pa.concat_tables(tables) if tables else None
    metrics = {
        "files": len(files),
        "packets_read": stats.packets_read,
        "packets_kept": stats.packets_kept,
        "skipped": dict(stats.skipped),
        "issues": len(stats.issues),
        "flows": sum(t.num_rows for t in tables),
    }
    return table, metrics


def _flows_per_type(table: Any) -> dict[str, int]:
    if table is None or table.num_rows == 0:
        return {}
    col = table.column("device_type").to_pylist()
    out: dict[str, int] = {}
    for v in col:
        key = v if v is not None else "unknown"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def stage_flows(p: Params, sr: StageRun) -> dict[str, Any]:
    """Meter the dataset's captures (benign and malicious) into flow tables."""
    from iotwatch.flowmeter import FlowConfig
    from iotwatch.flowmeter.schema import flow_schema

    cfg = p.typed("flows", FlowConfig)
    if p.dataset.local_networks and not cfg.local_networks:
        cfg = replace(cfg, local_networks=list(p.dataset.local_networks))
    t0 = time.perf_counter()
    benign, m_benign = _meter_dataset(p.dataset.captures, p, cfg, required=True)
    if benign is None:
        benign = flow_schema(cfg.n_packets).empty_table()
    malicious, m_mal = (None, {"files": 0})
    if p.dataset.malicious is not None:
        malicious, m_mal = _meter_dataset(p.dataset.malicious, p, cfg, required=False)
    if malicious is None:
        malicious = flow_schema(cfg.n_packets).empty_table()
    import pyarrow.parquet as pq

    for table, path in ((benign, p.paths.flows), (malicious, p.paths.flows_malicious)):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    seconds = time.perf_counter() - t0
    packets = m_benign.get("packets_read", 0) + m_mal.get("packets_read", 0)
    metrics = {
        "benign": {**m_benign, "flows_per_device_type": _flows_per_type(benign)},
        "malicious": {**m_mal, "flows_per_device_type": _flows_per_type(malicious)},
        "seconds": round(seconds, 3),
        "packets_per_s": round(packets / seconds, 1) if seconds > 0 else 0.0,
    }
    sr.record(metrics)
    return metrics


def stage_features(p: Params, sr: StageRun) -> dict[str, Any]:
    """Feature tables and the train/test split."""
    from iotwatch.features import FeaturesConfig
    from iotwatch.features import run as run_features

    return run_features(p.typed("features", FeaturesConfig), p.paths, p.dataset, p.seed, sr)


def stage_tsne(p: Params, sr: StageRun) -> dict[str, Any]:
    """t-SNE picture of the test features."""
    from iotwatch.viz import TsneConfig, run_tsne

    return run_tsne(p.typed("tsne", TsneConfig), p.paths, p.seed, sr)


def stage_classify(p: Params, sr: StageRun) -> dict[str, Any]:
    """Compare the six device-type classifiers."""
    from iotwatch.classify import ClassifyConfig
    from iotwatch.classify import run as run_classify

    return run_classify(p.typed("classify", ClassifyConfig), p.paths, p.seed, sr)


def stage_report(p: Params, sr: StageRun) -> dict[str, Any]:
    """Markdown report of the run."""
    from iotwatch.report import run_report

    return run_report(p.paths, sr)


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: its function, MLflow experiment and the params sections it reads."""

    func: Callable[[Params, StageRun], dict[str, Any]]
    concern: str
    sections: tuple[str, ...]
    outputs: tuple[str, ...]  # keys of `paths` it writes (re-rooted per job in Hydra sweeps)


STAGES: dict[str, Stage] = {
    "synth": Stage(stage_synth, "dataset", ("synth",), ("synth_dir",)),
    "flows": Stage(stage_flows, "dataset", ("flows", "dataset"), ("flows", "flows_malicious")),
    "features": Stage(
        stage_features,
        "dataset",
        ("features", "dataset"),
        ("features_train", "features_test", "features_malicious"),
    ),
    "tsne": Stage(stage_tsne, "device-recognition", ("tsne",), ("figures_dir",)),
    "classify": Stage(
        stage_classify, "device-recognition", ("classify",), ("classifier", "plots_dir")
    ),
    "report": Stage(stage_report, "report", (), ("report",)),
}


def run_stage(name: str, params: Params) -> dict[str, Any]:
    """Run one stage inside its MLflow parent run; return its metrics."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage '{name}'; stages: {', '.join(STAGES)}")
    stage = STAGES[name]
    logged = {"seed": params.seed}
    for s in stage.sections:
        logged[s] = params.sections.get(s, {})
    log.info("stage %s: starting", name)
    t0 = time.perf_counter()
    with stage_run(
        name,
        params.tracking,
        params.paths.metrics_dir,
        concern=stage.concern,
        dataset=params.dataset.name,
        params=logged,
    ) as sr:
        metrics = stage.func(params, sr)
    log.info("stage %s: done in %.1f s", name, time.perf_counter() - t0)
    return metrics


def main(argv: list[str]) -> int:
    """Entry point of `iotwatch stage NAME` (what dvc.yaml runs)."""
    parser = argparse.ArgumentParser(
        prog="iotwatch stage", description="Run one pipeline stage configured by params.yaml."
    )
    parser.add_argument("name", choices=list(STAGES))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = params_from_dict(read_params(args.params), str(args.params))
    run_stage(args.name, params)
    return 0
