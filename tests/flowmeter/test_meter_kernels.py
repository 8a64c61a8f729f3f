"""The meter's numba kernels against plain-Python references: the streaming flow table (with pool
growth, hash deletions and output draining forced by tiny buffers), address texts, networks."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iotwatch.flowmeter import FlowConfig, meter_captures
from iotwatch.flowmeter import _meter_kernels as K
from iotwatch.flowmeter.arrow_table import _string_array
from iotwatch.flowmeter.engine import FlowMeter
from iotwatch.flowmeter.orient import _in_networks
from iotwatch.flowmeter.packets import PacketBatch
from iotwatch.flowmeter.prefetch import _prefetch

NS = 1_000_000_000
MAPPED = 0xFFFF << 32


def _batch(rnd: random.Random, n: int, t0: int = 1_700_000_000 * NS) -> PacketBatch:
    """Random packets over few endpoints (so keys repeat), TCP/UDP, flags, gaps up to 0.5 s."""
    hosts = [MAPPED | 0x0A000001, MAPPED | 0x0A000002, (1 << 64) | 5, 7]
    ts, cols = [], {k: [] for k in ("sh", "sl", "dh", "dl", "sp", "dp", "pr", "fl", "ln", "vl")}
    t = t0
    for _ in range(n):
        t += int(rnd.choice([0, 1, 10, 1000, NS // 20, NS // 2]) * rnd.random())
        ts.append(t)
        a, b = rnd.sample(hosts, 2)
        cols["sh"].append(a >> 64)
        cols["sl"].append(a & (2**64 - 1))
        cols["dh"].append(b >> 64)
        cols["dl"].append(b & (2**64 - 1))
        cols["sp"].append(rnd.choice([1, 80]))
        cols["dp"].append(rnd.choice([1, 80]))
        cols["pr"].append(rnd.choice([6, 6, 17]))
        cols["fl"].append(rnd.choice([0x10, 0x02, 0x12, 0x11, 0x04, 0x18]))
        cols["ln"].append(rnd.randrange(40, 1500))
        cols["vl"].append(rnd.choice([-1, -1, 3]))
    return _make_batch(ts, cols["sh"], cols["sl"], cols["dh"], cols["dl"], cols["sp"], cols["dp"],
                       cols["pr"], cols["fl"], cols["ln"], cols["vl"])  # fmt: skip


def _make_batch(
    ts: Any,
    sh: Any,
    sl: Any,
    dh: Any,
    dl: Any,
    sp: Any,
    dp: Any,
    pr: Any,
    fl: Any,
    ln: Any,
    vl: Any,
) -> PacketBatch:
    """A PacketBatch of these per-packet values (MACs 2 -> 3, no fragments, one interface)."""
    m = len(ts)
    u64 = lambda v: np.asarray(v, np.uint64)  # noqa: E731
    ln = np.asarray(ln, np.int64)
    return PacketBatch(
        ts_ns=np.asarray(ts, np.int64), frame_len=ln + 14, cap_len=ln + 14, ip_len=ln,
        payload_len=ln - 40, ip_version=np.where(u64(sh) > 0, 6, 4).astype(np.uint8),
        proto=np.asarray(pr, np.uint8), src_ip_hi=u64(sh), src_ip_lo=u64(sl),
        dst_ip_hi=u64(dh), dst_ip_lo=u64(dl), sport=np.asarray(sp, np.uint16),
        dport=np.asarray(dp, np.uint16), tcp_flags=np.asarray(fl, np.uint8),
        vlan=np.asarray(vl, np.int32), src_mac=np.full(m, 2, np.uint64),
        dst_mac=np.full(m, 3, np.uint64), fragment=np.zeros(m, bool),
        iface=np.zeros(m, np.int32), file_index=np.zeros(m, np.int32),
        offset=np.arange(m, dtype=np.int64),
    )  # fmt: skip


def _reference(b: PacketBatch, cfg: FlowConfig) -> list[tuple]:
    """The flow definition of docs/flows.md, one packet at a time with a dict (sorted input)."""
    idle, active, n = cfg.idle_timeout * NS, cfg.active_timeout * NS, cfg.n_packets
    protos = cfg.protocol_numbers()
    live: dict[tuple, dict] = {}
    done: list[tuple] = []

    def closed(f: dict) -> bool:
        return f["rst"] or (f["fa"] and f["fb"])

    def emit(f: dict, why: str) -> None:
        reason = "close" if closed(f) else why
        done.append((f["seq"], f["t0"], f["tl"], tuple(f["pk"]), tuple(f["by"]), reason,
                     tuple(map(tuple, f["sz"])), tuple(map(tuple, f["tt"]))))  # fmt: skip

    for i in range(len(b)):
        pr = int(b.proto[i])
        if protos is not None and pr not in protos:
            continue
        s = (int(b.src_ip_hi[i]), int(b.src_ip_lo[i]), int(b.sport[i]))
        d = (int(b.dst_ip_hi[i]), int(b.dst_ip_lo[i]), int(b.dport[i]))
        a_src = s <= d
        key = (pr, min(s, d), max(s, d), int(b.vlan[i]) if cfg.vlan_in_key else 0)
        t, fl, size = int(b.ts_ns[i]), int(b.tcp_flags[i]), int(b.ip_len[i])
        syn, ack = pr == 6 and fl & 2, fl & 0x10
        f = live.get(key)
        if f is not None:
            if t - f["tl"] > idle:
                emit(f, "idle")
                f = None
            elif t - f["t0"] > active:
                emit(f, "active")
                f = None
            elif cfg.tcp_close_ends_flow and syn and not ack and closed(f):
                emit(f, "close")
                f = None
        if f is None:
            f = live[key] = {"seq": i, "t0": t, "tl": t, "pk": [0, 0], "by": [0, 0], "fa": 0,
                             "fb": 0, "rst": 0, "sz": [[-1] * n, [-1] * n],
                             "tt": [[0] * n, [0] * n]}  # fmt: skip
        k = 0 if a_src else 1
        if f["pk"][k] < n:
            f["sz"][k][f["pk"][k]] = size
            f["tt"][k][f["pk"][k]] = t
        f["pk"][k] += 1
        f["by"][k] += size
        f["tl"] = t
        if pr == 6:
            f["fa" if a_src else "fb"] |= bool(fl & 1)
            f["rst"] |= bool(fl & 4)
    now = int(b.ts_ns[-1])
    for f in live.values():
        emit(f, "idle" if now - f["tl"] > idle else "end_of_capture")
    return sorted(done)


def _metered(meter: FlowMeter, b: PacketBatch, chunk: int) -> list[tuple]:
    for lo in range(0, len(b), chunk):
        part = PacketBatch(**{k: v[lo : lo + chunk] for k, v in vars(b).items()})
        meter.feed(part)
    fl, ft = meter.finish()
    reasons = ("idle", "active", "close", "end_of_capture")
    out = []
    for i in range(len(fl["seq0"])):
        out.append((
            int(fl["seq0"][i]), int(fl["start"][i]), int(fl["end"][i]),
            (int(fl["pab"][i]), int(fl["pba"][i])), (int(fl["bab"][i]), int(fl["bba"][i])),
            reasons[fl["reason"][i]],
            (tuple(ft["s_ab"][i].tolist()), tuple(ft["s_ba"][i].tolist())),
            (tuple(ft["t_ab"][i].tolist()), tuple(ft["t_ba"][i].tolist())),
        ))  # fmt: skip
    return sorted(out)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk", [1, 13, 5000])
@pytest.mark.parametrize(("protocols", "window"), [(["tcp", "udp"], 0.0), (["tcp"], 1.5)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_flow_table_matches_reference(
    seed: int, chunk: int, protocols: list[str], window: float, threads: int
) -> None:
    # tcp only: the kernel reads the metered rows through an index; a window: held-back rows
    rnd = random.Random(seed)
    b = _batch(rnd, 3000)
    cfg = dataclasses.replace(
        FlowConfig(), protocols=protocols, idle_timeout=2.0, active_timeout=5.0,
        n_packets=3, reorder_window=window, vlan_in_key=bool(seed % 2),
    )  # fmt: skip
    want = _reference(b, cfg)
    assert len({r[5] for r in want}) == 4  # every end reason occurs
    meter = FlowMeter(cfg)
    # tiny buffers: the pools grow several times, the outputs drain often, sweeps delete;
    # several flow tables (one per thread) give the same flows as one
    meter.OUT_ROWS = 3
    meter.POOL0 = 1
    meter.PARALLEL_MIN = 0  # the tables are metered by threads at once even for a few rows
    meter.__init__(cfg, threads=threads)
    assert all(p.st[K.S_FREE] == 1 for p in meter.pools)
    assert _metered(meter, b, chunk) == want


def test_ip_text_is_inet_ntop() -> None:
    rnd = random.Random(0)
    vals = [0, 1, MAPPED | 0x01020304, 0x01020304, 1 << 127, MAPPED, (0xFFFF << 48) | 5, 2**128 - 1]
    vals += [(1 << 112) | 1, (1 << 96), 0x20010DB8 << 96, (0x20010DB8 << 96) | (1 << 16)]
    for _ in range(20000):
        words = [rnd.choice([0, 0, 0, 1, 0xFFFF, rnd.randrange(65536)]) for _ in range(8)]
        vals.append(int.from_bytes(b"".join(w.to_bytes(2, "big") for w in words), "big"))
    hi = np.asarray([v >> 64 for v in vals], np.uint64)
    lo = np.asarray([v & (2**64 - 1) for v in vals], np.uint64)
    got = _string_array(*K.format_ips(hi, lo)).to_pylist()
    for v, text in zip(vals, got, strict=True):
        if v >> 32 == 0xFFFF:
            want = socket.inet_ntop(socket.AF_INET, (v & 0xFFFFFFFF).to_bytes(4, "big"))
        else:
            want = socket.inet_ntop(socket.AF_INET6, v.to_bytes(16, "big"))
        assert text == want, hex(v)


def test_mac_text() -> None:
    macs = np.asarray([0, 1, 0x0200000000AB, 2**48 - 1], np.uint64)
    arr = _string_array(*K.format_macs(macs), valid=macs != 0).to_pylist()
    assert arr == [None, "00:00:00:00:00:01", "02:00:00:00:00:ab", "ff:ff:ff:ff:ff:ff"]


def test_networks_match_ipaddress() -> None:
    rnd = random.Random(3)
    nets = [ipaddress.ip_network(x) for x in ("10.1.0.0/16", "192.168.7.5/32", "fd00::/8", "::/0")]
    addrs = [MAPPED | rnd.choice([0x0A010000, 0x0A020000, 0xC0A80705]) | rnd.randrange(256)
             for _ in range(200)]  # fmt: skip
    addrs += [rnd.choice([0xFD << 120, 0x20 << 120]) | rnd.randrange(2**64) for _ in range(200)]
    for chosen in (nets[:2], nets[:3], nets[2:3], nets):
        uh = np.asarray([a >> 64 for a in addrs], np.uint64)
        ul = np.asarray([a & (2**64 - 1) for a in addrs], np.uint64)
        got = _in_networks(uh, ul, chosen)
        for a, g in zip(addrs, got, strict=True):
            ip = ipaddress.ip_address(a & 0xFFFFFFFF if a >> 32 == 0xFFFF else a)
            want = any(ip.version == n.version and ip in n for n in chosen)
            assert g == want, (ip, chosen)


def test_prefetch_passes_batches_and_errors() -> None:
    def gen(fail: bool):
        yield from range(5)
        if fail:
            raise ValueError("damaged")

    assert list(_prefetch(gen(False))) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="damaged"):
        list(_prefetch(gen(True)))
    it = _prefetch(iter(range(1000)), depth=1)
    assert next(it) == 0
    it.close()  # the consumer stops early: the thread is stopped, nothing hangs


def test_several_captures_and_no_prefetch(tmp_path: Path) -> None:
    import pyarrow.compute as pc
    from tests.flowmeter.handmade import T0, connection, write_pcap

    from iotwatch.flowmeter import meter_captures

    a = write_pcap(tmp_path / "a.pcap", connection(T0) + connection(T0 + 20, sport=40001))
    b = write_pcap(tmp_path / "b.pcap", connection(T0 + 10, sport=40002))
    cfg = FlowConfig()
    both = meter_captures([a, b], cfg).table
    assert both["capture"].to_pylist() == ["a.pcap", "b.pcap", "a.pcap"]
    assert both["flow_id"].to_pylist() == [0, 1, 2]
    for path in (a, b):
        alone = meter_captures([path], cfg).table.drop_columns(["flow_id"])
        mine = both.filter(pc.equal(both["capture"], path.name)).drop_columns(["flow_id"])
        assert mine.equals(alone)
        assert meter_captures([path], cfg, prefetch=False).table.equals(
            meter_captures([path], cfg).table
        )


@pytest.mark.parametrize("shuffle", [False, True])
def test_streamed_parquet_equals_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shuffle: bool
) -> None:
    import pyarrow.parquet as pq
    from tests.flowmeter.handmade import T0, connection, tcp, write_pcap

    from iotwatch.flowmeter import meter_captures
    from iotwatch.flowmeter import parquet as P

    # a long capture: 200 connections 3 s apart (ports reused), a slow trickle through it all
    pk = []
    for i in range(200):
        pk += connection(T0 + 3 * i, sport=40000 + i % 5, close=("fin", "rst", "none")[i % 3])
    pk += [tcp(T0 + 7 * i + 0.01, "10.0.0.9", "10.0.0.1", 5555, 80, "A", 1) for i in range(80)]
    pk.sort(key=lambda p: float(p.time))
    if shuffle:
        rnd = random.Random(2)
        for i in range(0, len(pk) - 3, 3):
            if rnd.random() < 0.5:
                pk[i], pk[i + 2] = pk[i + 2], pk[i]
    path = write_pcap(tmp_path / "long.pcap", pk)
    cfg = dataclasses.replace(FlowConfig(), idle_timeout=5.0, active_timeout=20.0)
    whole = meter_captures([path], cfg).table
    monkeypatch.setattr(P, "STREAM_ROWS", 4)
    out = tmp_path / "s.parquet"
    res = meter_captures([path], cfg, chunk_packets=16, out=out)
    assert res.table is None and res.rows == whole.num_rows > 200
    assert pq.read_metadata(out).num_row_groups > 10  # written as flows became final
    assert pq.read_table(out).equals(whole)
    assert f"{whole.num_rows} flows" in res.summary_line()


@pytest.mark.parametrize("batch", [1, 3, 65_536])
def test_several_captures_streamed_in_global_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """Several captures streamed to Parquet: per-capture runs merged into the in-memory order.

    The captures overlap in time and share start times (ties go to the earlier capture), and
    one is empty of TCP: the merged file equals the table built in memory.
    """
    import pyarrow.parquet as pq
    from tests.flowmeter.handmade import T0, connection, tcp, write_pcap

    from iotwatch.flowmeter import meter_captures
    from iotwatch.flowmeter import parquet as P
    from iotwatch.flowmeter import runs as R

    a = write_pcap(
        tmp_path / "a.pcap",
        [p for i in range(12) for p in connection(T0 + 2 * i, sport=41000 + i)],
    )
    b = write_pcap(
        tmp_path / "b.pcap",
        [p for i in range(9) for p in connection(T0 + 3 * i, sport=42000 + i)],
    )
    c = write_pcap(tmp_path / "c.pcap", [tcp(T0 + 1, "10.0.0.7", "10.0.0.1", 7, 7, "A", 1)])
    cfg = FlowConfig()
    whole = meter_captures([a, b, c], cfg).table
    monkeypatch.setattr(R, "MERGE_ROWS", batch)
    monkeypatch.setattr(R, "MERGE_MIN_BATCH", 1)
    monkeypatch.setattr(P, "ROW_GROUP", 2)
    out = tmp_path / "all.parquet"
    res = meter_captures([a, b, c], cfg, out=out)
    assert res.table is None and res.rows == whole.num_rows == 22
    assert pq.read_table(out).equals(whole)
    assert not list(tmp_path.glob(".all.parquet.run*"))  # the run files are gone


def test_packed_features_resolution_and_saturation(tmp_path: Path) -> None:
    """First-N times are exact (ns) up to a 2.4 h active timeout and in coarser units beyond;
    sizes past 2**20 - 1 saturate (the byte counters do not)."""
    from tests.flowmeter.handmade import DEV_IP, SRV_IP, T0, tcp, write_pcap

    from iotwatch.flowmeter import meter_captures
    from iotwatch.flowmeter.flowtable import feature_resolution

    assert feature_resolution(600 * 10**9) == 1
    assert feature_resolution((1 << K.FEATURE_TIME_BITS) - 1) == 1
    assert feature_resolution(1 << K.FEATURE_TIME_BITS) == 2
    assert feature_resolution(86_400 * 10**9) == 10
    packed = K._feature(5_000_000, 7, 1)
    assert packed & K.FEATURE_SIZE_MAX == K.FEATURE_SIZE_MAX and packed >> K.FEATURE_SIZE_BITS == 7

    # a flow whose packets are a day apart: kept whole by a 3-day timeout, IAT to the microsecond
    day = 86_400.0
    pk = [tcp(T0 + k * day + k * 1e-6, DEV_IP, SRV_IP, 40000, 443, "A", 10) for k in range(3)]
    cfg = dataclasses.replace(FlowConfig(), idle_timeout=3 * day, active_timeout=3 * day)
    row = meter_captures([write_pcap(tmp_path / "slow.pcap", pk)], cfg).table.to_pylist()[0]
    assert row["packets"] == 3
    assert abs(row["iat_sent_1"] - (day + 1e-6)) < 1e-7
    assert abs(row["iat_sent_2"] - (day + 1e-6)) < 1e-7


def _rows_batch(rows: list[tuple[int, int, int, int, int]]) -> PacketBatch:
    """A batch of IPv4 TCP ACKs from rows (ts_ns, src, dst, sport, dport)."""
    m = len(rows)
    ts, src, dst, sport, dport = (np.array(col, np.int64) for col in zip(*rows, strict=True))
    z = np.zeros(m)
    return _make_batch(ts, z, MAPPED | src, z, MAPPED | dst, sport, dport, np.full(m, 6),
                       np.full(m, 0x10), np.full(m, 60), np.full(m, -1))  # fmt: skip


def _reader_of(data: dict[str, list[PacketBatch]], fail_after: int | None = None) -> Any:
    def read(paths: list[Path], stats: Any, chunk_packets: int = 0, progress: Any = None) -> Any:
        given = 0
        for p in paths:
            stats.files += 1
            for b in data[Path(p).name]:
                if fail_after is not None and given >= fail_after:
                    raise OSError("disk went away")
                given += 1
                stats.packets_read += len(b)
                yield b

    return read


def test_strided_columns_meter_like_contiguous(tmp_path: Path) -> None:
    """A reader may hand over strided (non-contiguous) columns: same flows (compiled kernels read
    the buffers as declared, so the meter makes them contiguous first)."""
    rnd = random.Random(5)
    rows = sorted(
        (10**18 + rnd.randrange(10**10), rnd.randrange(4), rnd.randrange(4), rnd.randrange(3),
         80) for _ in range(300)
    )  # fmt: skip
    plain = _rows_batch(rows)
    strided = PacketBatch(**{k: np.repeat(v, 2)[::2] for k, v in dataclasses.asdict(plain).items()})
    assert not strided.ts_ns.flags.c_contiguous
    (tmp_path / "x.pcap").touch()
    cfg = FlowConfig()
    want = meter_captures([tmp_path / "x.pcap"], cfg, reader=_reader_of({"x.pcap": [plain]}))
    got = meter_captures([tmp_path / "x.pcap"], cfg, reader=_reader_of({"x.pcap": [strided]}))
    assert got.table.equals(want.table) and want.table.num_rows > 10


def test_merge_orders_by_exact_start(tmp_path: Path) -> None:
    """Starts 50 ns apart in two captures (float seconds cannot tell them apart): the streamed
    merge orders them like the in-memory table, by the exact start."""
    import pyarrow.parquet as pq

    t = 1_700_000_000 * 10**9
    data = {"a.pcap": [_rows_batch([(t + 100, 1, 2, 1000, 80)])],
            "b.pcap": [_rows_batch([(t + 50, 3, 4, 2000, 80)])]}  # fmt: skip
    paths = [tmp_path / "a.pcap", tmp_path / "b.pcap"]
    for p in paths:
        p.touch()
    cfg = FlowConfig()
    whole = meter_captures(paths, cfg, reader=_reader_of(data), prefetch=False).table
    assert whole["capture"].to_pylist() == ["b.pcap", "a.pcap"]
    out = tmp_path / "out.parquet"
    meter_captures(paths, cfg, reader=_reader_of(data), prefetch=False, out=out)
    assert pq.read_table(out).equals(whole)


@pytest.mark.parametrize("captures", [1, 2])
def test_failed_streaming_run_leaves_no_table(tmp_path: Path, captures: int) -> None:
    """A run that fails half-way leaves neither a partial table at ``out`` nor temporary files,
    and an earlier table at ``out`` is untouched."""
    t = 1_700_000_000 * 10**9
    data = {
        f"{n}.pcap": [_rows_batch([(t + 10**9 * (10 * k + j), 1, 2, 1000 + k, 80)
                                   for j in range(3)]) for k in range(8)]
        for n in ("a", "b")
    }  # fmt: skip
    paths = [tmp_path / f"{n}.pcap" for n in ("a", "b")][:captures]
    for p in paths:
        p.touch()
    out = tmp_path / "flows.parquet"
    out.write_bytes(b"the previous table")
    with pytest.raises(OSError, match="disk went away"):
        meter_captures(paths, FlowConfig(), reader=_reader_of(data, fail_after=5), out=out)
    assert out.read_bytes() == b"the previous table"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, *(p.name for p in paths)]
    )


def test_pool_growth_keeps_swept_slots() -> None:
    """A pool that grows after a sweep freed a few slots keeps them on its free stack, which
    stays as long as the pool (the kernels push freed slots up to its capacity)."""
    from iotwatch.flowmeter.flowtable import _Pool

    pool = _Pool(2, 8, 4)
    pool.st[K.S_FREE] = 2  # six slots in use, slots 6 and 7 free (a sweep freed them)
    pool.free[:2] = [7, 6]
    pool.pi[:6, K.I_MISC] = K.M_USED
    pool.alloc(16, grow=True)
    assert len(pool.free) == 16
    stack = list(pool.free[: pool.st[K.S_FREE]])
    assert stack[-2:] == [7, 6] and sorted(stack) == [6, 7, *range(8, 16)]


@pytest.mark.slow
def test_kernels_stay_in_bounds(tmp_path: Path) -> None:
    """The reference comparison (tiny pools that grow and sweep, several tables, windows) with
    numba's bounds checks on: no kernel reads or writes outside its arrays."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "IOTWATCH_KERNELS": "jit",
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         f"{__file__}::test_flow_table_matches_reference"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2],
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
