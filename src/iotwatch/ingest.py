"""The flows stage: meter a dataset's captures (benign and malicious) into flow tables.

Captures are found by their magic number (pcap, pcapng, gzip) under the dataset's folders and
labelled by its inventory (a CSV of mac,ip,device_type,name, or IoT Sentinel's one folder per
device type, each labelled by its own MAC).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotwatch.errors import InputError
from iotwatch.flowmeter.discover import capture_magics, list_captures

__all__ = ["capture_magics", "flows_per_type", "list_captures", "meter_dataset", "run"]

if TYPE_CHECKING:
    import pyarrow as pa

    from iotwatch.context import StageContext
    from iotwatch.flowmeter import FlowConfig
    from iotwatch.paths import DatasetConfig
    from iotwatch.tracking import StageRun

log = logging.getLogger(__name__)


def meter_dataset(
    captures: Path, dataset: DatasetConfig, flow_cfg: FlowConfig, *, required: bool
) -> tuple[pa.Table | None, dict[str, Any]]:
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
    if dataset.inventory_format == "sentinel":
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
        groups = [(files, load_inventory(dataset.inventory, dataset.inventory_format))]
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


def flows_per_type(table: pa.Table | None) -> dict[str, int]:
    """Flows per device type of a flow table (``unknown`` for flows of no known device)."""
    if table is None or table.num_rows == 0:
        return {}
    out: dict[str, int] = {}
    for v in table.column("device_type").to_pylist():
        key = v if v is not None else "unknown"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def training_period(table: pa.Table, days: float) -> tuple[pa.Table, dict[str, Any]]:
    """The flows that start within ``days`` of the first one (the rest is the watch period)."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return table, {"train_days": days}
    first = pc.min(table.column("start")).as_py()
    until = first + days * 86_400.0
    keep = table.filter(pc.less(table.column("start"), until))
    return keep, {"train_days": days, "train_from": first, "train_until": until,
                  "flows_after_training": table.num_rows - keep.num_rows}  # fmt: skip


def run(cfg: FlowConfig, ctx: StageContext, sr: StageRun) -> dict[str, Any]:
    """Flows stage: the dataset's benign and malicious captures -> paths.flows(_malicious)."""
    from iotwatch.flowmeter.schema import flow_schema, write_parquet

    dataset, paths = ctx.dataset, ctx.paths
    # the one home of local_networks is the dataset (flow profiles do not carry it)
    if dataset.local_networks:
        cfg = replace(cfg, local_networks=list(dataset.local_networks))
    t0 = time.perf_counter()
    benign, m_benign = meter_dataset(dataset.captures, dataset, cfg, required=True)
    if benign is None:
        benign = flow_schema(cfg.n_packets).empty_table()
    training: dict[str, Any] = {}
    if dataset.train_days is not None:
        benign, training = training_period(benign, dataset.train_days)
    malicious, m_mal = (None, {"files": 0})
    if dataset.malicious is not None:
        malicious, m_mal = meter_dataset(dataset.malicious, dataset, cfg, required=False)
    if malicious is None:
        malicious = flow_schema(cfg.n_packets).empty_table()
    for table, path in ((benign, paths.flows), (malicious, paths.flows_malicious)):
        write_parquet(table, path)
    seconds = time.perf_counter() - t0
    packets = m_benign.get("packets_read", 0) + m_mal.get("packets_read", 0)
    metrics = {
        "benign": {**m_benign, "flows_per_device_type": flows_per_type(benign), **training},
        "malicious": {**m_mal, "flows_per_device_type": flows_per_type(malicious)},
        "seconds": round(seconds, 3),
        "packets_per_s": round(packets / seconds, 1) if seconds > 0 else 0.0,
    }
    sr.record(metrics)
    return metrics
