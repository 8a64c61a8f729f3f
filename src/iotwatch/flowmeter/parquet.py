"""The Parquet writer: one capture's flows streamed to a file in row groups as they become
final (through ``stream.FlowStream``, in table order), written by a thread of its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from iotwatch.errors import OutputError
from iotwatch.flowmeter.schema import dictionary_columns
from iotwatch.flowmeter.stream import START_NS, FlowStream

if TYPE_CHECKING:
    from iotwatch.flowmeter.meter import FlowResult, _Run

STREAM_ROWS = 65_536  # final flows gathered before row groups are written (streaming mode)
ROW_GROUP = 32_768  # rows per row group: a table part is built while the previous is written

__all__ = ["ROW_GROUP", "START_NS", "STREAM_ROWS", "_BackgroundWriter", "meter_to_parquet"]


class _BackgroundWriter:
    """A ParquetWriter fed through a short queue and written by a thread of its own.

    Parquet encoding and compression release the GIL, so building the next part of the table
    (numpy, in this thread) overlaps writing the previous one. A write error is re-raised by the
    next ``put`` or by ``close``; the disk's errors (``OSError``: full, read-only, ...) as an
    ``OutputError`` naming the file.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        import queue
        import threading

        import pyarrow.parquet as pq

        self.path = path
        try:
            self._writer = pq.ParquetWriter(path, schema,
                                            use_dictionary=dictionary_columns(schema))  # fmt: skip
        except OSError as exc:
            raise OutputError.from_os(path, exc) from None
        self._q: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="flowmeter-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (table := self._q.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write_table(table)
                except BaseException as exc:  # raised in the owner's thread
                    self._error = exc

    def _raise(self) -> None:
        exc = self._error
        if isinstance(exc, OSError):
            raise OutputError.from_os(self.path, exc) from None
        if exc is not None:
            raise exc

    def put(self, table: pa.Table) -> None:
        """Queue one part (blocks while two parts wait)."""
        self._raise()
        self._q.put(table)

    def close(self) -> None:
        """Write what is queued, close the file; raise the first write error."""
        self._q.put(None)
        self._thread.join()
        try:
            self._writer.close()
        except OSError as exc:
            self._error = self._error or exc
        self._raise()

    def abort(self) -> None:
        """Stop after an error elsewhere: drop what is queued, close quietly (the file is left
        incomplete for the caller to remove; the error being handled is not masked)."""
        import queue

        self._error = self._error or RuntimeError("aborted")
        while True:  # unblock the thread and let it skip the rest
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._q.put(None)
        self._thread.join()
        with contextlib.suppress(Exception):  # the original error is the one to report
            self._writer.close()


def meter_to_parquet(
    path: Path, run: _Run, out: Path, row_group: int | None = None, start_ns: bool = False
) -> FlowResult:
    """One capture to a Parquet file, row groups of at most ``row_group`` rows (default
    ``ROW_GROUP``) as blocks of flows become final. ``start_ns``: add the exact start
    (int64 ns) as a last column, for ``runs.merge_runs``."""
    from iotwatch.flowmeter.meter import FlowResult

    out.parent.mkdir(parents=True, exist_ok=True)
    # first: a bad setting raises before a file is open
    stream = FlowStream(run.config, run.inventory, capture=path.name, ordered=True,
                        min_rows=STREAM_ROWS, part_rows=row_group or ROW_GROUP,
                        threads=run.threads, start_ns=start_ns)  # fmt: skip
    writer = _BackgroundWriter(out, stream.schema)
    written = 0

    def write(tables: Iterator[pa.Table]) -> None:
        nonlocal written
        for table in tables:
            if table.num_rows or not written:
                writer.put(table)
            written += table.num_rows

    try:
        for batch in run.batches(path):
            write(stream.parts(batch))
        batch = None
        write(stream.flush_parts(STREAM_ROWS))
    except BaseException:
        stream.close()
        writer.abort()  # the file is incomplete: the caller removes it
        raise
    run.stats.issues.extend(stream.meter.clock_issues(str(path)))
    stream.close()
    writer.close()
    return FlowResult(table=None, stats=run.stats, late_packets=stream.late_packets,
                      clock_jumps=stream.clock_jumps, rows=written)  # fmt: skip
