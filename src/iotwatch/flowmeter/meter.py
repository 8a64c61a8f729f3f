"""The flow meter: decoded packet batches to bidirectional flows, one packet at a time in numba.

How it works (docs/flows.md has the flow definition):

1. Each batch is reduced to the metered packets and the columns the meter reads (no copy when
   nothing is filtered out).
2. A reorder buffer holds back the packets of the last ``reorder_window`` seconds, so what is
   metered is always in timestamp order (the global stable sort by time, whatever the chunking);
   sorted input is metered straight from the batch's arrays, only disordered chunks are sorted.
3. ``_meter_kernels.meter_run`` meters packets in that order against a streaming flow table: an
   open-addressing hash table over a pool of flow records (counters, first-N sizes and times per
   direction, TCP close flags). Idle, active and close cuts are decided per packet, so chunk
   boundaries cannot change the result. Flows idle at the end of a chunk are swept out of the
   pool; finished flows go to an output buffer that is drained into compact column chunks.
4. Finished flows are kept in endpoint order (a/b); the device side, the texts and the
   sent/received orientation are decided once at the end, column-wise (``build_table``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from iotwatch.errors import InputError
from iotwatch.flowmeter import _meter_kernels as K
from iotwatch.flowmeter.config import TIMESTAMP_UNITS_NS, FlowConfig
from iotwatch.flowmeter.packets import PacketBatch, ReadStats
from iotwatch.flowmeter.schema import END_REASONS, feature_columns, flow_schema
from iotwatch.inventory import Inventory

DEFAULT_CHUNK = 262_144
_NS = 1_000_000_000


class _Pool:
    """One flow table: the pool of open flows, its hash table, the kernel's output buffer."""

    def __init__(self, n: int, cap: int, out_rows: int) -> None:
        self.n = n
        self.st = np.array([cap, 0, 0], np.int64)  # free slots, output rows, now
        self.alloc(cap)
        self.ou = np.zeros((out_rows, K.NU), np.uint64)
        self.oi = np.zeros((out_rows, K.NI), np.int64)
        self.of = np.zeros((out_rows, 2, n), np.int64)

    def alloc(self, cap: int, grow: bool = False) -> None:
        """(Re)allocate the pool with ``cap`` slots (keeping the flows when ``grow``) and a hash
        table twice that size."""
        n = self.n
        pu, pi = _zeros_aligned((cap, K.NU), np.uint64), _zeros_aligned((cap, K.NI), np.int64)
        pf = np.full((cap, 2, n), -1, np.int64)
        # the free slots are a stack, free[:S_FREE], its top last: slot 0 is popped first
        free = np.arange(cap - 1, -1, -1, dtype=np.int64)
        if grow:
            m = len(self.pu)
            for new, prev in zip((pu, pi, pf), (self.pu, self.pi, self.pf), strict=True):
                new[:m] = prev
            # the new slots m.. under the old pool's free slots (a sweep may have freed a few
            # before the pool grew): those are reused first
            kept = int(self.st[K.S_FREE])
            free[cap - m : cap - m + kept] = self.free[:kept]
            self.st[K.S_FREE] = cap - m + kept
        else:
            self.st[K.S_FREE] = cap
        self.pu, self.pi, self.pf, self.free = pu, pi, pf, free
        # load factor <= 0.5 keeps linear probing short
        self.ht = np.full(2 * cap, -1, np.int64)
        if grow:
            K.rehash(self.ht, pu, pi, cap)

    @property
    def state(self) -> tuple[np.ndarray, ...]:
        """The kernel arguments from the hash table on."""
        return (self.ht, self.pu, self.pi, self.pf, self.free, self.st, self.ou, self.oi,
                self.of)  # fmt: skip

    def used_slots(self) -> np.ndarray:
        """The slots of the open flows."""
        return np.flatnonzero((self.pi[:, K.I_MISC] & K.M_USED) != 0)

    def earliest_open_start(self) -> int | None:
        used = self.used_slots()
        return int(self.pi[used, K.I_T0].min()) if len(used) else None

    def release(self) -> None:
        self.pu = self.pi = self.pf = self.ht = self.free = None  # type: ignore[assignment]
        self.ou = self.oi = self.of = None  # type: ignore[assignment]


