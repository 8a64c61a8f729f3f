"""The incremental API (``FlowStream``, ``iter_flows``, ``batch_from_frames``): the same flows as
``meter_captures``, whatever the chunking, handed out as they end, in bounded memory."""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scapy.layers.l2 import ARP, Ether
from tests.flowmeter.captures import read_all
from tests.flowmeter.handmade import (
    DEV6,
    DEV_IP,
    SRV6,
    SRV_IP,
    T0,
    connection,
    tcp,
    udp,
    write_pcap,
)

from iotwatch.flowmeter import (
    FlowConfig,
    FlowStream,
    PacketBatch,
    ReadStats,
    batch_from_frames,
    iter_flows,
    meter_captures,
)
from iotwatch.flowmeter.reader import read_packets

KEY = ("dev_ip", "dev_port", "peer_ip", "peer_port", "proto", "vlan", "start")


def _packets(n: int = 120, shuffle: bool = False) -> list:
    """Connections 3 s apart (ports reused: idle, active and close cuts), IPv6 ones, UDP, and a
    slow trickle that lives through the whole capture."""
    pk = []
    for i in range(n):
        t = T0 + 3 * i
        pk += connection(t, sport=40000 + i % 5, close=("fin", "rst", "none")[i % 3])
        if i % 4 == 0:
            pk += connection(t + 0.1, client=DEV6, server=SRV6, v6=True, sport=42000 + i)
        pk += [udp(t + 0.2, DEV_IP, "8.8.8.8", 5000 + i % 3, 53)]
    pk += [tcp(T0 + 7 * i + 0.01, "10.0.0.9", "10.0.0.1", 5555, 80, "A", 1) for i in range(n // 2)]
    pk.sort(key=lambda p: float(p.time))
    if shuffle:  # disorder within the reorder window (1 s)
        rnd = random.Random(3)
        for i in range(0, len(pk) - 3, 3):
            if rnd.random() < 0.5 and float(pk[i + 2].time) - float(pk[i].time) < 0.9:
                pk[i], pk[i + 2] = pk[i + 2], pk[i]
    return pk


CFG = dataclasses.replace(
    FlowConfig(), protocols=["all"], idle_timeout=5.0, active_timeout=20.0, reorder_window=1.0
)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pcap(tmp_path_factory.mktemp("stream") / "long.pcap", _packets())


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pcap(tmp_path_factory.mktemp("stream") / "ooo.pcap", _packets(shuffle=True))


def _rows(table: pa.Table) -> list[str]:
    """The rows without flow_id, order-insensitive."""
    return sorted(repr(r) for r in table.drop_columns(["flow_id"]).to_pylist())


def _concat(tables: list[pa.Table], n: int = 10) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else FlowStream(CFG).schema.empty_table()


@pytest.mark.parametrize("chunk", [1, 7, 64, 262_144])
@pytest.mark.parametrize("which", ["capture", "shuffled"])
def test_ordered_stream_equals_table(
    request: pytest.FixtureRequest, chunk: int, which: str
) -> None:
    path = request.getfixturevalue(which)
    res = meter_captures([path], CFG)
    whole = res.table
    assert res.late_packets == 0  # the chunking cannot change the flows
    got = _concat(list(iter_flows(path, CFG, ordered=True, chunk_packets=chunk)))
    assert got.combine_chunks().equals(whole.combine_chunks())
    assert whole.num_rows > 150


@pytest.mark.parametrize("chunk", [1, 5, 64, 262_144])
@pytest.mark.parametrize("which", ["capture", "shuffled"])
def test_stream_as_flows_end_equals_table(
    request: pytest.FixtureRequest, chunk: int, which: str
) -> None:
    """Flows handed out as they end: the same rows (another order, ids in hand-out order)."""
    path = request.getfixturevalue(which)
    whole = meter_captures([path], CFG).table
    tables = list(iter_flows(path, CFG, chunk_packets=chunk, prefetch=chunk > 5))
    got = _concat(tables)
    assert _rows(got) == _rows(whole)
    ids = np.concatenate([t.column("flow_id").to_numpy() for t in tables if t.num_rows])
    assert (ids == np.arange(whole.num_rows)).all()  # numbered as handed out
    if chunk < 100:  # handed out along the way, not at the end
        assert sum(1 for t in tables if t.num_rows) > 10


def test_feeding_batches_by_hand(capture: Path) -> None:
    """``feed`` with batches of uneven sizes, then ``flush``: the same rows."""
    whole = meter_captures([capture], CFG).table
    stats = ReadStats()
    batches = list(read_packets([capture], stats, chunk_packets=3))
    rnd = random.Random(5)
    stream = FlowStream(CFG, capture=capture.name)
    out = []
    i = 0
    while i < len(batches):  # regroup: 1 to 40 small batches per feed
        k = rnd.randint(1, 40)
        group = batches[i : i + k]
        i += k
        merged = PacketBatch(
            **{
                f: np.concatenate([getattr(b, f) for b in group])
                for f in PacketBatch.__dataclass_fields__
            }
        )
        out.append(stream.feed(merged))
    out.append(stream.flush())
    assert _rows(_concat(out)) == _rows(whole)
    with pytest.raises(ValueError, match="closed"):
        stream.feed(batches[0])


def test_memory_is_bounded(tmp_path: Path) -> None:
    """A long capture of short connections: the stream holds the open flows only, a handful,
    however many flows went by (finished flows are handed out, not kept)."""
    pk = []
    for i in range(400):
        pk += connection(T0 + 3 * i, sport=40000 + i, close=("fin", "rst")[i % 2])
    path = write_pcap(tmp_path / "many.pcap", pk)
    cfg = dataclasses.replace(FlowConfig(), idle_timeout=5.0, active_timeout=20.0)
    stream = FlowStream(cfg)
    peak = {"open": 0, "finished": 0, "pending": 0}
    total = 0
    for batch in read_packets([path], ReadStats(), chunk_packets=16):
        total += stream.feed(batch).num_rows
        held = stream.held()
        assert held["finished"] == 0  # handed out by the feed
        peak = {k: max(v, held[k]) for k, v in peak.items()}
    total += stream.flush().num_rows
    assert total == 400
    assert peak["open"] <= 4  # 3 s apart, idle after 5 s: two or three open at a time
    assert peak["pending"] <= 16 + 8 * 2  # the reorder window: 2 s of packets, one batch

    ordered = FlowStream(cfg, ordered=True)
    held_final = 0
    for batch in read_packets([path], ReadStats(), chunk_packets=16):
        ordered.feed(batch)
        held_final = max(held_final, ordered.held()["finished"])
    assert held_final <= 10  # final once no open flow started earlier
    assert ordered.flush().num_rows + 0 >= 1


def test_ready_flows_come_out_before_they_end(tmp_path: Path) -> None:
    """A long connection (12 packets each way over 60 s) and short ones: with
    ``ready_packets=3`` the long one is reported once, open, with 3+ packets each way and its
    first features, before it ends; then it ends as usual."""
    a, b = (DEV_IP, SRV_IP, 40100, 443), (SRV_IP, DEV_IP, 443, 40100)
    pk = [tcp(T0, *a, "S"), tcp(T0 + 0.1, *b, "SA")]
    for i in range(12):
        pk += [tcp(T0 + 1 + 5 * i, *a, "PA", 10 + i), tcp(T0 + 1.5 + 5 * i, *b, "PA", 20 + i)]
    pk += [tcp(T0 + 70, *a, "FA"), tcp(T0 + 70.1, *b, "FA"), tcp(T0 + 70.2, *a, "A")]
    for i in range(10):  # short flows alongside: one packet each way, never ready
        pk += [udp(T0 + 3 * i, DEV_IP, "8.8.8.8", 6000 + i, 53), udp(T0 + 3 * i + 0.1, "8.8.8.8", DEV_IP, 53, 6000 + i)]  # fmt: skip
    pk.sort(key=lambda p: float(p.time))
    path = write_pcap(tmp_path / "long.pcap", pk)
    cfg = dataclasses.replace(FlowConfig(), protocols=["all"], n_packets=3)
    whole = meter_captures([path], cfg).table
    (final,) = [r for r in whole.to_pylist() if r["dev_port"] == 40100]

    stream = FlowStream(cfg, capture=path.name, ready_packets=3)
    ready, ended_before_ready, finished = [], False, []
    for batch in read_packets([path], ReadStats(), chunk_packets=2):
        done = stream.feed(batch)
        finished += done.to_pylist()
        early = stream.ready()
        assert early.schema.equals(whole.schema)
        if early.num_rows:
            ended_before_ready |= any(r["dev_port"] == 40100 for r in finished)
        ready += early.to_pylist()
    finished += stream.flush().to_pylist()
    assert len(ready) == 1 and not ended_before_ready
    (r,) = ready
    assert r["end_reason"] == "open" and r["flow_id"] == -1
    assert r["packets_sent"] >= 3 and r["packets_recv"] >= 3
    assert r["end"] < final["end"] and r["packets"] < final["packets"]
    for k in (*KEY, "dev_mac", "peer_mac", "device_known"):
        assert r[k] == final[k], k
    for k in ("size_sent_1", "size_sent_2", "size_sent_3", "size_recv_1", "size_recv_2",
              "iat_sent_1", "iat_sent_2", "iat_recv_1", "iat_recv_2"):  # fmt: skip
        assert r[k] == pytest.approx(final[k]), k  # its first-N features are complete
    assert _rows(pa.Table.from_pylist(finished, schema=whole.schema)) == _rows(whole)

    # iter_flows hands out the ready rows too, as their own tables
    tables = list(iter_flows(path, cfg, ready_packets=3, chunk_packets=2))
    opened = [t for t in tables if t.num_rows and "open" in t.column("end_reason").to_pylist()]
    assert sum(t.num_rows for t in opened) == 1


def test_ready_needs_a_threshold() -> None:
    with pytest.raises(ValueError, match="ready_packets"):
        FlowStream(FlowConfig()).ready()
    with pytest.raises(ValueError, match="at least 1"):
        FlowStream(FlowConfig(), ready_packets=0)


def _frames(packets: list) -> list[tuple[int, bytes]]:
    # the pcap written by write_pcap has µs timestamps: the same instants
    return [(round(float(p.time) * 1e6) * 1000, bytes(p)) for p in packets]


def test_batch_from_frames_matches_the_reader(tmp_path: Path) -> None:
    pk = _packets(20)
    path = write_pcap(tmp_path / "f.pcap", pk)
    cols, _, _ = read_all([path])
    stats = ReadStats()
    arp = Ether(src="02:00:00:00:00:10", dst="ff:ff:ff:ff:ff:ff") / ARP()
    frames = _frames(pk)
    frames.insert(5, (frames[5][0], bytes(arp)))
    batch = batch_from_frames(frames, stats=stats)
    assert batch is not None and len(batch) == len(pk)
    for f in PacketBatch.__dataclass_fields__:
        if f not in ("offset", "file_index"):
            assert (getattr(batch, f) == cols[f]).all(), f
    assert stats.packets_read == len(pk) + 1 and stats.packets_kept == len(pk)
    assert sum(stats.skipped.values()) == 1  # the ARP frame
    assert batch_from_frames([]) is None
    assert batch_from_frames([frames[5]]) is None  # no IP packet in it


def test_a_ring_block_decodes_like_its_frames() -> None:
    """A TPACKET_V3 block (live capture's ring) gives the batch its frames give, counters too;
    a damaged block is decoded up to the damage and reported."""
    from tests.flowmeter.handmade import tpacket3_block

    from iotwatch.flowmeter.frames import batch_from_tpacket3

    arp = Ether(src="02:00:00:00:00:10", dst="ff:ff:ff:ff:ff:ff") / ARP()
    frames = _frames(_packets(20))
    frames.insert(5, (frames[5][0], bytes(arp)))
    frames[7] = (frames[7][0], frames[7][1][:40], len(frames[7][1]))  # cut by a snap length
    want_stats, got_stats = ReadStats(), ReadStats()
    want = batch_from_frames(frames, stats=want_stats)
    block, n, first = tpacket3_block(frames, size=1 << 18)
    got = batch_from_tpacket3(np.frombuffer(block, np.uint8), n, first, stats=got_stats)
    assert want is not None and got is not None and len(got) == len(want)
    for f in PacketBatch.__dataclass_fields__:
        if f != "offset":  # where in the in-memory capture: the ring's has the same records
            assert (getattr(got, f) == getattr(want, f)).all(), f
    assert dataclasses.asdict(got_stats) == dataclasses.asdict(want_stats)
    # the 11th frame's header says the next one lies outside the block: 11 of n decoded
    head = 48
    for _ in range(10):
        head += int.from_bytes(block[head : head + 4], sys.byteorder)
    block[head : head + 4] = (len(block)).to_bytes(4, sys.byteorder)
    damaged = ReadStats()
    part = batch_from_tpacket3(np.frombuffer(block, np.uint8), n, first, stats=damaged)
    assert part is not None and damaged.packets_read == 11
    assert len(damaged.issues) == 1 and f"{n - 11} of {n} frames" in damaged.issues[0].message
    assert batch_from_tpacket3(np.frombuffer(block, np.uint8), 0, first) is None


@pytest.mark.parametrize("chunk", [1, 13, 10_000])
def test_feeding_frames_equals_table(tmp_path: Path, chunk: int) -> None:
    """Raw Ethernet frames fed as a live source would: the capture's flows."""
    pk = _packets(40, shuffle=True)
    path = write_pcap(tmp_path / "live.pcap", pk)
    whole = meter_captures([path], CFG).table
    frames = _frames(pk)
    stream = FlowStream(CFG, capture=path.name)
    out = [stream.feed(frames[i : i + chunk]) for i in range(0, len(frames), chunk)]
    out.append(stream.flush())
    assert _rows(_concat(out)) == _rows(whole)
    assert stream.stats.packets_kept == len(pk)
    ordered = FlowStream(CFG, capture=path.name, ordered=True)
    out = [ordered.feed_frames(frames[i : i + chunk]) for i in range(0, len(frames), chunk)]
    out.append(ordered.flush())
    assert _concat(out).combine_chunks().equals(whole.combine_chunks())


def test_streamed_result_has_the_same_shape(tmp_path: Path, capture: Path) -> None:
    """``meter_captures`` returns one shape: with ``out`` the rows are in ``path``."""
    mem = meter_captures([capture], CFG)
    out = tmp_path / "f.parquet"
    disk = meter_captures([capture], CFG, out=out)
    assert not mem.streamed and mem.path is None and mem.load() is mem.table
    assert disk.streamed and disk.table is None and disk.path == out
    assert disk.rows == mem.rows and disk.load().equals(mem.table)
    disk.to_parquet(tmp_path / "copy.parquet")
    mem.to_parquet(tmp_path / "mem.parquet")
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "copy.parquet").equals(pq.read_table(tmp_path / "mem.parquet"))


def test_advance_ends_idle_flows_on_a_quiet_link(tmp_path: Path) -> None:
    """A live source with no traffic: ``advance(now)`` ends the flows idle by then (minus the
    reorder window), as a later packet would; feeding goes on as if nothing happened."""
    first = connection(T0, close="none") + [udp(T0 + 1, DEV_IP, "8.8.8.8", 5000, 53)]
    later = connection(T0 + 30, close="none")  # same ports: a new flow after the idle gap
    path = write_pcap(tmp_path / "quiet.pcap", first + later)
    cfg = dataclasses.replace(FlowConfig(), protocols=["all"], idle_timeout=10.0)
    whole = meter_captures([path], cfg).table
    frames = _frames(first + later)
    stream = FlowStream(cfg, capture=path.name)
    got = [stream.feed(frames[: len(first)])]
    assert got[0].num_rows == 0
    assert stream.advance(int((T0 + 5) * 1e9)).num_rows == 0  # not idle yet
    idle = stream.advance(int((T0 + 1 + 10 + 2 + 1) * 1e9))  # idle 10 s + window 2 s after it
    assert idle.num_rows == 2 and set(idle.column("end_reason").to_pylist()) == {"idle"}
    assert stream.held()["open"] == 0
    got += [idle, stream.feed(frames[len(first) :]), stream.flush()]
    assert _rows(_concat(got)) == _rows(whole) and stream.late_packets == 0
