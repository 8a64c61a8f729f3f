"""The flow meter: decoded packet batches to bidirectional flows, vectorised per chunk.

How it works (docs/flows.md has the flow definition):

1. Each batch is filtered and reduced to the columns the meter needs; the flow key is made
   direction-free by ordering the two (IP, port) endpoints: endpoint ``a`` is the smaller one.
2. A reorder buffer holds back the packets of the last ``reorder_window`` seconds, so what is
   processed is always in timestamp order (the global stable sort by time, whatever the chunking).
3. Open flows are carried across chunks as one *state row* each, prepended to the next chunk:
   a row with the flow's key, start, last timestamp, counters and TCP close flags; its first-N
   feature values live in side arrays indexed by the row's ``slot``. A state row behaves like a
   packet that already weighs many packets, so a single code path handles both.
4. Rows are sorted by a 64-bit hash of the key (stable, so time order survives within a key; a
   hash collision is detected and the chunk is sorted by the full key instead). Flow boundaries:
   a key change, a gap over the idle timeout (vectorised), and, only in the rare segments that
   may need them, active-timeout cuts and TCP close + new SYN (a loop over flows, not packets).
5. Counters come from ``np.add.reduceat``; the first N packets per direction from group-rank
   arithmetic on cumulative sums (a state row adds the count it already holds).
6. Finished flows are kept in endpoint order (a/b); the device side, the names and the
   sent/received orientation are decided once at the end, per unique endpoint.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from iotwatch.errors import InputError
from iotwatch.flowmeter.config import TIMESTAMP_UNITS_NS, FlowConfig
from iotwatch.flowmeter.packets import PacketBatch, ReadStats
from iotwatch.flowmeter.schema import END_REASONS, feature_columns, flow_schema
from iotwatch.inventory import Inventory

DEFAULT_CHUNK = 262_144
_IDLE, _ACTIVE, _CLOSE, _EOC = (END_REASONS.index(r) for r in END_REASONS)
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_TCP = 6
_NS = 1_000_000_000

# Columns of a meter row (packet or carried state) and their dtypes.
_ROW = {
    "proto": np.uint8, "a_hi": np.uint64, "a_lo": np.uint64, "a_port": np.uint16,
    "b_hi": np.uint64, "b_lo": np.uint64, "b_port": np.uint16, "kvlan": np.int32,
    "h": np.uint64, "t": np.int64, "t0": np.int64, "seq0": np.int64,
    "pab": np.int64, "pba": np.int64, "bab": np.int64, "bba": np.int64,
    "fa": np.int64, "fb": np.int64, "rst": np.int64, "cand": np.bool_, "init_a": np.bool_,
    "mac_a": np.uint64, "mac_b": np.uint64, "vlan": np.int32, "ipver": np.uint8,
    "slot": np.int64, "size": np.int64,
}  # fmt: skip
_KEY = ("proto", "a_hi", "a_lo", "a_port", "b_hi", "b_lo", "b_port", "kvlan")
# What a finished flow keeps (endpoint order), before orientation.
_FLOW = (
    "proto", "ipver", "vlan", "a_hi", "a_lo", "a_port", "b_hi", "b_lo", "b_port", "mac_a",
    "mac_b", "init_a", "start", "end", "pab", "pba", "bab", "bba", "reason", "seq0",
)  # fmt: skip

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wrapping uint64 arithmetic on arrays)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def _key_hash(c: dict[str, np.ndarray]) -> np.ndarray:
    h = _mix(c["a_lo"] + _GOLD)
    for name in ("b_lo", "a_hi", "b_hi"):
        h = _mix(h ^ c[name])
    small = (
        c["a_port"].astype(np.uint64)
        | (c["b_port"].astype(np.uint64) << np.uint64(16))
        | (c["proto"].astype(np.uint64) << np.uint64(32))
        | ((c["kvlan"].astype(np.int64) & 0xFFFF).astype(np.uint64) << np.uint64(40))
    )
    return _mix(h ^ small)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = [p for p in parts if p and len(next(iter(p.values())))]
    if not parts:
        return {}
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in cols.items()}


def _size(cols: dict[str, np.ndarray]) -> int:
    return len(next(iter(cols.values()))) if cols else 0


class FlowMeter:
    """Meters one capture: feed PacketBatch chunks in file order, then ``finish()``."""

    def __init__(self, config: FlowConfig) -> None:
        self.cfg = config
        self.n = config.n_packets
        unit = TIMESTAMP_UNITS_NS[config.timestamp_unit]
        self.unit = unit
        self.idle = int(round(config.idle_timeout * _NS))
        self.active = int(round(config.active_timeout * _NS))
        self.window = int(round(config.reorder_window * _NS))
        protos = config.protocol_numbers()
        self.protos = None if protos is None else np.asarray(protos, dtype=np.uint8)
        self.seq = 0  # packets metered so far (their order in the file)
        self.pending: dict[str, np.ndarray] = {}  # reorder buffer, sorted by time
        self.done_ts: int | None = None  # everything at or before this time is processed
        self.late = 0  # packets later than the reorder window (clamped)
        self.state: dict[str, np.ndarray] = {}  # open flows, one state row each
        self.state_feat = self._empty_feat(0)
        self.out: list[dict[str, np.ndarray]] = []
        self.out_feat: list[dict[str, np.ndarray]] = []

    def _empty_feat(self, f: int) -> dict[str, np.ndarray]:
        n = self.n
        return {
            "s_ab": np.full((f, n), -1, np.int64),
            "s_ba": np.full((f, n), -1, np.int64),
            "t_ab": np.zeros((f, n), np.int64),
            "t_ba": np.zeros((f, n), np.int64),
        }

    # -- ingress ------------------------------------------------------------------------------
    def _prepare(self, b: PacketBatch) -> dict[str, np.ndarray]:
        """Keep the metered packets and compute direction-free key columns."""
        keep = None
        if self.protos is not None:
            keep = np.isin(b.proto, self.protos)
        if self.cfg.non_first_fragments == "drop":
            nonfirst = b.fragment & (b.sport == 0) & (b.dport == 0)
            keep = ~nonfirst if keep is None else keep & ~nonfirst
        idx = None if keep is None or keep.all() else np.flatnonzero(keep)

        def col(a: np.ndarray) -> np.ndarray:
            return a if idx is None else a[idx]

        sh, sl, dh, dl = col(b.src_ip_hi), col(b.src_ip_lo), col(b.dst_ip_hi), col(b.dst_ip_lo)
        sp, dp = col(b.sport), col(b.dport)
        n = len(sh)
        # a = the smaller (ip, port) endpoint; a_src: the packet goes a -> b
        a_src = (sh < dh) | ((sh == dh) & ((sl < dl) | ((sl == dl) & (sp <= dp))))
        mode = self.cfg.size
        size = col(
            {"frame": b.frame_len, "captured": b.cap_len, "ip": b.ip_len, "payload": b.payload_len}[
                mode
            ]
        ).astype(np.int64, copy=False)
        ts = col(b.ts_ns).astype(np.int64, copy=False)
        if self.unit != 1:
            ts = (ts // self.unit) * self.unit
        flags = col(b.tcp_flags)
        proto = col(b.proto)
        tcp = proto == _TCP
        fin = tcp & ((flags & _FIN) != 0)
        rst = tcp & ((flags & _RST) != 0)
        syn = tcp & ((flags & _SYN) != 0)
        ack = (flags & _ACK) != 0
        smac, dmac = col(b.src_mac), col(b.dst_mac)
        vlan = col(b.vlan).astype(np.int32, copy=False)
        one = a_src.astype(np.int64)
        c = {
            "proto": proto,
            "a_hi": np.where(a_src, sh, dh),
            "a_lo": np.where(a_src, sl, dl),
            "a_port": np.where(a_src, sp, dp),
            "b_hi": np.where(a_src, dh, sh),
            "b_lo": np.where(a_src, dl, sl),
            "b_port": np.where(a_src, dp, sp),
            "kvlan": vlan if self.cfg.vlan_in_key else np.zeros(n, np.int32),
            "t": ts,
            "t0": ts,
            "seq0": np.arange(self.seq, self.seq + n, dtype=np.int64),
            "pab": one,
            "pba": 1 - one,
            "bab": size * one,
            "bba": size * (1 - one),
            "fa": (fin & a_src).astype(np.int64),
            "fb": (fin & ~a_src).astype(np.int64),
            "rst": rst.astype(np.int64),
            "cand": syn & ~ack,
            # the initiator sent the first packet, unless that packet is a SYN-ACK (its answer)
            "init_a": a_src ^ (syn & ack),
            "mac_a": np.where(a_src, smac, dmac),
            "mac_b": np.where(a_src, dmac, smac),
            "vlan": vlan,
            "ipver": col(b.ip_version),
            "slot": np.full(n, -1, np.int64),
            "size": size,
        }
        self.seq += n
        return c

    def feed(self, batch: PacketBatch) -> None:
        """Meter one batch (packets of one capture, in file order)."""
        if len(batch) == 0:
            return
        c = self._prepare(batch)
        if _size(c) == 0:
            return
        if self.done_ts is not None:
            late = c["t"] < self.done_ts
            if late.any():
                # later than the reorder window: clamp to the processed time, so time stays ordered
                self.late += int(late.sum())
                c["t"] = np.maximum(c["t"], self.done_ts)
                c["t0"] = c["t"]
        allp = _concat([self.pending, c]) if _size(self.pending) else c
        del c
        ts = allp["t"]
        if len(ts) > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
            # only disordered input pays for the sort and the copy
            allp = _take(allp, np.argsort(ts, kind="stable"))
        watermark = int(allp["t"][-1]) - self.window
        cut = int(np.searchsorted(allp["t"], watermark, side="right"))
        if cut == 0:
            self.pending = allp
            return
        ready = _take(allp, slice(0, cut))
        self.pending = _take(allp, slice(cut, None))
        self._process(ready)

    # -- the chunk --------------------------------------------------------------------------
    def _process(self, pk: dict[str, np.ndarray]) -> None:
        cfg = self.cfg
        n_state = _size(self.state)
        pk["h"] = _key_hash(pk)
        rows = _concat([self.state, pk]) if n_state else pk
        now = int(pk["t"][-1])
        self.done_ts = now
        m = _size(rows)

        order = np.argsort(rows["h"], kind="stable")
        r = _take(rows, order)
        same = r["h"][1:] == r["h"][:-1]
        for k in _KEY:
            same &= r[k][1:] == r[k][:-1]
        if np.any((r["h"][1:] == r["h"][:-1]) & ~same):
            # a hash collision: sort by the full key (time order within a key is kept)
            order = np.lexsort([np.arange(m)] + [rows[k] for k in reversed(_KEY)])
            r = _take(rows, order)
            same = np.ones(m - 1, bool)
            for k in _KEY:
                same &= r[k][1:] == r[k][:-1]
        del rows
        new_grp = np.empty(m, bool)
        new_grp[0] = True
        new_grp[1:] = ~same

        t, t0 = r["t"], r["t0"]
        gap = np.empty(m, np.int64)
        gap[0] = 0
        gap[1:] = t[1:] - t[:-1]
        idle_cut = (gap >= self.idle) if cfg.timeout_inclusive else (gap > self.idle)
        idle_cut &= ~new_grp
        seg_start = new_grp | idle_cut
        reason_at = np.full(m, -1, np.int8)
        reason_at[idle_cut] = _IDLE

        starts = np.flatnonzero(seg_start)
        ends = np.append(starts[1:], m)
        extra = self._hard_cuts(r, starts, ends, seg_start)
        if extra:
            pos = np.fromiter((p for p, _ in extra), np.int64, len(extra))
            reason_at[pos] = np.fromiter((w for _, w in extra), np.int8, len(extra))
            seg_start[pos] = True
            starts = np.flatnonzero(seg_start)
            ends = np.append(starts[1:], m)
        f = len(starts)

        agg = {k: np.add.reduceat(r[k], starts) for k in ("pab", "pba", "bab", "bba", "fa", "fb")}
        agg["rst"] = np.add.reduceat(r["rst"], starts)
        flow = {
            "proto": r["proto"][starts],
            "ipver": r["ipver"][starts],
            "vlan": np.maximum.reduceat(r["vlan"], starts),
            "a_hi": r["a_hi"][starts],
            "a_lo": r["a_lo"][starts],
            "a_port": r["a_port"][starts],
            "b_hi": r["b_hi"][starts],
            "b_lo": r["b_lo"][starts],
            "b_port": r["b_port"][starts],
            "kvlan": r["kvlan"][starts],
            "h": r["h"][starts],
            "mac_a": np.maximum.reduceat(r["mac_a"], starts),
            "mac_b": np.maximum.reduceat(r["mac_b"], starts),
            "init_a": r["init_a"][starts],
            "start": t0[starts],
            "end": t[ends - 1],
            "seq0": r["seq0"][starts],
            **agg,
        }
        closed = (agg["rst"] > 0) | ((agg["fa"] > 0) & (agg["fb"] > 0))

        # features: carried values first, then the packets of this chunk by rank in direction
        feat = self._empty_feat(f)
        slot = r["slot"][starts]
        cont = slot >= 0
        if cont.any():
            src = slot[cont]
            for k in feat:
                feat[k][cont] = self.state_feat[k][src]
        flow_of_row = np.cumsum(seg_start) - 1
        is_pkt = r["slot"] < 0
        n = self.n
        for p, s_key, t_key in (("pab", "s_ab", "t_ab"), ("pba", "s_ba", "t_ba")):
            cnt = r[p]
            cum = np.cumsum(cnt)
            base = cum[starts] - cnt[starts]
            rank = cum - base[flow_of_row] - 1
            sel = np.flatnonzero(is_pkt & (cnt == 1) & (rank < n))
            if len(sel):
                fo, rk = flow_of_row[sel], rank[sel]
                feat[s_key][fo, rk] = r["size"][sel]
                feat[t_key][fo, rk] = t[sel]

        # which flows are finished: a later flow of the same key, or idle at the chunk's end
        last_in_grp = np.ones(f, bool)
        nxt = ends[:-1]
        last_in_grp[:-1] = new_grp[nxt]
        reason = np.full(f, _EOC, np.int8)
        reason[:-1] = np.where(last_in_grp[:-1], _EOC, reason_at[nxt])
        quiet = now - flow["end"]
        swept = last_in_grp & (
            (quiet >= self.idle) if cfg.timeout_inclusive else (quiet > self.idle)
        )
        reason[swept] = _IDLE
        reason[closed] = _CLOSE
        finished = ~last_in_grp | swept
        flow["reason"] = reason

        if finished.any():
            fi = np.flatnonzero(finished)
            self.out.append({k: flow[k][fi] for k in _FLOW})
            self.out_feat.append({k: v[fi] for k, v in feat.items()})
        oi = np.flatnonzero(~finished)
        self.state_feat = {k: v[oi] for k, v in feat.items()}
        k_open = len(oi)
        self.state = {
            "proto": flow["proto"][oi],
            "a_hi": flow["a_hi"][oi],
            "a_lo": flow["a_lo"][oi],
            "a_port": flow["a_port"][oi],
            "b_hi": flow["b_hi"][oi],
            "b_lo": flow["b_lo"][oi],
            "b_port": flow["b_port"][oi],
            "kvlan": flow["kvlan"][oi],
            "h": flow["h"][oi],
            "t": flow["end"][oi],
            "t0": flow["start"][oi],
            "seq0": flow["seq0"][oi],
            "pab": flow["pab"][oi],
            "pba": flow["pba"][oi],
            "bab": flow["bab"][oi],
            "bba": flow["bba"][oi],
            "fa": np.minimum(flow["fa"][oi], 1),
            "fb": np.minimum(flow["fb"][oi], 1),
            "rst": np.minimum(flow["rst"][oi], 1),
            "cand": np.zeros(k_open, bool),
            "init_a": flow["init_a"][oi],
            "mac_a": flow["mac_a"][oi],
            "mac_b": flow["mac_b"][oi],
            "vlan": flow["vlan"][oi],
            "ipver": flow["ipver"][oi],
            "slot": np.arange(k_open, dtype=np.int64),
            "size": np.zeros(k_open, np.int64),
        }

    def _hard_cuts(
        self, r: dict[str, np.ndarray], starts: np.ndarray, ends: np.ndarray, seg_start: np.ndarray
    ) -> list[tuple[int, int]]:
        """Active-timeout and TCP-close cuts, searched only in segments that may need them."""
        cfg = self.cfg
        t, t0 = r["t"], r["t0"]
        incl = cfg.timeout_inclusive
        span = t[ends - 1] - t0[starts]
        hard = (span >= self.active) if incl else (span > self.active)
        cands = np.empty(0, np.int64)
        c_rst = c_fa = c_fb = None
        if cfg.tcp_close_ends_flow:
            cand_rows = np.flatnonzero(r["cand"] & ~seg_start)
            if len(cand_rows):
                c_rst = np.concatenate([[0], np.cumsum(r["rst"])])
                c_fa = np.concatenate([[0], np.cumsum(r["fa"])])
                c_fb = np.concatenate([[0], np.cumsum(r["fb"])])
                seg_of = np.searchsorted(starts, cand_rows, side="right") - 1
                s = starts[seg_of]
                # closed when counted from the segment's start: a later cut can only see less
                ok = (c_rst[cand_rows] - c_rst[s] > 0) | (
                    (c_fa[cand_rows] - c_fa[s] > 0) & (c_fb[cand_rows] - c_fb[s] > 0)
                )
                cands = cand_rows[ok]
                if len(cands):
                    hard[seg_of[ok]] = True
        out: list[tuple[int, int]] = []
        side = "left" if incl else "right"
        for si in np.flatnonzero(hard):
            s, e = int(starts[si]), int(ends[si])
            seg_c = cands[(cands > s) & (cands < e)] if len(cands) else cands
            cur, begin, ci = s, int(t0[s]), 0
            while True:
                j = cur + 1 + int(np.searchsorted(t[cur + 1 : e], begin + self.active, side=side))
                nxt, why = (j, _ACTIVE) if j < e else (e, -1)
                while ci < len(seg_c) and seg_c[ci] <= cur:
                    ci += 1
                k = ci
                while k < len(seg_c) and seg_c[k] < nxt:
                    c = int(seg_c[k])
                    if (c_rst[c] - c_rst[cur] > 0) or (
                        c_fa[c] - c_fa[cur] > 0 and c_fb[c] - c_fb[cur] > 0
                    ):
                        nxt, why = c, _CLOSE
                        break
                    k += 1
                if why < 0:
                    break
                out.append((nxt, why))
                cur, begin = nxt, int(t[nxt])
        return out

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Flush the reorder buffer and the open flows; return (flows, features) in a/b order."""
        if _size(self.pending):
            pend, self.pending = self.pending, {}
            self._process(pend)
        if _size(self.state):
            s = self.state
            closed = (s["rst"] > 0) | ((s["fa"] > 0) & (s["fb"] > 0))
            quiet = (self.done_ts or 0) - s["t"]
            idle = (quiet >= self.idle) if self.cfg.timeout_inclusive else (quiet > self.idle)
            reason = np.where(closed, _CLOSE, np.where(idle, _IDLE, _EOC)).astype(np.int8)
            flows = {k: s[k] for k in _FLOW if k in s}
            flows.update(start=s["t0"], end=s["t"], reason=reason)
            self.out.append({k: flows[k] for k in _FLOW})
            self.out_feat.append(self.state_feat)
            self.state = {}
        flows = _concat(self.out) or {k: np.empty(0, _ROW.get(k, np.int64)) for k in _FLOW}
        feats = self._concat_feat(self.out_feat)
        self.out, self.out_feat = [], []
        return flows, feats

    def _concat_feat(self, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if not parts:
            return self._empty_feat(0)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- orientation and the table ----------------------------------------------------------------


def _uniq2(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (hi, lo) pairs: (uniq_hi, uniq_lo, inverse)."""
    order = np.lexsort((lo, hi))
    sh, sl = hi[order], lo[order]
    new = np.ones(len(order), bool)
    new[1:] = (sh[1:] != sh[:-1]) | (sl[1:] != sl[:-1])
    inv = np.empty(len(order), np.int64)
    inv[order] = np.cumsum(new) - 1
    return sh[new], sl[new], inv


def _ip_texts(hi: np.ndarray, lo: np.ndarray) -> list[str]:
    """Addresses as text (IPv4-mapped ones as dotted quads), one inet_ntop each."""
    import socket

    out = []
    for h, v in zip(hi.tolist(), lo.tolist(), strict=True):
        if h == 0 and (v >> 32) == 0xFFFF:
            out.append(socket.inet_ntop(socket.AF_INET, (v & 0xFFFF_FFFF).to_bytes(4, "big")))
        else:
            out.append(socket.inet_ntop(socket.AF_INET6, ((h << 64) | v).to_bytes(16, "big")))
    return out


def _mac_text(mac: int) -> str | None:
    if mac == 0:
        return None
    h = f"{mac:012x}"
    return ":".join(h[i : i + 2] for i in range(0, 12, 2))


@dataclass
class _Endpoints:
    """Per endpoint (both sides stacked): known?, ip/mac text and inventory type/name."""

    known: np.ndarray
    ip: pa.Array
    mac: pa.Array
    dtype: pa.Array
    name: pa.Array


def _endpoints(
    mac: np.ndarray, hi: np.ndarray, lo: np.ndarray, inventory: Inventory | None, nets: list
) -> _Endpoints:
    """Text and device matches, computed once per unique MAC and per unique IP."""
    uh, ul, ip_inv = _uniq2(hi, lo)
    ips = _ip_texts(uh, ul)
    umac, mac_inv = np.unique(mac, return_inverse=True)
    macs = [_mac_text(m) for m in umac.tolist()]
    devices = list(inventory.devices) if inventory is not None else []
    index = {id(d): i for i, d in enumerate(devices)}
    dev = np.full(len(mac), -1, np.int64)
    local = np.zeros(len(mac), bool)
    if devices:
        by_mac = np.asarray(
            [index[id(inventory.by_mac[m])] if m in inventory.by_mac else -1 for m in macs],
            np.int64,
        )
        by_ip = np.asarray(
            [index[id(inventory.by_ip[i])] if i in inventory.by_ip else -1 for i in ips], np.int64
        )
        dm, di = by_mac[mac_inv.reshape(-1)], by_ip[ip_inv]
        dev = np.where(dm >= 0, dm, di)  # the MAC wins, as in Inventory.lookup
    if nets:
        in_net = np.asarray(
            [any(a.version == n.version and a in n for n in nets)
             for a in map(ipaddress.ip_address, ips)],
            bool,
        )  # fmt: skip
        local = in_net[ip_inv]
    take = pa.array(np.maximum(dev, 0), pa.int64())
    has = pa.array(dev >= 0, pa.bool_())
    import pyarrow.compute as pc

    def dev_attr(values: list[str]) -> pa.Array:
        if not devices:
            return pa.nulls(len(mac), pa.string())
        return pc.if_else(has, pa.array(values, pa.string()).take(take), None)

    return _Endpoints(
        known=(dev >= 0) | local,
        ip=pa.array(ips, pa.string()).take(pa.array(ip_inv, pa.int64())),
        mac=pa.array(macs, pa.string()).take(pa.array(mac_inv.reshape(-1), pa.int64())),
        dtype=dev_attr([d.device_type for d in devices]),
        name=dev_attr([d.name for d in devices]),
    )


def build_table(
    flows: dict[str, np.ndarray],
    feats: dict[str, np.ndarray],
    captures: np.ndarray | list[str],
    config: FlowConfig,
    inventory: Inventory | None = None,
) -> pa.Table:
    """Orient flows to the device side and build the documented table, sorted by (start, id)."""
    n = config.n_packets
    order = np.lexsort((flows["seq0"], flows["file"], flows["start"]))
    fl = {k: v[order] for k, v in flows.items()}
    ft = {k: v[order] for k, v in feats.items()}
    caps = pa.array(list(captures), pa.string()).take(pa.array(fl["file"], pa.int64()))
    nets = [ipaddress.ip_network(x, strict=False) for x in config.local_networks]
    k = len(fl["a_hi"])
    ep = _endpoints(
        np.concatenate([fl["mac_a"], fl["mac_b"]]),
        np.concatenate([fl["a_hi"], fl["b_hi"]]),
        np.concatenate([fl["a_lo"], fl["b_lo"]]),
        inventory,
        nets,
    )
    ka, kb = ep.known[:k], ep.known[k:]
    ip_a, ip_b = ep.ip[:k], ep.ip[k:]
    mac_a, mac_b = ep.mac[:k], ep.mac[k:]
    type_a, type_b = ep.dtype[:k], ep.dtype[k:]
    name_a, name_b = ep.name[:k], ep.name[k:]
    known = ka != kb
    dev_a = np.where(known, ka, fl["init_a"])
    mask = pa.array(dev_a, pa.bool_())

    def pick(x: pa.Array, y: pa.Array, dev: bool = True) -> pa.Array:
        import pyarrow.compute as pc

        return pc.if_else(mask, x, y) if dev else pc.if_else(mask, y, x)

    def sel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.where(dev_a, x, y)

    start = fl["start"] / _NS
    end = fl["end"] / _NS
    p_s, p_r = sel(fl["pab"], fl["pba"]), sel(fl["pba"], fl["pab"])
    b_s, b_r = sel(fl["bab"], fl["bba"]), sel(fl["bba"], fl["bab"])
    cols: dict[str, Any] = {
        "capture": caps,
        "flow_id": np.arange(len(start), dtype=np.int64),
        "proto": fl["proto"].astype(np.uint8),
        "ip_version": fl["ipver"].astype(np.uint8),
        "vlan": fl["vlan"].astype(np.int32),
        "dev_mac": pick(mac_a, mac_b),
        "dev_ip": pick(ip_a, ip_b),
        "dev_port": sel(fl["a_port"], fl["b_port"]).astype(np.int32),
        "peer_mac": pick(mac_a, mac_b, dev=False),
        "peer_ip": pick(ip_a, ip_b, dev=False),
        "peer_port": sel(fl["b_port"], fl["a_port"]).astype(np.int32),
        "device_known": known,
        "device_type": pick(type_a, type_b),
        "device_name": pick(name_a, name_b),
        "start": start,
        "end": end,
        "duration": end - start,
        "packets_sent": p_s,
        "packets_recv": p_r,
        "bytes_sent": b_s,
        "bytes_recv": b_r,
        "packets": p_s + p_r,
        "bytes": b_s + b_r,
        "end_reason": pa.array(np.asarray(END_REASONS, dtype=object)[fl["reason"]], pa.string()),
    }
    d = dev_a[:, None]
    s_sent, s_recv = np.where(d, ft["s_ab"], ft["s_ba"]), np.where(d, ft["s_ba"], ft["s_ab"])
    t_sent, t_recv = np.where(d, ft["t_ab"], ft["t_ba"]), np.where(d, ft["t_ba"], ft["t_ab"])
    pad = config.pad_value
    names = feature_columns(n)
    blocks = []
    for s in (s_sent, s_recv):
        blocks.append(np.where(s >= 0, s, int(pad)).astype(np.int32))
    for s, tt in ((s_sent, t_sent), (s_recv, t_recv)):
        ok = (s[:, 1:] >= 0) & (s[:, :-1] >= 0)
        blocks.append(np.where(ok, np.diff(tt, axis=1) / _NS, float(pad)))
    feat_cols = [b[:, i] for b in blocks for i in range(b.shape[1])]
    for name, arr in zip(names, feat_cols, strict=True):
        cols[name] = np.ascontiguousarray(arr)
    schema = flow_schema(n)
    arrays = [
        cols[f.name] if isinstance(cols[f.name], pa.Array) else pa.array(cols[f.name], f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


# -- the library entry point -------------------------------------------------------------------


@dataclass
class FlowResult:
    """Flows of some captures: the table and what the reader saw."""

    table: pa.Table
    stats: ReadStats = field(default_factory=ReadStats)
    late_packets: int = 0

    def summary_line(self) -> str:
        """One line: files, packets read, skipped by reason, flows, issues."""
        s = self.stats
        skipped = sum(s.skipped.values())
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.skipped.items()))
        parts = [
            f"{s.files} file(s)",
            f"{s.packets_read} packets read",
            f"{skipped} skipped" + (f" ({reasons})" if reasons else ""),
            f"{self.table.num_rows} flows",
            f"{len(s.issues)} issue(s)",
        ]
        if self.late_packets:
            parts.append(f"{self.late_packets} packets beyond the reorder window")
        return "; ".join(parts)

    def to_parquet(self, path: str | Path) -> None:
        """Write the flow table as Parquet (parent folders created)."""
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.table, path)


Reader = Callable[..., Iterator[PacketBatch]]


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
) -> FlowResult:
    """Meter captures into one flow table (each capture's flows are its own)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no capture given")
    read = reader or default_reader()
    stats = ReadStats()
    all_flows, all_feats, names = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(p.stat().st_size for p in paths if p.is_file())
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="flows", leave=False, disable=None)
    late = 0
    try:
        for i, path in enumerate(paths):
            meter = FlowMeter(config)
            tick = bar.update if bar is not None else None
            for batch in read([path], stats, chunk_packets=chunk_packets, progress=tick):
                meter.feed(batch)
            flows, feats = meter.finish()
            late += meter.late
            flows["file"] = np.full(len(flows["seq0"]), i, np.int64)
            all_flows.append(flows)
            all_feats.append(feats)
            names.append(path.name)
    finally:
        if bar is not None:
            bar.close()
    flows = {k: np.concatenate([f[k] for f in all_flows]) for k in all_flows[0]}
    feats = {k: np.concatenate([f[k] for f in all_feats]) for k in all_feats[0]}
    table = build_table(flows, feats, names, config, inventory)
    return FlowResult(table=table, stats=stats, late_packets=late)
