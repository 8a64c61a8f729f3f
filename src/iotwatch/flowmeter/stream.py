"""The incremental flow meter: feed packets, receive finished flows as they end.

``FlowStream`` is the one metering loop: ``meter_captures(out=...)`` streams its Parquet file
through it, ``iter_flows`` reads a capture through it, and a live source (the monitor) feeds it
decoded batches or raw frames. Memory is bounded: the open flows, the reorder window and the
finished flows not yet handed out (none in the default mode) — never the flows already returned.

    from iotwatch.flowmeter import FlowConfig, FlowStream

    stream = FlowStream(FlowConfig(), inventory, ready_packets=10)
    for frames in socket_reader():                 # [(ts_ns, frame bytes), ...], Ethernet
        finished = stream.feed(frames)             # pyarrow Table, flow schema
        early = stream.ready()                     # flows with >= 10 packets each way, still open
        idle = stream.advance(time.time_ns())     # on a timer: flows idle on a quiet link end
    rest = stream.flush()                          # end of capture: every flow still open

Two orders (``ordered``):

- ``False`` (default): a flow is handed out by the ``feed`` during which it ended (idle, active
  or close cut; idle ends are detected at the end of each ``feed``, against the time of its
  last metered packet). ``flow_id`` numbers the flows in the order they are handed out.
- ``True``: flows are handed out in the table's order (start, then first packet), once no later
  flow can precede them (up to idle + active timeout later): the concatenated output equals
  ``meter_captures``' table of the capture, ``flow_id`` included (the Parquet path).

``ready_packets=N``: ``ready()`` returns, once per flow, the open flows that have at least N
packets in each direction (their first-N features are then complete), counted up to the last
metered packet: ``end_reason`` is ``"open"``, ``flow_id`` is -1, ``end``/counters are those so
far. The same flow comes out of ``feed``/``flush`` again when it ends (match on the endpoints,
protocol, VLAN and ``start``). Readiness is seen between feeds, behind the reorder window: a
flow that reaches N each way and ends within one ``feed`` comes out as finished only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from iotwatch.flowmeter import _meter_kernels as K
from iotwatch.flowmeter.arrow_table import _arrow, _str_take, build_table
from iotwatch.flowmeter.config import FlowConfig
from iotwatch.flowmeter.engine import FlowMeter
from iotwatch.flowmeter.finished import Block
from iotwatch.flowmeter.frames import LINKTYPE_ETHERNET, batch_from_frames
from iotwatch.flowmeter.packets import PacketBatch, ReadStats
from iotwatch.flowmeter.prefetch import Reader, _prefetch, default_reader
from iotwatch.flowmeter.schema import flow_schema
from iotwatch.inventory import Inventory

START_NS = "__start_ns"  # the exact start (int64 ns), added to run files for the merge
PART_ROWS = 32_768  # rows per table built at once (a block's temporaries stay small)
FLUSH_ROWS = 65_536  # open flows ended at once by ``flush_parts``


class FlowStream:
    """Meters one capture (or one live source) incrementally; see the module's docstring.

    ``capture``: the table's ``capture`` value. ``min_rows``: hand flows out only once this
    many are waiting (fewer, larger tables; the Parquet path gathers 65,536). ``part_rows``:
    the most rows of one table built at once (``parts`` yields tables of at most that many).
    ``threads``: flow tables metered at once (``FlowMeter``). ``linktype``: of raw frames fed.
    """

    def __init__(
        self,
        config: FlowConfig | None = None,
        inventory: Inventory | None = None,
        *,
        capture: str = "live",
        ordered: bool = False,
        ready_packets: int | None = None,
        min_rows: int = 1,
        part_rows: int = PART_ROWS,
        threads: int | None = None,
        linktype: int = LINKTYPE_ETHERNET,
        start_ns: bool = False,
    ) -> None:
        self.config = config if config is not None else FlowConfig()
        self.inventory = inventory
        self.capture = capture
        self.ordered = ordered
        if ready_packets is not None and int(ready_packets) < 1:
            raise ValueError(f"ready_packets must be at least 1, not {ready_packets}")
        self.ready_packets = None if ready_packets is None else int(ready_packets)
        self.min_rows = max(1, int(min_rows))
        self.part_rows = max(1, int(part_rows))
        self.linktype = linktype
        self.start_ns = start_ns  # add START_NS (for run files)
        self.meter = FlowMeter(self.config, threads)
        self.schema = flow_schema(self.config.n_packets)
        if start_ns:
            self.schema = self.schema.append(pa.field(START_NS, pa.int64(), nullable=False))
        self.stats = ReadStats()  # what batch_from_frames saw (raw frames fed)
        self.emitted = 0  # finished flows handed out (the next one's flow_id)
        self._seen: list[np.ndarray] = [np.zeros(0, np.int64) for _ in self.meter.pools]
        self._sighted: list[np.ndarray] = [np.zeros(0, np.int64) for _ in self.meter.pools]
        self._closed = False

    # -- feeding -----------------------------------------------------------------------------
    def feed(self, packets: PacketBatch | Sequence[tuple[int, bytes]] | None) -> pa.Table:
        """Meter a batch (or raw frames: ``(ts_ns, frame bytes)`` of ``linktype``), in capture
        order; return the flows handed out by it (a table of the flow schema, maybe empty)."""
        return self._concat(self.parts(packets))

    def feed_frames(
        self, frames: Sequence[tuple[int, bytes]], linktype: int | None = None
    ) -> pa.Table:
        """``feed`` for raw frames of ``linktype`` (default: the stream's)."""
        batch = batch_from_frames(frames, self.linktype if linktype is None else linktype,
                                  self.stats)  # fmt: skip
        return self.feed(batch)

    def parts(
        self, packets: PacketBatch | Sequence[tuple[int, bytes]] | None
    ) -> Iterator[pa.Table]:
        """``feed`` as tables of at most ``part_rows`` rows, each built when asked for (what
        the Parquet writer consumes: building one overlaps writing the previous). The packets
        are metered at once; consume the tables before the next call."""
        self._check_open()
        batch = packets
        if batch is not None and not isinstance(batch, PacketBatch):
            batch = batch_from_frames(batch, self.linktype, self.stats)
        if batch is not None:
            self.meter.feed(batch)
        if self.ordered:
            block = self.meter.final_flows(self.min_rows)
        else:
            block = self.meter.finished_flows(self.min_rows)
        return self._tables(block) if block is not None else iter(())

    def advance(self, now_ns: int) -> pa.Table:
        """A live source's clock reached ``now_ns`` with no packet since the last ``feed``:
        end the flows idle by then (``now_ns`` minus the reorder window) and return the flows
        handed out. Call it on a quiet link (a timer), so idle flows end without traffic;
        packets fed later with an earlier timestamp than that are clamped (``late_packets``)."""
        self._check_open()
        self.meter.advance(int(now_ns))
        return self._concat(self.parts(None))

    def ready(self) -> pa.Table:
        """The open flows that have reached ``ready_packets`` packets in each direction since
        the last call (each flow once); see the module's docstring."""
        if self.ready_packets is None:
            raise ValueError("ready() needs FlowStream(ready_packets=N)")
        self._check_open()
        n = self.ready_packets
        tables = []
        for s, pool in enumerate(self.meter.pools):
            pi = pool.pi
            seen = self._seen[s]
            if len(seen) < len(pi):  # the pool grew (slots keep their place)
                seen = np.concatenate([seen, np.full(len(pi) - len(seen), -1, np.int64)])
                self._seen[s] = seen
            hit = ((pi[:, K.I_MISC] & K.M_USED) != 0) & (pi[:, K.I_PAB] >= n)
            hit &= (pi[:, K.I_PBA] >= n) & (seen != pi[:, K.I_SEQ0])
            slots = np.flatnonzero(hit)
            if len(slots):
                seen[slots] = pi[slots, K.I_SEQ0]  # a reused slot holds another first packet
                tables.append(self._open_table(self.meter.open_records(s, slots)))
        return self._concat(tables, self.schema.remove(self.schema.get_field_index(START_NS))
                            if self.start_ns else self.schema)  # fmt: skip

    def sighted(self) -> pa.Table:
        """The open flows not handed out by ``sighted`` before (each flow once, whatever its
        packets so far): ``end_reason`` ``"new"``, ``flow_id`` -1. A live monitor judges a
        flow's service at its first packets with it."""
        self._check_open()
        tables = []
        for s, pool in enumerate(self.meter.pools):
            pi = pool.pi
            seen = self._sighted[s]
            if len(seen) < len(pi):
                seen = np.concatenate([seen, np.full(len(pi) - len(seen), -1, np.int64)])
                self._sighted[s] = seen
            hit = ((pi[:, K.I_MISC] & K.M_USED) != 0) & (seen != pi[:, K.I_SEQ0])
            slots = np.flatnonzero(hit)
            if len(slots):
                seen[slots] = pi[slots, K.I_SEQ0]
                t = self._open_table(self.meter.open_records(s, slots))
                i = t.schema.get_field_index("end_reason")
                t = t.set_column(
                    i, t.schema.field(i), _str_take(["new"], np.zeros(len(t), np.int64))
                )
                tables.append(t)
        return self._concat(tables, self.schema.remove(self.schema.get_field_index(START_NS))
                            if self.start_ns else self.schema)  # fmt: skip

    def flush(self) -> pa.Table:
        """End of capture: meter the reorder window, end every open flow
        (``end_of_capture``); return the flows not handed out yet. The stream is closed."""
        return self._concat(self.flush_parts())

    def flush_parts(self, rows: int | None = FLUSH_ROWS) -> Iterator[pa.Table]:
        """``flush`` as tables, the open flows ended ``rows`` at a time in start order (None:
        all at once), so memory never holds every open flow twice."""
        self._check_open()
        self._closed = True
        try:
            for block in self.meter.finish_blocks(rows):
                yield from self._tables(block)
        finally:
            self.meter.close()

    def close(self) -> None:
        """Drop the stream's state without handing out the open flows (idempotent)."""
        self._closed = True
        self.meter.close()

    def __enter__(self) -> FlowStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------------
    @property
    def late_packets(self) -> int:
        """Packets later than the reorder window (clamped to the processed time)."""
        return self.meter.late

    @property
    def clock_jumps(self) -> int:
        """Packets with a timestamp far outside the trend, metered at their neighbours' time
        (``clock.ClockGuard``; ``meter.clock_issues(name)`` lists them with their offsets)."""
        return self.meter.clock_jumps

    def held(self) -> dict[str, int]:
        """What the stream holds now: ``open`` flows, ``finished`` flows not handed out yet
        (always 0 right after a ``feed`` unless ``ordered`` or ``min_rows``), ``pending``
        packets in the reorder window."""
        if self._closed:
            return {"open": 0, "finished": 0, "pending": 0}
        return self.meter.held()

    # -- reading a capture -------------------------------------------------------------------
    @classmethod
    def from_capture(
        cls,
        path: str | Path,
        config: FlowConfig | None = None,
        inventory: Inventory | None = None,
        *,
        stats: ReadStats | None = None,
        chunk_packets: int = 262_144,
        reader: Reader | None = None,
        prefetch: bool = True,
        progress: Any = None,
        sight: bool = False,
        **options: Any,
    ) -> Iterator[pa.Table]:
        """Meter a capture file incrementally: yield tables of flows as they are handed out
        (with ``ready_packets``, the ready flows too, as their own tables: ``end_reason``
        ``"open"``; with ``sight``, after each chunk the flows seen first in it and still open:
        ``"new"``), then the flows open at its end. ``options``: ``FlowStream``'s."""
        path = Path(path)
        options.setdefault("capture", path.name)
        stream = cls(config, inventory, **options)  # a bad setting raises before reading
        stats = stats if stats is not None else ReadStats()
        read = reader or default_reader()
        try:
            batches = read([path], stats, chunk_packets=chunk_packets, progress=progress)
            if prefetch:
                batches = _prefetch(batches)
            for batch in batches:
                yield from stream.parts(batch)
                if sight:  # flows still open after this chunk, once (``sighted``)
                    new = stream.sighted()
                    if new.num_rows:
                        yield new
                if stream.ready_packets is not None:
                    early = stream.ready()
                    if early.num_rows:
                        yield early
            batch = None  # the last chunk: not kept alive while the open flows are ended
            yield from stream.flush_parts()
            stats.issues.extend(stream.meter.clock_issues(str(path)))
        finally:
            stream.close()

    # -- tables ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the flow stream is closed (flush or close was called)")

    def _concat(self, tables: Any, schema: pa.Schema | None = None) -> pa.Table:
        tables = [t for t in tables if t.num_rows]
        if not tables:
            # (Schema.empty_table imports pandas: a quarter of a second of a monitor run)
            return pa.Table.from_batches([], schema=schema or self.schema)
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def _tables(self, block: Block) -> Iterator[pa.Table]:
        """A block of finished flows as tables of at most ``part_rows`` rows in table order,
        numbered on from the flows handed out before (one empty table for an empty block)."""
        flows, feats = block
        order = np.lexsort((flows["seq0"], flows["start"]))
        for lo in range(0, max(len(order), 1), self.part_rows):
            idx = order[lo : lo + self.part_rows]
            part = {k: v[idx] for k, v in flows.items()}
            part["file"] = np.zeros(len(idx), np.int64)
            exact = part["start"].copy() if self.start_ns else None  # build_table consumes it
            part_feats = {k: v[idx] for k, v in feats.items()}
            table = build_table(part, part_feats, [self.capture], self.config, self.inventory,
                                self.emitted)  # fmt: skip
            if exact is not None:
                table = table.append_column(self.schema.field(START_NS), _arrow(exact, pa.int64()))
            self.emitted += table.num_rows
            yield table

    def _open_table(self, block: Block) -> pa.Table:
        """Open flows as rows of the flow schema: ``flow_id`` -1, ``end_reason`` ``"open"``."""
        flows, feats = block
        k = len(flows["start"])
        flows["file"] = np.zeros(k, np.int64)
        t = build_table(flows, feats, [self.capture], self.config, self.inventory)
        i = t.schema.get_field_index("flow_id")
        t = t.set_column(i, t.schema.field(i), _arrow(np.full(k, -1, np.int64), pa.int64()))
        i = t.schema.get_field_index("end_reason")
        return t.set_column(i, t.schema.field(i), _str_take(["open"], np.zeros(k, np.int64)))


def iter_flows(
    path: str | Path,
    config: FlowConfig | None = None,
    inventory: Inventory | None = None,
    **options: Any,
) -> Iterator[pa.Table]:
    """``FlowStream.from_capture``: a capture's flows as tables, as they are handed out."""
    return FlowStream.from_capture(path, config, inventory, **options)
