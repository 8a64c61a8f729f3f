"""Several captures to one Parquet file: each streamed to a sorted run file, then a k-way
merge of the runs by start time, in the in-memory table's order (memory: a batch per run)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from iotwatch.flowmeter import parquet as P
from iotwatch.flowmeter.arrow_table import _arrow, _numpy
from iotwatch.flowmeter.schema import flow_schema
from iotwatch.flowmeter.stream import START_NS

if TYPE_CHECKING:
    from iotwatch.flowmeter.meter import FlowResult, _Run

MERGE_ROWS = 16_384  # rows buffered over all runs while merging (about 8 MB)
MERGE_MIN_BATCH = 1024  # ... but at least this many per run


def stream_captures(paths: list[Path], run: _Run, out: Path) -> FlowResult:
    """Captures to one Parquet file: streamed directly (one capture) or as merged runs."""
    from iotwatch.flowmeter.meter import FlowResult

    if len(paths) == 1:
        return P.meter_to_parquet(paths[0], run, out)
    runs = [out.with_name(f".{out.name}.run{i}.tmp") for i in range(len(paths))]
    schema = flow_schema(run.config.n_packets)
    # the merge holds about MERGE_ROWS rows whatever the number of runs: each run is written
    # and read back in row groups of its share (a Parquet reader decodes a row group's pages)
    share = max(MERGE_MIN_BATCH, MERGE_ROWS // len(runs))
    late = jumps = 0
    try:
        for path, part in zip(paths, runs, strict=True):
            res = P.meter_to_parquet(path, run, part, row_group=min(P.ROW_GROUP, share),
                                     start_ns=True)  # fmt: skip
            late += res.late_packets
            jumps += res.clock_jumps
            _trim_heap()
        rows = merge_runs(runs, out, schema, share)
    finally:
        for part in runs:
            with contextlib.suppress(OSError):  # a read-only disk: the write error is the news
                part.unlink(missing_ok=True)
    return FlowResult(table=None, stats=run.stats, late_packets=late, clock_jumps=jumps,
                      rows=rows)  # fmt: skip


def _trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc keeps what a capture's metering
    freed, per thread arena; the next capture or the merge would add to it)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def merge_runs(runs: list[Path], out: Path, schema: pa.Schema, rows: int) -> int:
    """Merge per-capture run files sorted by start into ``out``, in the in-memory table's order:
    (exact start, capture order, order within the capture).

    Each run is read ``rows`` at a time. The rows that start before the smallest "last start
    buffered" of the runs still being read can no longer be preceded by anything unread: they
    are sorted (stably, so each run keeps its own order and ties go to the earlier capture) and
    written, numbered on from the previous block, without the runs' exact-start column.
    """
    import pyarrow.parquet as pq

    files = [pq.ParquetFile(r) for r in runs]
    run_schema = files[0].schema_arrow
    iters = [f.iter_batches(batch_size=rows) for f in files]
    bufs: list[list[pa.RecordBatch]] = [[] for _ in runs]
    starts = [np.zeros(0, np.int64) for _ in runs]  # the buffered rows' exact starts
    live = [True] * len(runs)

    def pull(i: int) -> None:
        got = next(iters[i], None)
        if got is None:
            live[i] = False
            return
        bufs[i].append(got)
        starts[i] = np.concatenate([starts[i], _numpy(got.column(START_NS), np.int64)])

    for i in range(len(runs)):
        pull(i)
    written = 0
    fid = schema.get_field_index("flow_id")
    floor = np.iinfo(np.int64).min
    writer = P._BackgroundWriter(out, schema)
    try:
        while True:
            open_runs = [i for i in range(len(runs)) if live[i]]
            lasts = {i: int(starts[i][-1]) if len(starts[i]) else floor for i in open_runs}
            bound = min(lasts.values()) if open_runs else None
            parts, owner, exact = [], [], []
            for i in range(len(runs)):
                k = len(starts[i]) if bound is None else int(np.searchsorted(starts[i], bound))
                if k:
                    buf = pa.Table.from_batches(bufs[i], schema=run_schema)
                    parts.append(buf.slice(0, k).select(schema.names))
                    owner.append(np.full(k, i, np.int64))
                    exact.append(starts[i][:k])
                    bufs[i] = buf.slice(k).to_batches()
                    starts[i] = starts[i][k:]
            if parts:
                block = pa.concat_tables(parts)
                order = np.lexsort((np.concatenate(owner), np.concatenate(exact)))
                for lo in range(0, len(order), P.ROW_GROUP):
                    part = block.take(_arrow(order[lo : lo + P.ROW_GROUP], pa.int64()))
                    ids = np.arange(written, written + part.num_rows, dtype=np.int64)
                    part = part.set_column(fid, schema.field(fid), _arrow(ids, pa.int64()))
                    writer.put(part)
                    written += part.num_rows
                del block, parts
            if not open_runs:
                break
            # the run that set the bound has nothing left below it: read on there
            pull(min(open_runs, key=lambda i: lasts[i]))
        if written == 0:
            writer.put(schema.empty_table())
    except BaseException:
        writer.abort()
        raise
    finally:
        for f in files:
            f.close()
    writer.close()
    return written
