"""The metering engine: decoded packet batches to finished flows, one packet at a time in numba.

How it works (docs/flows.md has the flow definition):

1. Each batch is reduced to the metered packets and the columns the meter reads (no copy when
   nothing is filtered out).
2. The clock guard (``clock.ClockGuard``) meters a timestamp far outside the capture's trend
   (a damaged record, a clock that jumped and came back) at its neighbours' time, so it cannot
   move the clock; the reorder window (``reorder.ReorderWindow``) then holds back the packets
   of the last ``reorder_window`` seconds, so what is metered is always in timestamp order.
3. ``_meter_kernels.meter_run`` meters packets in that order against a streaming flow table
   (``flowtable._Pool``: an open-addressing hash table over a pool of flow records). Idle,
   active and close cuts are decided per packet, so chunk boundaries cannot change the result.
   Flows idle at the end of a chunk are swept out of the pool; finished flows go to an output
   buffer that is drained into compact column chunks (``finished._FinishedFlows``).
4. Finished flows are kept in endpoint order (a/b); the device side, the texts and the
   sent/received orientation are decided column-wise when a table is built
   (``arrow_table.build_table``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from iotwatch.errors import InputError
from iotwatch.flowmeter import _meter_kernels as K
from iotwatch.flowmeter.clock import ClockGuard, jump_ns
from iotwatch.flowmeter.config import TIMESTAMP_UNITS_NS, FlowConfig
from iotwatch.flowmeter.finished import Block, _FinishedFlows
from iotwatch.flowmeter.flowtable import _Pool, feature_resolution
from iotwatch.flowmeter.packets import PacketBatch, ReadIssue
from iotwatch.flowmeter.reorder import _DTYPES, _NO_PERM, _NO_ROWS, ReorderWindow

_NS = 1_000_000_000

MAX_THREADS = 64  # each flow table costs memory and a pass over every row


def _when(ns: int) -> str:
    """A timestamp in ns as UTC text (seconds when out of the calendar's range)."""
    import datetime as dt

    try:
        t = dt.datetime.fromtimestamp(ns / _NS, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ns / _NS:.0f} s"
    return t.strftime("%Y-%m-%d %H:%M:%S.%f UTC")


class FlowMeter:
    """Meters one capture: feed PacketBatch chunks in file order, then ``finish()``.

    ``threads``: flow tables metered at once, split by key hash (default: 2 when the machine
    has two cores or more). The result does not depend on it.
    """

    POOL0 = 4096  # first pool size (flow records); doubles when full
    OUT_ROWS = 16384  # finished flows buffered in the kernel's output before they are compacted
    PARALLEL_MIN = 4096  # rows below which the tables are metered in turn (threads cost more)

    def __init__(self, config: FlowConfig, threads: int | None = None) -> None:
        self.cfg = config
        self.n = config.n_packets
        self.unit = TIMESTAMP_UNITS_NS[config.timestamp_unit]
        self.idle = int(round(config.idle_timeout * _NS))
        self.active = int(round(config.active_timeout * _NS))
        self.window = int(round(config.reorder_window * _NS))
        protos = config.protocol_numbers()
        self.keep_proto = np.zeros(256, np.bool_)
        self.keep_proto[protos if protos is not None else slice(None)] = True
        self.filter_protos = protos is not None
        self.drop_nf = config.non_first_fragments == "drop"
        if threads is None:
            threads = 2 if (os.cpu_count() or 1) >= 2 else 1
        if not 1 <= int(threads) <= MAX_THREADS:
            raise InputError(f"threads must be 1 to {MAX_THREADS}, not {threads}")
        self.threads = int(threads)
        self.params = np.array(
            [self.idle, self.active, config.timeout_inclusive, config.vlan_in_key,
             config.tcp_close_ends_flow, self.drop_nf, self.n, self.threads,
             feature_resolution(self.active)],
            np.int64,
        )  # fmt: skip
        self.seq = 0  # packets of the capture seen so far (their order in the file)
        self.reorder = ReorderWindow(self.window)
        self.clock = ClockGuard(jump_ns(config.reorder_window))
        self.done_ts: int | None = None  # everything at or before this time is processed
        self.pools = [_Pool(self.n, self.POOL0, self.OUT_ROWS) for _ in range(self.threads)]
        self.done = _FinishedFlows(self.n, int(self.params[8]))
        self._executor: Any = None  # threads for the shards after the first, made on first use

    # -- state ------------------------------------------------------------------------------
    def _drain(self, pool: _Pool | None = None) -> None:
        """Move the kernels' output buffers to the compact store of finished flows."""
        for p in self.pools if pool is None else (pool,):
            k = int(p.st[K.S_OUT])
            if k:
                self.done.add(p.ou[:k], p.oi[:k], p.of[:k])
                p.st[K.S_OUT] = 0

    def _run(
        self,
        c: tuple[np.ndarray, ...],
        lo: int,
        hi: int,
        perm: np.ndarray | None = None,
        pend: tuple[np.ndarray, ...] = (),
    ) -> None:
        """Meter rows ``lo:hi`` of the time-ordered columns ``c`` (of ``c[perm]`` when given;
        with ``pend``, ``perm`` indexes the rows of ``pend`` then those of ``c``), one thread per
        flow table, growing the pools and draining the outputs as needed."""
        order = _NO_PERM if perm is None else perm
        npend = len(pend[0]) if pend else 0
        pcols = pend if pend else _NO_ROWS
        at = [lo] * len(self.pools)

        def run(s: int) -> int:
            return K.meter_run(c, pcols, npend, order, at[s], hi, self.keep_proto, self.params,
                               s, *self.pools[s].state)  # fmt: skip

        while True:
            todo = [s for s in range(len(self.pools)) if at[s] < hi]
            if not todo:
                break
            if len(todo) == 1 or hi - lo < self.PARALLEL_MIN:
                reached = [run(s) for s in todo]
            else:
                if self._executor is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._executor = ThreadPoolExecutor(
                        len(self.pools) - 1, thread_name_prefix="flowmeter-shard"
                    )
                futures = [self._executor.submit(run, s) for s in todo[1:]]
                reached = [run(todo[0])] + [f.result() for f in futures]
            for s, r in zip(todo, reached, strict=True):
                at[s] = r
                if r < hi:
                    self._make_room(self.pools[s])
        if hi > 0:
            last = hi - 1 if perm is None else int(perm[hi - 1])
            self.done_ts = int(pend[0][last] if last < npend else c[0][last - npend])

    def _make_room(self, pool: _Pool) -> None:
        """A kernel stopped: drain its output when full; when its pool is full, first sweep the
        flows idle at its last metered packet's time (the same end as at the chunk's end) and
        grow only if that frees too little."""
        if pool.st[K.S_OUT] >= len(pool.oi):
            self._drain(pool)
        if pool.st[K.S_FREE] == 0:
            cap = len(pool.pi)
            self._expire(now=int(pool.st[K.S_NOW]), pools=[pool])
            if pool.st[K.S_FREE] < max(1, cap // 4):
                pool.alloc(2 * cap, grow=True)

    def _expire(self, now: int | None = None, pools: list[_Pool] | None = None) -> None:
        """Emit the flows idle at ``now`` (default: the processed time)."""
        if now is None:
            now = self.done_ts if self.done_ts is not None else 0
        for pool in self.pools if pools is None else pools:
            f, cap = 0, len(pool.pi)
            while True:
                f = K.expire(now, self.idle, self.cfg.timeout_inclusive, cap, *pool.state)
                if f >= cap:
                    break
                self._drain(pool)  # the output buffer was full: empty it and sweep again

    # -- ingress ----------------------------------------------------------------------------
    def _prepare(self, b: PacketBatch) -> tuple[tuple[np.ndarray, ...], np.ndarray | None]:
        """The columns the kernel reads (``K.COLUMNS``) and the metered rows (None: all)."""
        n_all = len(b)
        seq = np.arange(self.seq, self.seq + n_all, dtype=np.int64)
        self.seq += n_all
        size = {"frame": b.frame_len, "captured": b.cap_len, "ip": b.ip_len,
                "payload": b.payload_len}[self.cfg.size]  # fmt: skip
        ts = np.asarray(b.ts_ns, np.int64)
        if self.unit != 1:
            ts = (ts // self.unit) * self.unit
        cols = (ts, size, b.ip_version, b.proto, b.src_ip_hi, b.src_ip_lo, b.dst_ip_hi,
                b.dst_ip_lo, b.sport, b.dport, b.tcp_flags, b.vlan, b.src_mac, b.dst_mac,
                b.fragment, seq)  # fmt: skip
        # contiguous, of the kernel's dtypes: a compiled kernel reads the buffers as declared
        cols = tuple(np.ascontiguousarray(a, dt) for a, dt in zip(cols, _DTYPES, strict=True))
        # the metered rows, as an index: the reorder window's watermark and the late-packet
        # clamp are defined on metered packets only, and the kernel reads through the index
        # (gathering sixteen columns would cost more than metering them)
        keep = self.keep_proto[cols[3]] if self.filter_protos else None
        if self.drop_nf:
            nonfirst = b.fragment & (b.sport == 0) & (b.dport == 0)
            keep = ~nonfirst if keep is None else keep & ~nonfirst
        idx = np.flatnonzero(keep) if keep is not None and not keep.all() else None
        return cols, idx

    def feed(self, batch: PacketBatch) -> None:
        """Meter one batch (packets of one capture, in file order)."""
        if len(batch) == 0:
            return
        c, idx = self._prepare(batch)
        for part, rows in self.clock.admit(c, idx, batch.offset):
            self.reorder.push(part, rows, self._run, self._sweep_if)

    def _release_clock(self) -> None:
        """The packets the clock guard holds back, decided as at the end of the capture."""
        for part, rows in self.clock.flush():
            self.reorder.push(part, rows, self._run, self._sweep_if)

    def advance(self, now: int) -> None:
        """The source's clock reached ``now`` (ns, the packets' time base) with no packet since:
        meter the held-back packets older than ``now`` minus the reorder window and end the
        flows idle at that time, as a later packet would. A packet fed afterwards with an
        earlier timestamp than that is clamped to it (counted in ``late``)."""
        if self.unit != 1:
            now = (now // self.unit) * self.unit
        self._release_clock()  # the source's clock vouches for the packets held back
        watermark = int(now) - self.window
        self.reorder.advance(int(now))
        self.reorder.release(watermark, self._run)
        if self.done_ts is None or watermark > self.done_ts:
            self.done_ts = watermark
        self._expire()

    @property
    def late(self) -> int:
        """Packets later than the reorder window (clamped to the processed time)."""
        return self.reorder.late

    @property
    def clock_jumps(self) -> int:
        """Packets whose timestamp was far outside the trend (metered at their neighbours')."""
        return self.clock.count

    def clock_issues(self, name: str) -> list[ReadIssue]:
        """The clock guard's outliers as issues of capture ``name`` (file, byte offset): the
        first ``MAX_REPORTED`` one by one, then one line counting the rest."""
        out = []
        for offset, ts, at in self.clock.reports:
            way = "ahead of" if ts > at else "behind"
            out.append(ReadIssue(name, offset, (
                f"timestamp {_when(ts)} is {abs(ts - at) / _NS:.6g} s {way} the capture's "
                f"trend (a clock jump or a damaged record): metered at {_when(at)}")))  # fmt: skip
        more = self.clock.count - len(self.clock.reports)
        if more > 0:
            last = self.clock.reports[-1][0] if self.clock.reports else 0
            out.append(ReadIssue(name, last, (
                f"and {more} more packet(s) with a timestamp far outside the trend, metered "
                "at their neighbours' time")))  # fmt: skip
        return out

    def _sweep_if(self, processed: bool) -> None:
        """After a chunk was metered, emit the flows idle since: the pool keeps only live flows."""
        if processed:
            self._expire()

    def final_flows(self, min_rows: int) -> Block | None:
        """Finished flows no later flow can precede in the table's order, once ``min_rows`` wait.

        Every flow finished from now on starts at or after the earliest start among the open
        flows and at or after the processed time (later packets are clamped to it), so the
        finished flows that started before both are final: they can be written out, in order,
        and memory holds only the flows of the last idle + active timeouts.
        """
        self._drain()
        if self.done.rows < min_rows or self.done_ts is None:
            return None
        bound = self.done_ts
        for pool in self.pools:
            t0 = pool.earliest_open_start()
            if t0 is not None:
                bound = min(bound, t0)
        flows, feats = self.done.pop_before(bound)
        return (flows, feats) if len(flows["start"]) else None

    def finished_flows(self, min_rows: int = 1) -> Block | None:
        """Every flow finished so far, in the order they ended (not the table's), once
        ``min_rows`` wait: the store is emptied (memory holds the open flows only)."""
        self._drain()
        if self.done.rows < max(1, min_rows):
            return None
        return self.done.take_all()

    def open_slots(self) -> list[np.ndarray]:
        """Per flow table, the slots of its open flows."""
        return [pool.used_slots() for pool in self.pools]

    def open_records(self, pool: int, slots: np.ndarray) -> Block:
        """The open flows in ``slots`` of flow table ``pool`` as (flows, features), counted up
        to the last metered packet (their end reason is meaningless: they have not ended)."""
        p = self.pools[pool]
        rows = _FinishedFlows(self.n, int(self.params[8]))
        rows.add(p.pu[slots], p.pi[slots], p.pf[slots])
        return rows.take_all()

    def held(self) -> dict[str, int]:
        """What the meter holds now: open flows, finished flows not handed out yet, packets in
        the reorder window (for bounded-memory checks)."""
        self._drain()
        return {
            "open": int(sum(len(s) for s in self.open_slots())),
            "finished": int(self.done.rows),
            "pending": self.reorder.held() + self.clock.pending(),
        }

    def finish(self) -> Block:
        """Flush the reorder buffer and the open flows; return (flows, features) in a/b order."""
        return next(self.finish_blocks(None))

    def finish_blocks(self, rows: int | None) -> Iterator[Block]:
        """``finish`` in blocks of about ``rows`` flows (None: one block of all of them) that
        follow each other in table order.

        The open flows are ended ``rows`` at a time in start order, each block with the finished
        flows that start before the next block's first open flow: memory never holds a copy of
        every open flow besides the pools (a capture that ends with many flows open).
        """
        self._release_clock()
        self.reorder.flush(self._run)
        self._drain()
        now = self.done_ts if self.done_ts is not None else 0
        t0, seq, which, slot = [], [], [], []
        for i, pool in enumerate(self.pools):
            used = pool.used_slots()
            t0.append(pool.pi[used, K.I_T0])
            seq.append(pool.pi[used, K.I_SEQ0])
            which.append(np.full(len(used), i, np.int64))
            slot.append(used)
        t0s = np.concatenate(t0)
        order = np.lexsort((np.concatenate(seq), t0s))
        which_o, slot_o = np.concatenate(which)[order], np.concatenate(slot)[order]
        t0s = t0s[order]
        rows = max(1, len(order) if rows is None else rows)
        for lo in range(0, max(len(order), 1), rows):
            hi = min(lo + rows, len(order))
            for i, pool in enumerate(self.pools):
                mine = slot_o[lo:hi][which_o[lo:hi] == i]
                k = 0
                while k < len(mine):
                    k = K.emit_slots(mine, k, now, self.idle, self.cfg.timeout_inclusive,
                                     *pool.state)  # fmt: skip
                    self._drain(pool)
            if hi < len(order):
                block = self.done.pop_before(int(t0s[hi]))
            else:
                self.close()
                block = self.done.result()
            if len(block[0]["start"]) or hi >= len(order):
                yield block

    def close(self) -> None:
        """Free the pools and stop the shard threads (``finish`` does it; idempotent)."""
        for pool in self.pools:
            pool.release()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