MAX_THREADS = 64  # each flow table costs memory and a pass over every row


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
        self.pending: tuple[np.ndarray, ...] = ()  # reorder buffer, sorted by time
        self.done_ts: int | None = None  # everything at or before this time is processed
        self.late = 0  # packets later than the reorder window (clamped)
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
        ts = c[0] if idx is None else c[0][idx]  # timestamps of the metered rows
        if len(ts) == 0:
            return
        if self.done_ts is not None and ts.min() < self.done_ts:
            # later than the reorder window: clamp to the processed time, so time stays ordered
            self.late += int((ts < self.done_ts).sum())
            clamped = np.maximum(c[0], self.done_ts)  # unmetered rows too: they are never read
            c = (clamped, *c[1:])
            ts = clamped if idx is None else clamped[idx]
        in_order = len(ts) < 2 or bool(np.all(ts[1:] >= ts[:-1]))
        pend = self.pending if self.pending and len(self.pending[0]) else ()

        if in_order and (not pend or ts[0] >= pend[0][-1]):
            # the common case: pending + batch is already sorted; meter without copying
            watermark = int(ts[-1]) - self.window
            if pend:
                p_cut = int(np.searchsorted(pend[0], watermark, side="right"))
                self._run(pend, 0, p_cut)
                if p_cut < len(pend[0]):
                    self.pending = tuple(
                        np.concatenate([p[p_cut:], x])
                        for p, x in zip(pend, _gather(c, idx), strict=True)
                    )
                    self._sweep_if(p_cut > 0)
                    return
            cut = int(np.searchsorted(ts, watermark, side="right"))
            self._run(c, 0, cut, idx)
            rest = slice(cut, None) if idx is None else idx[cut:]
            self.pending = tuple(x[rest] for x in c)
            self._sweep_if(cut > 0 or bool(pend))
            return
        # disordered, or the held-back rows interleave with the chunk: one stable time order
        # over the held-back rows and the chunk's metered rows, read through by the kernel (the
        # chunk is not copied; only the rows held back again are)
        npend = len(pend[0]) if pend else 0
        ts_all = np.concatenate([pend[0], ts]) if npend else ts
        order = np.argsort(ts_all, kind="stable")
        sorted_ts = ts_all[order]
        if idx is not None:  # chunk rows by position in the chunk, not among the metered rows
            chunk = order >= npend
            order[chunk] = npend + idx[order[chunk] - npend]
        watermark = int(sorted_ts[-1]) - self.window
        cut = int(np.searchsorted(sorted_ts, watermark, side="right"))
        self._run(c, 0, cut, order, pend)
        self.pending = _take_rows(pend, c, order[cut:])
        self._sweep_if(cut > 0)

    def _sweep_if(self, processed: bool) -> None:
        """After a chunk was metered, emit the flows idle since: the pool keeps only live flows."""
        if processed:
            self._expire()

    def final_flows(
        self, min_rows: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
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

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Flush the reorder buffer and the open flows; return (flows, features) in a/b order."""
        return next(self.finish_blocks(None))

    def finish_blocks(
        self, rows: int | None
    ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """``finish`` in blocks of about ``rows`` flows (None: one block of all of them) that
        follow each other in table order.

        The open flows are ended ``rows`` at a time in start order, each block with the finished
        flows that start before the next block's first open flow: memory never holds a copy of
        every open flow besides the pools (a capture that ends with many flows open).
        """
        if self.pending and len(self.pending[0]):
            pend, self.pending = self.pending, ()
            self._run(pend, 0, len(pend[0]))
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


# The dtypes of the kernel's input columns, in ``K.COLUMNS`` order (the PacketBatch contract's).
_DTYPES = (np.int64, np.int64, np.uint8, np.uint8, np.uint64, np.uint64, np.uint64, np.uint64,
           np.uint16, np.uint16, np.uint8, np.int32, np.uint64, np.uint64, np.bool_, np.int64)  # fmt: skip


_NO_PERM = np.zeros(0, np.int64)  # meter_run reads rows in order
_NO_ROWS = tuple(np.zeros(0, dt) for dt in _DTYPES)  # no held-back rows


def feature_resolution(active_ns: int) -> int:
    """ns per unit of the first-N times stored in the pool: 1 (exact) while a flow's span, at
    most the active timeout, fits the packed field (2**43 ns, 2.4 h); coarser beyond (10 ns for
    a day), so any active timeout works."""
    limit = 1 << K.FEATURE_TIME_BITS
    return max(1, -(-(max(active_ns, 0) + 1) // limit))


def _zeros_aligned(shape: tuple[int, int], dtype: type, align: int = 64) -> np.ndarray:
    """Zeros whose rows start on ``align``-byte boundaries (64-byte rows: one cache line each)."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    skip = -raw.ctypes.data % align
    return raw[skip : skip + nbytes].view(dt).reshape(shape)


def _gather(c: tuple[np.ndarray, ...], idx: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """The metered rows of the kernel's columns (all of them when ``idx`` is None)."""
    return c if idx is None else tuple(x[idx] for x in c)


def _take_rows(
    pend: tuple[np.ndarray, ...], c: tuple[np.ndarray, ...], rows: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Rows of the virtual concatenation ``pend + c`` (``rows`` index it), as new columns."""
    npend = len(pend[0]) if pend else 0
    if not npend:
        return _gather(c, rows)
    mine = rows < npend
    out = []
    for p, x in zip(pend, c, strict=True):
        col = np.empty(len(rows), x.dtype)
        col[mine] = p[rows[mine]]
        col[~mine] = x[rows[~mine] - npend]
        out.append(col)
    return tuple(out)


class _FinishedFlows:
    """Finished flows as compact column chunks (about 0.36 KB a flow with N = 10).

    Rows are split into typed columns as they leave the kernel's output buffer, so the store
    costs what the table needs (not the kernel's 64-bit record layout), and ``result`` can free
    each column's chunks as soon as that column is gathered.
    """

    # name -> (record array, column, dtype) for the columns stored whole; the packed ones
    # (ports, protocol, IP version, VLAN, initiator, end reason) are unpacked in ``add``
    _FROM = {
        "a_hi": ("u", K.U_A_HI, np.uint64), "a_lo": ("u", K.U_A_LO, np.uint64),
        "b_hi": ("u", K.U_B_HI, np.uint64), "b_lo": ("u", K.U_B_LO, np.uint64),
        "mac_a": ("u", K.U_MAC_A, np.uint64), "mac_b": ("u", K.U_MAC_B, np.uint64),
        "start": ("i", K.I_T0, np.int64), "end": ("i", K.I_TL, np.int64),
        "pab": ("i", K.I_PAB, np.int64), "pba": ("i", K.I_PBA, np.int64),
        "bab": ("i", K.I_BAB, np.int64), "bba": ("i", K.I_BBA, np.int64),
        "seq0": ("i", K.I_SEQ0, np.int64),
    }  # fmt: skip
    _PACKED = {"proto": np.uint8, "ipver": np.uint8, "vlan": np.int32, "a_port": np.uint16,
               "b_port": np.uint16, "init_a": np.bool_, "reason": np.int8}  # fmt: skip
    _FEAT = ("s_ab", "s_ba", "t_ab", "t_ba")

    def __init__(self, n: int, res: int = 1) -> None:
        self.n = n
        self.res = res  # ns per unit of the packed feature times
        self.rows = 0
        self.cols: dict[str, list[np.ndarray]] = {k: [] for k in self._names()}

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return (*cls._FROM, *cls._PACKED, *cls._FEAT)

    def add(self, ou: np.ndarray, oi: np.ndarray, of: np.ndarray) -> None:
        """Keep output rows as typed column copies (the kernel's buffers are reused)."""
        self.rows += len(oi)
        src = {"u": ou, "i": oi}
        for name, (which, j, dtype) in self._FROM.items():
            self.cols[name].append(src[which][:, j].astype(dtype))
        small, misc = ou[:, K.U_SMALL], oi[:, K.I_MISC]
        unpacked = {
            "a_port": small, "b_port": small >> np.uint64(16), "proto": small >> np.uint64(32),
            "ipver": misc >> K.M_IPVER_SHIFT, "reason": misc >> K.M_REASON_SHIFT,
            "vlan": misc >> K.M_VLAN_SHIFT, "init_a": (misc & K.M_INIT_A) != 0,
        }  # fmt: skip
        for name, dtype in self._PACKED.items():
            # astype to a narrower integer keeps the low bits: the field's own
            self.cols[name].append(unpacked[name].astype(dtype))
        # the packed first-N features: size -1 / time 0 where absent, as the table expects
        t0 = oi[:, K.I_T0, None]
        for d in range(2):
            f = of[:, d, :]
            absent = f < 0
            size = (f & K.FEATURE_SIZE_MAX).astype(np.int32)
            size[absent] = -1
            t = t0 + (f >> K.FEATURE_SIZE_BITS) * self.res
            t[absent] = 0
            self.cols[("s_ab", "s_ba")[d]].append(size)
            self.cols[("t_ab", "t_ba")[d]].append(t)

    def pop_before(self, bound: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Take the flows that started before ``bound`` (ns); keep the others."""
        flows, feats = self.result()
        early = flows["start"] < bound
        late = ~early
        self.cols = {k: [] for k in self._names()}
        for d in (flows, feats):
            for k, v in d.items():
                self.cols[k].append(v[late])
        self.rows = int(late.sum())
        return {k: v[early] for k, v in flows.items()}, {k: v[early] for k, v in feats.items()}

    def result(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(flows, features) columns in a/b endpoint order; the chunks are consumed."""
        self.rows = 0
        out: dict[str, np.ndarray] = {}
        for name in list(self.cols):
            chunks = self.cols.pop(name)
            if chunks:
                out[name] = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
            elif name in self._FROM:
                out[name] = np.zeros(0, self._FROM[name][2])
            elif name in self._PACKED:
                out[name] = np.zeros(0, self._PACKED[name])
            else:
                out[name] = np.zeros((0, self.n), np.int32 if name[0] == "s" else np.int64)
            del chunks  # this column's chunks are freed before the next column is gathered
        feats = {k: out.pop(k) for k in self._FEAT}
        return out, feats


# -- orientation and the table ----------------------------------------------------------------


def _uniq2(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (hi, lo) pairs, sorted by (hi, lo): (uniq_hi, uniq_lo, inverse)."""
    order = np.lexsort((lo, hi))
    sh, sl = hi[order], lo[order]
    new = np.ones(len(order), bool)
    new[1:] = (sh[1:] != sh[:-1]) | (sl[1:] != sl[:-1])
    inv = np.empty(len(order), np.int64)
    inv[order] = np.cumsum(new) - 1
    return sh[new], sl[new], inv


def _ip_text(hi: int, lo: int) -> str:
    """One address as text (IPv4-mapped ones as dotted quads), as ``K.format_ips`` writes it."""
    import socket

    if hi == 0 and (lo >> 32) == 0xFFFF:
        return socket.inet_ntop(socket.AF_INET, (lo & 0xFFFF_FFFF).to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, ((hi << 64) | lo).to_bytes(16, "big"))


def _ip_words(text: str) -> tuple[int, int] | None:
    """(hi, lo) of an address in the reader's representation (IPv4 as ::ffff:a.b.c.d)."""
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    v = int(a) | (0xFFFF << 32) if a.version == 4 else int(a)
    return v >> 64, v & 0xFFFF_FFFF_FFFF_FFFF


def _string_array(off: np.ndarray, data: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """An Arrow string array straight from offsets and bytes (no Python string per row)."""
    n = len(off) - 1
    bitmap = None
    if valid is not None and not valid.all():
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    null_count = -1 if bitmap is not None else 0
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(off), pa.py_buffer(data), bitmap, null_count=null_count
    )


def _find2(uh: np.ndarray, ul: np.ndarray, h: int, low: int) -> int:
    """Index of (h, low) in the (hi, lo)-sorted unique pairs, or -1."""
    i, j = np.searchsorted(uh, np.uint64(h), "left"), np.searchsorted(uh, np.uint64(h), "right")
    k = i + int(np.searchsorted(ul[i:j], np.uint64(low)))
    return k if k < j and ul[k] == low else -1


def _mac_text(mac: int) -> str | None:
    if mac == 0:
        return None
    h = f"{mac:012x}"
    return ":".join(h[i : i + 2] for i in range(0, 12, 2))


def _in_networks(uh: np.ndarray, ul: np.ndarray, nets: list) -> np.ndarray:
    """Which (hi, lo) addresses lie in one of the networks (IPv4 ones only in IPv4 nets)."""
    v4 = (uh == 0) & ((ul >> np.uint64(32)) == np.uint64(0xFFFF))
    out = np.zeros(len(uh), bool)
    full = (1 << 128) - 1
    for net in nets:
        bits = net.prefixlen + (96 if net.version == 4 else 0)
        mask = (full << (128 - bits)) & full
        base = int(net.network_address) | ((0xFFFF << 32) if net.version == 4 else 0)
        m_hi, m_lo = np.uint64(mask >> 64), np.uint64(mask & 0xFFFF_FFFF_FFFF_FFFF)
        b_hi, b_lo = np.uint64(base >> 64), np.uint64(base & 0xFFFF_FFFF_FFFF_FFFF)
        hit = ((uh & m_hi) == b_hi) & ((ul & m_lo) == b_lo)
        out |= hit & (v4 if net.version == 4 else ~v4)
    return out


# numpy dtypes of the table's fixed-width Arrow types (DataType.to_pandas_dtype imports pandas)
_NP_OF = {
    pa.uint8(): np.uint8, pa.int32(): np.int32, pa.int64(): np.int64, pa.float64(): np.float64,
}  # fmt: skip


def _numpy(values: pa.Array | pa.ChunkedArray, dtype: type) -> np.ndarray:
    """A primitive Arrow column without nulls as numpy, read from its buffers (``to_numpy``
    imports pandas, like ``pa.array``: see ``_arrow``)."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    parts = [np.frombuffer(c.buffers()[1], dtype)[c.offset : c.offset + len(c)] for c in chunks]
    return np.concatenate(parts) if len(parts) != 1 else parts[0]


def _arrow(values: np.ndarray, typ: pa.DataType) -> pa.Array:
    """A numpy column as an Arrow array, zero-copy where the layout allows.

    ``pa.array`` on numpy input imports pandas (a quarter of a second of a CLI run) to check for
    pandas objects; building from buffers does not.
    """
    if pa.types.is_boolean(typ):
        bits = np.packbits(np.asarray(values, np.bool_), bitorder="little")
        return pa.Array.from_buffers(typ, len(values), [None, pa.py_buffer(bits)], null_count=0)
    arr = np.ascontiguousarray(values, _NP_OF[typ])
    return pa.Array.from_buffers(typ, len(arr), [None, pa.py_buffer(arr)], null_count=0)


def _str_take(values: Sequence[str], idx: np.ndarray) -> pa.Array:
    """``values[idx]`` as an Arrow string array, null where ``idx < 0`` (few values, many rows).

    A numba gather on the buffers: ``Array.take`` would import pyarrow.compute (70 ms a run).
    """
    data = [v.encode() for v in values]
    off = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(d) for d in data], out=off[1:])
    raw = np.frombuffer(b"".join(data), np.uint8)  # read-only, also when empty: one signature
    idx = np.asarray(idx, np.int64)
    return _string_array(*K.gather_strings(off, raw, idx), valid=idx >= 0)


def _device_sides(
    fl: dict[str, np.ndarray], inventory: Inventory | None, nets: list
) -> tuple[np.ndarray, np.ndarray]:
    """Per flow and side (a, b): the inventory device index (-1: none) and whether it is known.

    Matching is numeric, once per unique MAC and per unique IP: each inventory address is parsed
    once and looked up among the unique endpoints, keeping exact-text semantics (an inventory
    entry not in canonical form, what ``socket.inet_ntop`` writes, matches nothing, as a text
    lookup would). Returns (dev, known), each of shape (2, flows).
    """
    k = len(fl["a_hi"])
    dev = np.full(2 * k, -1, np.int64)
    local = np.zeros(2 * k, bool)
    devices = list(inventory.devices) if inventory is not None else []
    if devices or nets:
        mac = np.concatenate([fl["mac_a"], fl["mac_b"]])
        uh, ul, ip_inv = _uniq2(
            np.concatenate([fl["a_hi"], fl["b_hi"]]), np.concatenate([fl["a_lo"], fl["b_lo"]])
        )
    if devices:
        index = {id(d): i for i, d in enumerate(devices)}
        umac, mac_inv = np.unique(mac, return_inverse=True)
        by_mac = np.full(len(umac), -1, np.int64)
        for text, d in inventory.by_mac.items():
            try:
                m = int(text.replace(":", ""), 16)
            except ValueError:
                continue
            j = int(np.searchsorted(umac, np.uint64(m))) if 0 < m < 1 << 48 else len(umac)
            if j < len(umac) and umac[j] == m and _mac_text(m) == text:
                by_mac[j] = index[id(d)]
        by_ip = np.full(len(uh), -1, np.int64)
        for text, d in inventory.by_ip.items():
            w = _ip_words(text)
            if w is None or _ip_text(*w) != text:
                continue
            j = _find2(uh, ul, *w)
            if j >= 0:
                by_ip[j] = index[id(d)]
        dm, di = by_mac[mac_inv.reshape(-1)], by_ip[ip_inv]
        dev = np.where(dm >= 0, dm, di)  # the MAC wins, as in Inventory.lookup
    if nets:
        local = _in_networks(uh, ul, nets)[ip_inv]
    known = (dev >= 0) | local
    return dev.reshape(2, k), known.reshape(2, k)


def build_table(
    flows: dict[str, np.ndarray],
    feats: dict[str, np.ndarray],
    captures: np.ndarray | list[str],
    config: FlowConfig,
    inventory: Inventory | None = None,
    first_id: int = 0,
) -> pa.Table:
    """Orient flows to the device side and build the documented table, sorted by (start, id).

    ``first_id``: the flow_id of the first row (a block of a table written in parts).

    ``flows`` and ``feats`` are consumed: reordered in place (each unsorted column is freed as
    its sorted copy is made) and emptied as the table takes their data, to keep the peak low.
    """
    n = config.n_packets
    order = np.lexsort((flows["seq0"], flows["file"], flows["start"]))
    for d in (flows, feats):
        for key in list(d):
            d[key] = d[key][order]
    del order
    fl, ft = flows, feats
    caps = _str_take(list(captures), fl["file"])
    nets = [ipaddress.ip_network(x, strict=False) for x in config.local_networks]
    (dev_ia, dev_ib), (ka, kb) = _device_sides(fl, inventory, nets)
    known = ka != kb
    dev_a = np.where(known, ka, fl["init_a"])

    def sel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.where(dev_a, x, y)

    def ips(dev: bool) -> pa.Array:
        # one text per row, written by a kernel: cheaper than texts per unique address + a take
        x, y = ("a", "b") if dev else ("b", "a")
        hi, lo = sel(fl[f"{x}_hi"], fl[f"{y}_hi"]), sel(fl[f"{x}_lo"], fl[f"{y}_lo"])
        return _string_array(*K.format_ips(hi, lo))

    def macs(dev: bool) -> pa.Array:
        m = sel(fl["mac_a"], fl["mac_b"]) if dev else sel(fl["mac_b"], fl["mac_a"])
        return _string_array(*K.format_macs(m), valid=m != 0)

    devices = list(inventory.devices) if inventory is not None else []
    dev_i = sel(dev_ia, dev_ib)

    start = fl["start"] / _NS
    end = fl["end"] / _NS
    p_s, p_r = sel(fl["pab"], fl["pba"]), sel(fl["pba"], fl["pab"])
    b_s, b_r = sel(fl["bab"], fl["bba"]), sel(fl["bba"], fl["bab"])
    cols: dict[str, Any] = {
        "capture": caps,
        "flow_id": np.arange(first_id, first_id + len(start), dtype=np.int64),
        "proto": fl["proto"].astype(np.uint8),
        "ip_version": fl["ipver"].astype(np.uint8),
        "vlan": fl["vlan"].astype(np.int32),
        "dev_mac": macs(dev=True),
        "dev_ip": ips(dev=True),
        "dev_port": sel(fl["a_port"], fl["b_port"]).astype(np.int32),
        "peer_mac": macs(dev=False),
        "peer_ip": ips(dev=False),
        "peer_port": sel(fl["b_port"], fl["a_port"]).astype(np.int32),
        "device_known": known,
        "device_type": _str_take([d.device_type for d in devices], dev_i),
        "device_name": _str_take([d.name for d in devices], dev_i),
        "start": start,
        "end": end,
        "duration": end - start,
        "packets_sent": p_s,
        "packets_recv": p_r,
        "bytes_sent": b_s,
        "bytes_recv": b_r,
        "packets": p_s + p_r,
        "bytes": b_s + b_r,
        "end_reason": _str_take(END_REASONS, fl["reason"]),
    }
    fl.clear()
    d = dev_a[:, None]
    s_ab, s_ba = ft.pop("s_ab"), ft.pop("s_ba")
    s_sent, s_recv = np.where(d, s_ab, s_ba), np.where(d, s_ba, s_ab)
    del s_ab, s_ba
    pad = config.pad_value
    pad_size = np.int64(int(pad))  # int64 like the sizes were: out-of-range pads wrap as before
    names = feature_columns(n)
    blocks = []
    for s in (s_sent, s_recv):
        blocks.append(np.where(s >= 0, s, pad_size).astype(np.int32))
    t_ab, t_ba = ft.pop("t_ab"), ft.pop("t_ba")
    for s, (x, y) in ((s_sent, (t_ab, t_ba)), (s_recv, (t_ba, t_ab))):
        ok = (s[:, 1:] >= 0) & (s[:, :-1] >= 0)
        blocks.append(np.where(ok, np.diff(np.where(d, x, y), axis=1) / _NS, float(pad)))
    del t_ab, t_ba, s_sent, s_recv
    feat_cols = [b[:, i] for b in blocks for i in range(b.shape[1])]
    for name, arr in zip(names, feat_cols, strict=True):
        cols[name] = np.ascontiguousarray(arr)
    schema = flow_schema(n)
    arrays = [
        cols[f.name] if isinstance(cols[f.name], pa.Array) else _arrow(cols[f.name], f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


# -- the library entry point -------------------------------------------------------------------


@dataclass
class FlowResult:
    """Flows of some captures: the table and what the reader saw."""

    table: pa.Table | None  # None when the flows were streamed to a Parquet file
    stats: ReadStats = field(default_factory=ReadStats)
    late_packets: int = 0
    rows: int = -1  # flows (the table's rows, also when it was streamed)

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
        return "; ".join(parts)

    def to_parquet(self, path: str | Path) -> None:
        """Write the flow table as Parquet (parent folders created)."""
        import pyarrow.parquet as pq

        if self.table is None:
            raise ValueError("the flows were streamed to a Parquet file: no table to write")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.table, path, use_dictionary=_dictionary_columns(self.table.schema))


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode only the string columns: on numeric and feature columns (mostly
    distinct values) it costs half the write time and makes the file larger, not smaller."""
    return [f.name for f in schema if pa.types.is_string(f.type)]


Reader = Callable[..., Iterator[PacketBatch]]
_DONE = object()


def _prefetch(batches: Iterator[PacketBatch], depth: int = 2) -> Iterator[PacketBatch]:
    """Run the reader in a thread, ``depth`` batches ahead (bounded: memory stays flat).

    The reader's exceptions are re-raised here; when the consumer stops early the thread is told
    to stop and joined.
    """
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(exc)

    th = threading.Thread(target=work, name="flowmeter-reader", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():
            try:  # unblock a reader waiting on a full queue
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)


def default_reader() -> Reader:
    """The fast reader when present, else the scapy reference reader."""
    try:
        from iotwatch.flowmeter.reader import read_packets
    except ImportError:
        from iotwatch.flowmeter._scapy_reader import read_packets_scapy as read_packets
    return read_packets


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
    ``out``: stream the table to this Parquet file in row groups as flows become final (memory
    then holds the flows of the last idle + active timeouts, not all of them; the result's
    ``table`` is None). Several captures are each streamed to a sorted run file next to ``out``
    and the runs are merged by start time into ``out`` (memory: a batch per capture), so the
    file has the same rows in the same order as the in-memory table.
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
        out = Path(out)
        part = out.with_name(f".{out.name}.{os.getpid()}.part")
        try:
            result = _stream_captures(paths, run, part)
            os.replace(part, out)
            return result
        finally:
            part.unlink(missing_ok=True)
            if bar is not None:
                bar.close()
    late = 0
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
    return FlowResult(table=table, stats=stats, late_packets=late)


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


STREAM_ROWS = 65_536  # final flows gathered before row groups are written (streaming mode)
ROW_GROUP = 32_768  # rows per row group: a table part is built while the previous is written


class _BackgroundWriter:
    """A ParquetWriter fed through a short queue and written by a thread of its own.

    Parquet encoding and compression release the GIL, so building the next part of the table
    (numpy, in this thread) overlaps writing the previous one. A write error is re-raised by the
    next ``put`` or by ``close``.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        import queue
        import threading

        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(path, schema, use_dictionary=_dictionary_columns(schema))
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

    def put(self, table: pa.Table) -> None:
        """Queue one part (blocks while two parts wait)."""
        if self._error is not None:
            raise self._error
        self._q.put(table)

    def close(self) -> None:
        """Write what is queued, close the file; raise the first write error."""
        self._q.put(None)
        self._thread.join()
        self._writer.close()
        if self._error is not None:
            raise self._error

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


def _meter_streaming(
    path: Path, run: _Run, out: Path, row_group: int | None = None, start_ns: bool = False
) -> FlowResult:
    """One capture to a Parquet file, row groups of at most ``row_group`` rows (default
    ``ROW_GROUP``) as blocks of flows become final. ``start_ns``: add the exact start
    (int64 ns) as a last column, for ``_merge_runs``."""
    row_group = row_group or ROW_GROUP
    config, inventory = run.config, run.inventory
    schema = flow_schema(config.n_packets)
    if start_ns:
        schema = schema.append(pa.field(START_NS, pa.int64(), nullable=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    meter = FlowMeter(config, run.threads)  # first: a bad setting raises before a file is open
    writer = _BackgroundWriter(out, schema)

    def write(flows: dict[str, np.ndarray], feats: dict[str, np.ndarray]) -> None:
        # in table order, row_group rows at a time: the table's temporaries stay small
        nonlocal written
        order = np.lexsort((flows["seq0"], flows["start"]))
        for lo in range(0, max(len(order), 1), row_group):
            idx = order[lo : lo + row_group]
            part = {k: v[idx] for k, v in flows.items()}
            part["file"] = np.zeros(len(idx), np.int64)
            exact = part["start"].copy()  # build_table consumes the dict
            part_feats = {k: v[idx] for k, v in feats.items()}
            table = build_table(part, part_feats, [path.name], config, inventory, written)
            if start_ns:
                table = table.append_column(schema.field(START_NS), _arrow(exact, pa.int64()))
            if table.num_rows or not written:
                writer.put(table)
            written += table.num_rows

    try:
        for batch in run.batches(path):
            meter.feed(batch)
            block = meter.final_flows(STREAM_ROWS)
            if block is not None:
                write(*block)
        batch = None
        for block in meter.finish_blocks(STREAM_ROWS):
            write(*block)
    except BaseException:
        meter.close()
        writer.abort()  # the file is incomplete: the caller removes it
        raise
    meter.close()
    writer.close()
    return FlowResult(table=None, stats=run.stats, late_packets=meter.late, rows=written)


START_NS = "__start_ns"  # the exact start in run files (the table's start is float seconds)


def _stream_captures(paths: list[Path], run: _Run, out: Path) -> FlowResult:
    """Captures to one Parquet file: streamed directly (one capture) or as merged runs."""
    if len(paths) == 1:
        return _meter_streaming(paths[0], run, out)
    runs = [out.with_name(f".{out.name}.run{i}.tmp") for i in range(len(paths))]
    schema = flow_schema(run.config.n_packets)
    # the merge holds about MERGE_ROWS rows whatever the number of runs: each run is written
    # and read back in row groups of its share (a Parquet reader decodes a row group's pages)
    share = max(MERGE_MIN_BATCH, MERGE_ROWS // len(runs))
    late = 0
    try:
        for path, part in zip(paths, runs, strict=True):
            res = _meter_streaming(path, run, part, row_group=min(ROW_GROUP, share), start_ns=True)
            late += res.late_packets
            _trim_heap()
        rows = _merge_runs(runs, out, schema, share)
    finally:
        for part in runs:
            part.unlink(missing_ok=True)
    return FlowResult(table=None, stats=run.stats, late_packets=late, rows=rows)


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


MERGE_ROWS = 16_384  # rows buffered over all runs while merging (about 8 MB)
MERGE_MIN_BATCH = 1024  # ... but at least this many per run


def _merge_runs(runs: list[Path], out: Path, schema: pa.Schema, rows: int) -> int:
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
    writer = _BackgroundWriter(out, schema)
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
                for lo in range(0, len(order), ROW_GROUP):
                    part = block.take(_arrow(order[lo : lo + ROW_GROUP], pa.int64()))
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
