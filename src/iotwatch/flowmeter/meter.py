"""The flow meter's facade: captures to one flow table (``meter_captures``) and its result.

The engine lives in modules named for what they hold:

- ``engine``: ``FlowMeter``, batches to finished flows (ingress, shards, sweeps, end of capture)
- ``flowtable``: the pool of open flow records and its hash table (the kernels' arrays)
- ``finished``: the store of finished flows (compact typed column chunks)
- ``reorder``: the reorder window (held-back packets, late-packet clamp)
- ``orient``: the device side of each flow (inventory, local networks)
- ``arrow_table``: finished flows to the documented Arrow table
- ``stream``: ``FlowStream``, the incremental API and the one metering loop of the streamed path
- ``frames``: raw frames (a live socket) to a ``PacketBatch``
- ``prefetch``: the readers and the thread that decodes a batch ahead
- ``parquet``: one capture streamed to a Parquet file by a background writer
- ``runs``: several captures as sorted run files and their k-way merge into one file
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from iotwatch.errors import InputError, OutputError
from iotwatch.flowmeter.arrow_table import build_table
from iotwatch.flowmeter.config import FlowConfig
from iotwatch.flowmeter.engine import MAX_THREADS, FlowMeter
from iotwatch.flowmeter.packets import PacketBatch, ReadStats
from iotwatch.flowmeter.prefetch import Reader, _prefetch, default_reader
from iotwatch.inventory import Inventory

__all__ = ["DEFAULT_CHUNK", "MAX_THREADS", "FlowMeter", "FlowResult", "Reader",
           "build_table", "default_reader", "meter_captures"]  # fmt: skip

DEFAULT_CHUNK = 262_144


@dataclass
class FlowResult:
    """Flows of some captures: where they are, how many, and what the reader saw.

    One shape for both modes: ``rows``, ``stats``, ``late_packets``, ``summary_line()``,
    ``load()`` and ``to_parquet()`` always work. The flows are either in memory (``table``; then
    ``path`` is None) or in the Parquet file ``path`` they were streamed to (``meter_captures``
    with ``out``; then ``table`` is None and ``load()`` reads the file).
    """

    table: pa.Table | None = None  # the flows, when metered in memory
    stats: ReadStats = field(default_factory=ReadStats)
    late_packets: int = 0
    clock_jumps: int = 0  # packets far outside the trend, metered at their neighbours' time
    rows: int = -1  # flows (the table's rows, also when it was streamed)
    path: Path | None = None  # the Parquet file the flows were streamed to

    @property
    def streamed(self) -> bool:
        """The flows were streamed to ``path`` (not held in ``table``)."""
        return self.table is None

    def load(self) -> pa.Table:
        """The flow table: ``table``, or the streamed file read back."""
        if self.table is not None:
            return self.table
        if self.path is None:
            raise ValueError("no table and no streamed file")
        import pyarrow.parquet as pq

        return pq.read_table(self.path)

    def __post_init__(self) -> None:
        if self.rows < 0 and self.table is not None:
            self.rows = self.table.num_rows

    def summary_line(self) -> str:
        """One line: files, packets read, skipped by reason, flows, issues."""
        s = self.stats
        skipped = sum(s.skipped.values())
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.skipped.items()))
        parts = [
            f"{s.files} file(s)",
            f"{s.packets_read} packets read",
            f"{skipped} skipped" + (f" ({reasons})" if reasons else ""),
            f"{self.rows} flows",
            f"{len(s.issues)} issue(s)",
        ]
        if self.late_packets:
            parts.append(f"{self.late_packets} packets beyond the reorder window")
        if self.clock_jumps:
            parts.append(f"{self.clock_jumps} packets with a timestamp far outside the trend")
        return "; ".join(parts)

    def to_parquet(self, path: str | Path) -> None:
        """Write the flow table as Parquet (parent folders created)."""
        from iotwatch.flowmeter.schema import replacing, write_parquet

        path = Path(path)
        if self.table is None:  # streamed: copy the file (unless it is that file)
            import shutil

            if self.path is None:
                raise ValueError("no table and no streamed file")
            if path.resolve() != self.path.resolve():
                with replacing(path) as tmp:
                    try:
                        shutil.copyfile(self.path, tmp)
                    except OSError as exc:
                        raise OutputError.from_os(tmp, exc) from None
            return
        write_parquet(self.table, path)


def meter_captures(
    paths: Sequence[str | Path] | str | Path,
    config: FlowConfig,
    inventory: Inventory | None = None,
    progress: bool = False,
    chunk_packets: int = DEFAULT_CHUNK,
    reader: Reader | None = None,
    prefetch: bool = True,
    out: str | Path | None = None,
    threads: int | None = None,
) -> FlowResult:
    """Meter captures into one flow table (each capture's flows are its own).

    ``prefetch``: decode in a second thread while this one meters (both are numba kernels that
    release the GIL, so the two cores overlap reading and metering).
    ``threads``: flow tables metered at once (see ``FlowMeter``; default 2 on two cores or more).
    ``out``: stream the table to this Parquet file in row groups as flows become final, through
    ``FlowStream`` (memory then holds the flows of the last idle + active timeouts, not all of
    them; the result's ``table`` is None and its ``path`` is ``out``). Several captures are
    each streamed to a sorted run file next to ``out`` and the runs are merged by start time
    into ``out`` (memory: a batch per capture), so the file has the same rows in the same order
    as the in-memory table.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no capture given")
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(p.stat().st_size for p in paths if p.is_file())
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="flows", leave=False, disable=None)
    run = _Run(config, inventory, ReadStats(), reader or default_reader(), chunk_packets, prefetch,
               threads, bar)  # fmt: skip
    stats = run.stats
    all_flows, all_feats, names = [], [], []
    if out is not None:
        # written next to ``out`` and renamed once complete: an error leaves no partial table
        from iotwatch.flowmeter.runs import stream_captures
        from iotwatch.flowmeter.schema import replacing

        try:
            with replacing(out) as part:
                result = stream_captures(paths, run, part)
            result.path = Path(out)
            return result
        finally:
            if bar is not None:
                bar.close()
    late = jumps = 0
    try:
        for i, path in enumerate(paths):
            meter = FlowMeter(config, threads)
            try:
                for batch in run.batches(path):
                    meter.feed(batch)
                batch = None  # the last chunk: not kept alive while the table is built
                flows, feats = meter.finish()
            finally:
                meter.close()
            late += meter.late
            jumps += meter.clock_jumps
            stats.issues.extend(meter.clock_issues(str(path)))
            del meter  # its flow pool and buffers: freed before the table is built
            flows["file"] = np.full(len(flows["seq0"]), i, np.int64)
            all_flows.append(flows)
            all_feats.append(feats)
            names.append(path.name)
    finally:
        if bar is not None:
            bar.close()
    if len(all_flows) == 1:
        (flows,), (feats,) = all_flows, all_feats
    else:
        flows = {k: np.concatenate([f[k] for f in all_flows]) for k in all_flows[0]}
        feats = {k: np.concatenate([f[k] for f in all_feats]) for k in all_feats[0]}
    del all_flows, all_feats
    table = build_table(flows, feats, names, config, inventory)
    return FlowResult(table=table, stats=stats, late_packets=late, clock_jumps=jumps)


@dataclass
class _Run:
    """What every capture of a ``meter_captures`` call is metered with."""

    config: FlowConfig
    inventory: Inventory | None
    stats: ReadStats
    read: Reader
    chunk_packets: int
    prefetch: bool
    threads: int | None
    bar: Any

    def batches(self, path: Path) -> Iterator[PacketBatch]:
        """The capture's packet batches (decoded a thread ahead with ``prefetch``)."""
        tick = self.bar.update if self.bar is not None else None
        batches = self.read([path], self.stats, chunk_packets=self.chunk_packets, progress=tick)
        return _prefetch(batches) if self.prefetch else batches
