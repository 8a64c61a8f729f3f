"""The default flow definition on hand-made captures whose flows and features are known exactly."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pyarrow as pa
import pytest
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
    write_pcapng_two_ifaces,
)

from iotwatch.flowmeter import FlowConfig, feature_columns, load_profile, meter_captures
from iotwatch.flowmeter._scapy_reader import read_packets_scapy
from iotwatch.inventory import Device, Inventory

A = (DEV_IP, SRV_IP, 40000, 443)  # device -> server
B = (SRV_IP, DEV_IP, 443, 40000)  # server -> device


def rows(path: Path, config: FlowConfig | None = None, **kw) -> list[dict]:
    """Meter with the default profile (or ``config``) and return the rows as dicts."""
    result = meter_captures([path], config or load_profile("default"), **kw)
    return result.table.to_pylist()


def feats(row: dict, kind: str, n: int = 10) -> list:
    """The size/iat features of one direction, e.g. feats(row, 'size_sent')."""
    return [row[c] for c in feature_columns(n) if c.rsplit("_", 1)[0] == kind]


def test_profile_keys_are_the_dataclass_fields(repo_root: Path) -> None:
    import yaml

    fields = {f.name for f in dataclasses.fields(FlowConfig) if f.metadata.get("conf", True)}
    for name in ("default", "nfstream"):
        data = yaml.safe_load((repo_root / "conf/flows" / f"{name}.yaml").read_text())
        assert set(data) == fields
    assert load_profile("default") == FlowConfig()


def test_fin_close_and_port_reuse(tmp_path: Path) -> None:
    pk = connection(T0) + connection(T0 + 10)
    (r1, r2) = rows(write_pcap(tmp_path / "c.pcap", pk))
    assert (r1["flow_id"], r2["flow_id"]) == (0, 1)
    assert r1["end_reason"] == "close"  # the second one too: it closed before the capture ended
    assert r2["end_reason"] == "close"
    assert (r1["dev_ip"], r1["dev_port"], r1["peer_ip"], r1["peer_port"]) == (
        DEV_IP,
        40000,
        SRV_IP,
        443,
    )
    assert r1["device_known"] is False and r1["device_type"] is None
    # the last ACK of the FIN handshake belongs to the closing flow
    assert (r1["packets_sent"], r1["packets_recv"], r1["packets"]) == (5, 3, 8)
    assert (r1["bytes_sent"], r1["bytes_recv"]) == (40 * 4 + 140, 40 * 2 + 240)
    assert feats(r1, "size_sent") == [40, 40, 140, 40, 40, 0, 0, 0, 0, 0]
    assert feats(r1, "size_recv") == [40, 240, 40, 0, 0, 0, 0, 0, 0, 0]
    assert feats(r1, "iat_sent") == pytest.approx([0.5, 0.5, 1.0, 1.0, 0, 0, 0, 0, 0])
    assert feats(r1, "iat_recv") == pytest.approx([1.25, 1.0, 0, 0, 0, 0, 0, 0, 0])
    assert r1["start"] == pytest.approx(T0) and r1["end"] == pytest.approx(T0 + 3)
    assert r1["duration"] == pytest.approx(3.0)
    assert r2["start"] == pytest.approx(T0 + 10)


def test_rst_close_and_port_reuse(tmp_path: Path) -> None:
    pk = connection(T0, close="rst") + connection(T0 + 5, close="rst")
    got = rows(write_pcap(tmp_path / "c.pcap", pk))
    assert [(r["packets"], r["end_reason"]) for r in got] == [(6, "close"), (6, "close")]


def test_no_close_keeps_one_flow(tmp_path: Path) -> None:
    pk = connection(T0) + connection(T0 + 10)
    cfg = dataclasses.replace(FlowConfig(), tcp_close_ends_flow=False)
    got = rows(write_pcap(tmp_path / "c.pcap", pk), cfg)
    assert [r["packets"] for r in got] == [16]


def test_syn_retransmission_does_not_split(tmp_path: Path) -> None:
    pk = [tcp(T0, *A, "S"), tcp(T0 + 1, *A, "S"), tcp(T0 + 1.5, *B, "SA"), tcp(T0 + 2, *A, "A")]
    (r,) = rows(write_pcap(tmp_path / "c.pcap", pk))
    assert (r["packets_sent"], r["packets_recv"], r["end_reason"]) == (3, 1, "end_of_capture")


def test_active_timeout_cuts_long_connection(tmp_path: Path) -> None:
    # one packet every 100 s for 1300 s, alternating directions
    pk = [tcp(T0 + 100 * i, *(A if i % 2 == 0 else B), "A", 10) for i in range(14)]
    r1, r2 = rows(write_pcap(tmp_path / "c.pcap", pk))
    assert (r1["packets"], r1["end_reason"]) == (7, "active")  # 0..600 s: age 600 is not > 600
    assert (r2["packets"], r2["end_reason"]) == (7, "end_of_capture")
    assert r2["start"] == pytest.approx(T0 + 700)
    assert feats(r1, "size_sent")[:5] == [50, 50, 50, 50, 0]
    assert feats(r1, "iat_sent")[:4] == pytest.approx([200, 200, 200, 0])


def test_idle_gap_splits(tmp_path: Path) -> None:
    pk = [tcp(T0, *A, "A", 1), tcp(T0 + 10, *B, "A", 2), tcp(T0 + 700, *A, "A", 3)]
    r1, r2 = rows(write_pcap(tmp_path / "c.pcap", pk))
    assert (r1["packets"], r1["end_reason"], r1["end"]) == (2, "idle", pytest.approx(T0 + 10))
    assert (r2["packets"], r2["end_reason"]) == (1, "end_of_capture")
    assert feats(r2, "size_sent")[:2] == [43, 0]


def test_idle_at_end_of_capture(tmp_path: Path) -> None:
    pk = [tcp(T0, *A, "A", 1), udp(T0 + 5, DEV_IP, SRV_IP, 5, 53), tcp(T0 + 900, *B, "A", 1)]
    cfg = dataclasses.replace(FlowConfig(), protocols=["tcp"])
    r1, r2 = rows(
        write_pcap(tmp_path / "c.pcap", pk[:1] + [tcp(T0 + 900, SRV_IP, DEV_IP, 80, 9, "A")]), cfg
    )
    assert r1["end_reason"] == "idle" and r2["end_reason"] == "end_of_capture"


def test_reversed_first_packet(tmp_path: Path) -> None:
    pk = connection(T0)[1:]  # the capture starts with the server's SYN-ACK
    (r,) = rows(write_pcap(tmp_path / "c.pcap", pk))
    assert (r["dev_ip"], r["peer_ip"], r["device_known"]) == (DEV_IP, SRV_IP, False)
    assert (r["packets_sent"], r["packets_recv"]) == (4, 3)
    assert feats(r, "size_recv")[:3] == [40, 240, 40]


def test_retransmissions_are_counted(tmp_path: Path) -> None:
    pk = connection(T0, close="none")
    pk.insert(4, tcp(T0 + 1.2, *A, "PA", 100))  # the data packet again
    (r,) = rows(write_pcap(tmp_path / "c.pcap", pk))
    assert r["packets_sent"] == 4
    assert feats(r, "size_sent")[:5] == [40, 40, 140, 140, 0]


def test_udp_and_other_protocols(tmp_path: Path) -> None:
    pk = connection(T0) + [
        udp(T0 + 1, DEV_IP, "8.8.8.8", 5353, 53),
        udp(T0 + 2, "8.8.8.8", DEV_IP, 53, 5353),
    ]
    path = write_pcap(tmp_path / "c.pcap", pk)
    assert len(rows(path)) == 1  # TCP only by default
    cfg = dataclasses.replace(FlowConfig(), protocols=["tcp", "udp"])
    got = rows(path, cfg)
    assert sorted((r["proto"], r["packets"]) for r in got) == [(6, 8), (17, 2)]
    assert len(rows(path, dataclasses.replace(FlowConfig(), protocols=["all"]))) == 2


def test_vlan_on_one_direction(tmp_path: Path) -> None:
    pk = [
        tcp(T0, *A, "S", vlan=42),
        tcp(T0 + 0.1, *B, "SA"),
        tcp(T0 + 0.2, *A, "A", vlan=42),
    ]
    path = write_pcap(tmp_path / "c.pcap", pk)
    (r,) = rows(path)
    assert (r["packets"], r["vlan"]) == (3, 42)
    cfg = dataclasses.replace(FlowConfig(), vlan_in_key=True)
    got = rows(path, cfg)
    assert sorted((r["vlan"], r["packets"]) for r in got) == [(-1, 1), (42, 2)]


def test_ipv6(tmp_path: Path) -> None:
    (r,) = rows(write_pcap(tmp_path / "c.pcap", connection(T0, client=DEV6, server=SRV6, v6=True)))
    assert (r["ip_version"], r["dev_ip"], r["peer_ip"]) == (6, DEV6, SRV6)
    assert feats(r, "size_sent")[:4] == [60, 60, 160, 60]
    assert r["bytes"] == 60 * 6 + 160 + 260


def test_pcapng_two_interfaces(tmp_path: Path) -> None:
    # requests seen on an Ethernet interface (µs), answers on a raw-IP one (ns)
    pk = [(0 if p.getlayer("IP").src == DEV_IP else 1, p) for p in connection(T0)]
    (r,) = rows(write_pcapng_two_ifaces(tmp_path / "c.pcapng", pk))
    assert (r["packets_sent"], r["packets_recv"], r["end_reason"]) == (5, 3, "close")
    assert feats(r, "iat_recv")[:2] == pytest.approx([1.25, 1.0])
    assert r["dev_mac"] == "02:00:00:00:00:10" and r["peer_mac"] == "02:00:00:00:00:01"


def test_inventory_decides_direction(tmp_path: Path) -> None:
    # the capture starts with the device's traffic, but the inventory says the server is the device
    inv = Inventory([Device("camera", "cam-1", ip=SRV_IP)])
    (r,) = rows(write_pcap(tmp_path / "c.pcap", connection(T0)), inventory=inv)
    assert (r["dev_ip"], r["dev_port"], r["device_known"]) == (SRV_IP, 443, True)
    assert (r["device_type"], r["device_name"]) == ("camera", "cam-1")
    assert (r["packets_sent"], r["packets_recv"]) == (3, 5)
    assert feats(r, "size_sent")[:4] == [40, 240, 40, 0]
    inv_mac = Inventory([Device("camera", "cam-1", mac="02:00:00:00:00:01")])
    (r,) = rows(write_pcap(tmp_path / "c.pcap", connection(T0)), inventory=inv_mac)
    assert r["dev_ip"] == SRV_IP and r["device_type"] == "camera"


def test_local_networks_decide_direction(tmp_path: Path) -> None:
    cfg = dataclasses.replace(FlowConfig(), local_networks=["93.184.0.0/16"])
    (r,) = rows(write_pcap(tmp_path / "c.pcap", connection(T0)), cfg)
    assert (r["dev_ip"], r["device_known"], r["device_type"]) == (SRV_IP, True, None)


@pytest.mark.parametrize(
    ("mode", "sent"),
    [
        ("ip", [40, 40, 140]),
        ("frame", [54, 54, 154]),
        ("captured", [54, 54, 154]),
        ("payload", [0, 0, 100]),
    ],
)
def test_size_modes(tmp_path: Path, mode: str, sent: list[int]) -> None:
    cfg = dataclasses.replace(FlowConfig(), size=mode)
    (r,) = rows(write_pcap(tmp_path / "c.pcap", connection(T0)), cfg)
    assert feats(r, "size_sent")[:3] == sent
    assert r["bytes_sent"] == sum(feats(r, "size_sent"))


def test_n_and_pad_value(tmp_path: Path) -> None:
    cfg = dataclasses.replace(FlowConfig(), n_packets=3, pad_value=-1)
    (r,) = rows(write_pcap(tmp_path / "c.pcap", connection(T0, close="rst")), cfg)
    assert feats(r, "size_sent", 3) == [40, 40, 140]
    assert feats(r, "size_recv", 3) == [40, 240, 40]
    cfg = dataclasses.replace(FlowConfig(), n_packets=4, pad_value=-1)
    (r,) = rows(write_pcap(tmp_path / "c.pcap", connection(T0, close="rst")), cfg)
    assert feats(r, "size_recv", 4) == [40, 240, 40, -1]
    assert feats(r, "iat_recv", 4) == pytest.approx([1.25, 0.5, -1])


def _mixed(tmp_path: Path, shuffle: bool = False) -> Path:
    """Many flows of every kind above, optionally with timestamps out of order within 1 s."""
    pk = []
    for i in range(30):
        t = T0 + 3 * i
        pk += connection(t, sport=41000 + i % 7, close=("fin", "rst", "none")[i % 3])
        pk += connection(t + 0.1, client=DEV6, server=SRV6, v6=True, sport=42000 + i)
        pk += [udp(t + 0.2, DEV_IP, "8.8.8.8", 5000 + i % 3, 53)]
    pk += [tcp(T0 + 100 * i + 0.01, *A, "A", i) for i in range(20)]  # no ties with the above
    pk += [tcp(T0 + 2000, *A, "A", 5), tcp(T0 + 2000.5, *B, "A", 5, vlan=7)]
    pk.sort(key=lambda p: float(p.time))
    if shuffle:
        rnd = random.Random(1)
        for i in range(0, len(pk) - 3, 3):
            # within 1 s: the sparse packets 100 s apart stay in order (swapping them would be
            # disorder beyond the reorder window: late packets, clamped)
            if rnd.random() < 0.5 and float(pk[i + 2].time) - float(pk[i].time) <= 1:
                pk[i], pk[i + 2] = pk[i + 2], pk[i]
    return write_pcap(tmp_path / ("mixed_ooo.pcap" if shuffle else "mixed.pcap"), pk)


@pytest.mark.parametrize("profile", ["default", "nfstream"])
def test_chunk_size_does_not_change_flows(tmp_path: Path, profile: str) -> None:
    path = _mixed(tmp_path)
    cfg = load_profile(profile)
    cfg = dataclasses.replace(cfg, protocols=["all"], reorder_window=1.0)
    whole = meter_captures([path], cfg).table
    for chunk in (7, 1, 64):
        assert meter_captures([path], cfg, chunk_packets=chunk).table.equals(whole), chunk
    assert whole.num_rows >= (60 if profile == "default" else 40)


def test_out_of_order_timestamps_give_sorted_flows(tmp_path: Path) -> None:
    cfg = dataclasses.replace(FlowConfig(), protocols=["all"], reorder_window=2.0)
    ordered = meter_captures([_mixed(tmp_path)], cfg).table.drop_columns(["capture"])
    for chunk in (5, 262_144):
        res = meter_captures([_mixed(tmp_path, True)], cfg, chunk_packets=chunk)
        assert res.table.drop_columns(["capture"]).equals(ordered)
        assert res.late_packets == 0


def test_fast_reader_agrees_with_scapy_reference(tmp_path: Path) -> None:
    path = _mixed(tmp_path)
    cfg = dataclasses.replace(FlowConfig(), protocols=["all"])
    fast = meter_captures([path], cfg).table
    ref = meter_captures([path], cfg, reader=read_packets_scapy, chunk_packets=50).table
    assert fast.equals(ref)


def test_table_schema_and_empty_capture(tmp_path: Path) -> None:
    from iotwatch.flowmeter.schema import flow_schema

    path = write_pcap(tmp_path / "u.pcap", [udp(T0, DEV_IP, SRV_IP, 1, 2)])
    table = meter_captures([path], FlowConfig()).table
    assert table.num_rows == 0 and table.schema.equals(flow_schema(10), check_metadata=False)
    table = meter_captures([write_pcap(tmp_path / "c.pcap", connection(T0))], FlowConfig()).table
    assert table.schema.field("size_sent_1").type == pa.int32()
    assert table.column_names[-len(feature_columns(10)) :] == feature_columns(10)
