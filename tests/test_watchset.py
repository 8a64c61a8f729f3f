"""``iotwatch watchset``: rewritten attack host, checksums, time shift and window, merge order,
ground truth, inputs (pcap both byte orders, pcapng, gzip) and the command line."""

from __future__ import annotations

import csv
import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, UDPerror
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from iotwatch.cli import main as cli_main
from iotwatch.errors import InputError
from iotwatch.features import GROUND_TRUTH_COLUMNS, match_ground_truth, read_ground_truth
from iotwatch.watchset import Infection, build_watch, capture_start, read_capture

NS = 1_000_000_000
T0 = 1_600_000_000.0  # the home's first packet
HOST_IP, HOST_MAC = "10.9.9.5", "02:00:00:00:00:05"  # infected host in the attack capture
DEV_IP, DEV_MAC = "192.168.1.20", "24:6f:28:00:00:20"  # the home device it becomes
GW_MAC = "02:00:00:00:00:01"
OTHER_IP, OTHER_MAC = "10.9.9.7", "02:00:00:00:00:07"
HOME_MAC, HOME_IP = "24:6f:28:00:00:30", "192.168.1.30"


# -- capture writers (independent of the module) -------------------------------------------


def write_pcap(path: Path, packets, *, endian="<", nano=False, linktype=1, gz=False) -> Path:
    """packets: (ts seconds (float) or ns (int), frame bytes[, wire length])."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for p in packets:
        ts, frame = p[0], bytes(p[1])
        wire = p[2] if len(p) > 2 else len(frame)
        ns = ts if isinstance(ts, int) else round(ts * NS)
        sec, frac = divmod(ns, NS)
        out.append(struct.pack(endian + "IIII", sec, frac if nano else frac // 1000,
                               len(frame), wire))  # fmt: skip
        out.append(frame)
    data = b"".join(out)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_pcapng(path: Path, packets, tsresol: int = 9) -> Path:
    """One section, one Ethernet interface with if_tsresol; the last packet as a simple
    packet block (no timestamp: it inherits the previous one)."""

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    opts = struct.pack("<HHB3x", 9, 1, tsresol) + struct.pack("<HH", 0, 0)
    out.append(block(1, struct.pack("<HHI", 1, 0, 0) + opts))
    for i, (ts, frame) in enumerate(packets):
        frame = bytes(frame)
        if i == len(packets) - 1:
            out.append(block(3, struct.pack("<I", len(frame)) + frame))
            continue
        units = round(ts * 10**tsresol)
        out.append(block(6, struct.pack("<IIIII", 0, units >> 32, units & 0xFFFFFFFF,
                                        len(frame), len(frame)) + frame))  # fmt: skip
    path.write_bytes(b"".join(out))
    return path


def read_out(path: Path) -> list[tuple[int, bytes, int]]:
    """The records of a little-endian nanosecond pcap: (ts ns, frame, wire length)."""
    data = path.read_bytes()
    magic, _, _, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data, 0)
    assert (magic, snaplen, linktype) == (0xA1B23C4D, 262144, 1)
    recs, pos = [], 24
    while pos < len(data):
        sec, ns, cl, wl = struct.unpack_from("<IIII", data, pos)
        recs.append((sec * NS + ns, data[pos + 16 : pos + 16 + cl], wl))
        pos += 16 + cl
    return recs


# -- frames -----------------------------------------------------------------------------------


def host_tcp(flags="S", sport=40000, dport=6667, payload=b"", out=True, ip_id=1):
    a, b = (HOST_IP, "185.1.2.3") if out else ("185.1.2.3", HOST_IP)
    ma, mb = (HOST_MAC, GW_MAC) if out else (GW_MAC, HOST_MAC)
    s, d = (sport, dport) if out else (dport, sport)
    return (
        Ether(src=ma, dst=mb)
        / IP(src=a, dst=b, id=ip_id)
        / TCP(sport=s, dport=d, flags=flags)
        / payload
    )


def attack_frames() -> list:
    """(offset s from the attack's start, scapy frame, wire length or None)."""
    long_payload = bytes(range(256)) * 4
    quoted = IP(src=HOST_IP, dst="185.1.2.9") / UDP(sport=5000, dport=9999)
    return [
        (0.0, host_tcp("S"), None),
        (0.1, host_tcp("SA", out=False), None),
        (0.2, host_tcp("A", payload=b"NICK x\r\n"), None),
        # truncated by snaplen: caplen 80 of 1078 bytes: incremental checksum update
        (0.3, host_tcp("PA", payload=long_payload), "cut80"),
        (1.0, Ether(src=HOST_MAC, dst=GW_MAC) / IP(src=HOST_IP, dst="8.8.8.8")
         / UDP(sport=5353, dport=53) / b"query", None),
        (1.1, Ether(src=GW_MAC, dst=HOST_MAC) / IP(src="8.8.8.8", dst=HOST_IP)
         / UDP(sport=53, dport=5353) / b"answer", None),
        (2.0, Ether(src=HOST_MAC, dst=GW_MAC) / Dot1Q(vlan=7) / IP(src=HOST_IP, dst="1.1.1.1")
         / ICMP(type=8, id=1, seq=1) / b"ping", None),
        (2.5, Ether(src=GW_MAC, dst=HOST_MAC) / IP(src="185.1.2.9", dst=HOST_IP)
         / ICMP(type=3, code=3) / bytes(quoted), None),
        (3.0, Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff")
         / ARP(op=1, hwsrc=HOST_MAC, psrc=HOST_IP, pdst="10.9.9.1"), None),
        (3.1, Ether(src=GW_MAC, dst=HOST_MAC)
         / ARP(op=2, hwsrc=GW_MAC, psrc="10.9.9.1", hwdst=HOST_MAC, pdst=HOST_IP), None),
        (4.0, Ether(src=HOST_MAC, dst="33:33:00:00:00:01") / IPv6(src="fe80::5", dst="ff02::1")
         / UDP(sport=1, dport=2), None),
        (5.0, Ether(src=OTHER_MAC, dst=GW_MAC) / IP(src=OTHER_IP, dst="185.1.2.3")
         / TCP(sport=1234, dport=80, flags="S"), None),
        (6.0, host_tcp("F", out=False), None),
    ]  # fmt: skip


def make_attack(path: Path) -> Path:
    packets = []
    for offset, pkt, how in attack_frames():
        frame = bytes(pkt)
        if how == "cut80":
            packets.append((T0 - 1000 + offset, frame[:80], len(frame)))
        else:
            packets.append((T0 - 1000 + offset, frame))
    return write_pcap(path, packets)


def home_frame(i: int) -> bytes:
    return bytes(Ether(src=HOME_MAC, dst=GW_MAC) / IP(src=HOME_IP, dst="52.1.1.1")
                 / TCP(sport=50000 + i, dport=443, flags="S"))  # fmt: skip


def make_home(path: Path, days: int = 6) -> Path:
    """Two packets an hour... one every 6 hours for ``days`` days, from T0."""
    return write_pcap(path, [(T0 + h * 3600.0, home_frame(h)) for h in range(0, days * 24, 6)])


def infection(attack: Path, at: float, **kw) -> Infection:
    return Infection(attack, HOST_IP, DEV_IP, DEV_MAC, at, label="mirai", device_type="hub",
                     device_name="hub-1", **kw)  # fmt: skip


@pytest.fixture
def built(tmp_path):
    home = make_home(tmp_path / "home.pcap")
    attack = make_attack(tmp_path / "attack.pcap")
    start = T0 + 2 * 86400
    at = start + 3600.5
    summary = build_watch([home], tmp_path / "watch.pcap", start=start, end=T0 + 5 * 86400,
                          infections=[infection(attack, at)], truth=tmp_path / "truth.csv")  # fmt: skip
    return tmp_path, summary, start, at


def _attack_out(recs, at):
    """Output records of the attack (by time: the home's packets are on whole hours)."""
    at_ns = round(at * NS)
    return [r for r in recs if at_ns <= r[0] <= at_ns + 7 * NS]


# -- rewrite and checksums --------------------------------------------------------------------


def _assert_checksums_valid(frame: bytes) -> None:
    """Rebuild the checksums with scapy (deleted, recomputed) and compare with the frame's."""
    pkt = Ether(frame)
    rebuilt = pkt.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if layer in rebuilt:
            del rebuilt[layer].chksum
    rebuilt = Ether(bytes(rebuilt))
    for layer in (IP, TCP, UDP, ICMP):
        if layer in pkt:
            assert pkt[layer].chksum == rebuilt[layer].chksum, (layer.__name__, pkt.summary())


def test_rewrite_addresses_macs_and_checksums(built):
    tmp_path, summary, _, at = built
    recs = _attack_out(read_out(tmp_path / "watch.pcap"), at)
    originals = attack_frames()
    # the IPv6 frame of the host is dropped; every other frame is written
    assert summary["infections"][0]["dropped_frames"] == 1
    assert summary["infections"][0]["host_mac"] == HOST_MAC
    kept = [o for o in originals if IPv6 not in o[1]]
    assert len(recs) == len(kept)
    for (_, frame, wire), (_, pkt, how) in zip(recs, kept, strict=True):
        original = bytes(pkt)
        text = bytes(frame)
        assert HOST_MAC.replace(":", "") not in text.hex()
        assert bytes(map(int, HOST_IP.split("."))) not in text
        if OTHER_MAC in (pkt.src, pkt.dst):
            assert frame == original  # not the host's: byte-identical
            continue
        out = Ether(frame)
        assert DEV_MAC in (out.src, out.dst) or (ARP in out and out.dst == "ff:ff:ff:ff:ff:ff")
        if ARP in out:
            assert out[ARP].psrc == DEV_IP or out[ARP].pdst == DEV_IP
            assert out[ARP].hwsrc == DEV_MAC or out[ARP].hwdst == DEV_MAC
            continue
        assert DEV_IP in (out[IP].src, out[IP].dst)
        if how == "cut80":
            # truncated: the checksum updated incrementally must be the one of the whole
            # rewritten packet
            assert len(frame) == 80 and wire == len(original)
            whole = Ether(original)
            whole.src, whole[IP].src = DEV_MAC, DEV_IP
            del whole[IP].chksum, whole[TCP].chksum
            whole = Ether(bytes(whole))
            assert out[IP].chksum == whole[IP].chksum
            assert struct.unpack_from(">H", frame, 14 + 20 + 16)[0] == whole[TCP].chksum
            continue
        _assert_checksums_valid(frame)
        if Dot1Q in pkt:
            assert out[Dot1Q].vlan == 7 and out.src == DEV_MAC
        if ICMP in out and out[ICMP].type == 3:  # the quoted header names the device too
            quoted = out[ICMP].payload
            assert quoted.src == DEV_IP
            q = IP(bytes(quoted))
            del q.chksum
            assert IP(bytes(q)).chksum == quoted.chksum
            assert isinstance(quoted.payload, UDPerror)
            u = IP(src=DEV_IP, dst="185.1.2.9") / UDP(sport=5000, dport=9999)
            assert quoted.payload.chksum == IP(bytes(u))[UDP].chksum


def test_checksum_recomputed_even_when_wrong_and_udp_zero_kept(tmp_path):
    bad = Ether(src=HOST_MAC, dst=GW_MAC) / IP(src=HOST_IP, dst="9.9.9.9", chksum=0x1234) / TCP(
        sport=1, dport=2, chksum=0x4321)  # fmt: skip
    nocheck = bytearray(bytes(Ether(src=HOST_MAC, dst=GW_MAC) / IP(src=HOST_IP, dst="9.9.9.9")
                              / UDP(sport=3, dport=4) / b"abc"))  # fmt: skip
    nocheck[14 + 20 + 6 : 14 + 20 + 8] = b"\0\0"  # UDP without a checksum
    attack = write_pcap(tmp_path / "a.pcap", [(T0, bytes(bad)), (T0 + 1, bytes(nocheck))])
    build_watch([], tmp_path / "w.pcap", start=T0, infections=[infection(attack, T0 + 10)])
    (_, f1, _), (_, f2, _) = read_out(tmp_path / "w.pcap")
    _assert_checksums_valid(f1)
    assert Ether(f2)[UDP].chksum == 0 and Ether(f2)[IP].src == DEV_IP
    q = Ether(f2)
    del q[IP].chksum
    assert Ether(bytes(q))[IP].chksum == Ether(f2)[IP].chksum


def test_fragments_and_spoofed_sources_of_the_host(tmp_path):
    """A first fragment's TCP checksum is updated incrementally (the segment is not all in
    it); a later fragment has only its IP header fixed; a spoofed source sent from the host's
    MAC gets the device's MAC and stays in the ground truth (it is the device's traffic)."""
    whole = IP(src=HOST_IP, dst="7.7.7.7", id=77) / TCP(sport=9, dport=10) / (b"x" * 100)
    first, second = whole.fragment(64)
    spoof = Ether(src=HOST_MAC, dst=GW_MAC) / IP(src="6.6.6.6", dst="7.7.7.7") / UDP(
        sport=1, dport=2)  # fmt: skip
    frames = [Ether(src=HOST_MAC, dst=GW_MAC) / first, Ether(src=HOST_MAC, dst=GW_MAC) / second,
              spoof]  # fmt: skip
    attack = write_pcap(tmp_path / "a.pcap", [(T0 + i, bytes(f)) for i, f in enumerate(frames)])
    build_watch([], tmp_path / "w.pcap", start=T0, infections=[infection(attack, T0)],
                truth=tmp_path / "t.csv")  # fmt: skip
    recs = read_out(tmp_path / "w.pcap")
    expected = IP(src=DEV_IP, dst="7.7.7.7", id=77) / TCP(sport=9, dport=10) / (b"x" * 100)
    expected = IP(bytes(expected))
    out1 = Ether(recs[0][1])
    assert struct.unpack_from(">H", recs[0][1], 14 + 20 + 16)[0] == expected[TCP].chksum
    for _, frame, _ in recs:
        _assert_ip_header_valid(frame)
    assert out1.src == DEV_MAC and Ether(recs[1][1])[IP].src == DEV_IP
    assert Ether(recs[2][1]).src == DEV_MAC and Ether(recs[2][1])[IP].src == "6.6.6.6"
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [(r["src_ip"], r["src_port"], r["dst_port"]) for r in rows] == [
        (DEV_IP, "9", "10"), ("6.6.6.6", "1", "2")]  # fmt: skip


def test_header_cut_inside_ip_options_updated_incrementally(tmp_path):
    from scapy.layers.inet import IPOption_NOP

    pkt = Ether(src=HOST_MAC, dst=GW_MAC) / IP(src=HOST_IP, dst="9.9.9.9",
                                               options=[IPOption_NOP()] * 4) / TCP()  # fmt: skip
    frame = bytes(pkt)
    attack = write_pcap(tmp_path / "a.pcap", [(T0, frame[:36], len(frame))])
    build_watch([], tmp_path / "w.pcap", start=T0, infections=[infection(attack, T0)])
    ((_, out, wire),) = read_out(tmp_path / "w.pcap")
    pkt.src, pkt[IP].src = DEV_MAC, DEV_IP
    del pkt[IP].chksum
    assert len(out) == 36 and wire == len(frame)
    assert out[24:26] == bytes(pkt)[24:26] and out[26:30] == bytes([192, 168, 1, 20])


def _assert_ip_header_valid(frame: bytes) -> None:
    pkt = Ether(frame)
    q = pkt.copy()
    del q[IP].chksum
    assert Ether(bytes(q))[IP].chksum == pkt[IP].chksum


# -- time shift, window, merge ---------------------------------------------------------------


def test_time_shift_window_and_order(built):
    tmp_path, summary, start, at = built
    recs = read_out(tmp_path / "watch.pcap")
    ts = [r[0] for r in recs]
    assert ts == sorted(ts)
    assert ts[0] >= round(start * NS) and ts[-1] < round((T0 + 5 * 86400) * NS)
    attack = _attack_out(recs, at)
    assert attack[0][0] == round(at * NS)
    offsets = [round(o * NS) for o, pkt, _ in attack_frames() if IPv6 not in pkt]
    assert [r[0] - attack[0][0] for r in attack] == pytest.approx(offsets, abs=1000)
    home = [r for r in recs if r not in attack]
    # every home packet in the window, none outside (one every 6 hours from T0)
    assert len(home) == 12 and summary["capture_packets"] == 12
    assert home[0][0] == round((T0 + 2 * 86400) * NS)
    assert all(f == home_frame(round((t / NS - T0) / 3600)) for t, f, _ in home)
    assert summary["packets"] == len(recs) == 12 + summary["attack_packets"]
    assert summary["first"] == pytest.approx(start) and summary["end"] == T0 + 5 * 86400


def test_attack_cut_by_the_window_and_ties_stable(tmp_path):
    home = write_pcap(tmp_path / "home.pcap",
                      [(T0 + 10.0, home_frame(1)), (T0 + 20.0, home_frame(2))])  # fmt: skip
    attack = write_pcap(tmp_path / "a.pcap", [(T0 - 50 + i, bytes(host_tcp("A", ip_id=i)))
                                              for i in range(10)])  # fmt: skip
    # the attack's first packet at the home's second one (a tie: captures come first), the
    # window ends 5 s into it: packets from there on are dropped
    s = build_watch([home], tmp_path / "w.pcap", start=T0, end=T0 + 25.0,
                    infections=[infection(attack, T0 + 20.0)], truth=tmp_path / "t.csv")  # fmt: skip
    recs = read_out(tmp_path / "w.pcap")
    assert s["attack_packets"] == 5 and len(recs) == 7
    assert recs[1][1] == home_frame(2) and recs[2][0] == recs[1][0]
    assert Ether(recs[2][1])[IP].id == 0
    (row,) = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert float(row["start"]) == pytest.approx(T0 + 20.0, abs=1e-6)
    assert float(row["end"]) == pytest.approx(T0 + 24.0, abs=1e-6)


def test_captures_out_of_order_are_sorted(tmp_path):
    a = write_pcap(tmp_path / "a.pcap", [(T0 + 3, home_frame(3)), (T0 + 1, home_frame(1))])
    b = write_pcap(tmp_path / "b.pcap", [(T0 + 2, home_frame(2)), (T0 + 3, home_frame(4))])
    build_watch([a, b], tmp_path / "w.pcap", start=T0)
    recs = read_out(tmp_path / "w.pcap")
    assert [f for _, f, _ in recs] == [home_frame(i) for i in (1, 2, 3, 4)]


# -- ground truth ------------------------------------------------------------------------------


def test_ground_truth_rows(built):
    tmp_path, summary, _, at = built
    gt = read_ground_truth(tmp_path / "truth.csv")
    assert list(gt.columns) == list(GROUND_TRUTH_COLUMNS)
    got = [(r.proto, r.src_ip, r.src_port, r.dst_ip, r.dst_port, round(r.start - at, 3),
            round(r.end - at, 3)) for r in gt.itertuples()]  # fmt: skip
    assert got[:2] == [
        ("tcp", DEV_IP, 40000, "185.1.2.3", 6667, 0.0, 6.0),  # SYN from the device, FIN back
        ("udp", DEV_IP, 5353, "8.8.8.8", 53, 1.0, 1.1),
    ]
    # ICMP: no ports; the echo request from the device, the error from the peer
    assert [(g[0], g[1], g[3], g[5]) for g in got[2:]] == [
        ("icmp", DEV_IP, "1.1.1.1", 2.0), ("icmp", "185.1.2.9", DEV_IP, 2.5)]  # fmt: skip
    assert all(np.isnan(g[2]) and np.isnan(g[4]) for g in got[2:])
    assert len(got) == summary["attack_connections"] == 4
    assert set(gt["attack_type"]) == {"mirai"} and set(gt["device_name"]) == {"hub-1"}
    # the window of each row holds its packets (times rounded outwards to microseconds)
    assert gt["start"][0] <= at <= gt["start"][0] + 1e-6


def test_ground_truth_matches_metered_flows(built):
    from iotwatch.flowmeter import FlowConfig, meter_captures
    from iotwatch.inventory import Device, Inventory

    tmp_path, _, _, _ = built
    inv = Inventory([Device("hub", "hub-1", DEV_MAC, DEV_IP), Device("cam", "cam", HOME_MAC,
                                                                        HOME_IP)])  # fmt: skip
    flows = meter_captures([tmp_path / "watch.pcap"], FlowConfig(protocols=["tcp", "udp"]),
                           inv).table.to_pandas()  # fmt: skip
    gt = read_ground_truth(tmp_path / "truth.csv")
    idx = match_ground_truth(flows, gt).to_numpy()
    attack = flows["dev_ip"].eq(DEV_IP).to_numpy()
    assert attack.sum() == 2 and (idx[attack] >= 0).all() and (idx[~attack] == -1).all()
    assert set(flows.loc[attack, "device_name"]) == {"hub-1"}
    assert set(flows.loc[attack, "dev_mac"]) == {DEV_MAC}


def test_extra_captures_and_their_truth(tmp_path):
    home = make_home(tmp_path / "home.pcap", days=2)
    extra = write_pcap(tmp_path / "x.pcap", [(T0 + 10.0, home_frame(100)),
                                             (T0 + 86400 + 10.0, home_frame(101))])  # fmt: skip
    gt = tmp_path / "gt.csv"
    with gt.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(GROUND_TRUTH_COLUMNS)
        w.writerow(["scan", "cam", "c1", "tcp", HOME_IP, "1", "52.1.1.1", "2", T0, T0 + 11])
        w.writerow(["scan", "cam", "c1", "tcp", HOME_IP, "3", "52.1.1.1", "4", T0 + 86400,
                    T0 + 86411])  # fmt: skip
    s = build_watch([home], tmp_path / "w.pcap", start=T0 + 86400, extra=[extra],
                    extra_truth=gt, truth=tmp_path / "t.csv")  # fmt: skip
    assert s["extra_packets"] == 1 and s["extra_truth_rows"] == 1
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [r["src_port"] for r in rows] == ["3"]
    assert home_frame(101) in [f for _, f, _ in read_out(tmp_path / "w.pcap")]


# -- inputs ------------------------------------------------------------------------------------


def test_reads_pcap_byte_orders_pcapng_and_gzip(tmp_path):
    packets = [(T0 + 0.123456789, home_frame(1)), (T0 + 1.5, home_frame(2)),
               (T0 + 2.0, home_frame(3))]  # fmt: skip
    ref_ns = [round(t * NS) for t, _ in packets]
    for name, kw, exact in [("le.pcap", {}, False), ("be.pcap", {"endian": ">"}, False),
                            ("ns.pcap", {"nano": True, "endian": ">"}, True),
                            ("gz.pcap.gz", {"gz": True, "nano": True}, True)]:  # fmt: skip
        c = read_capture(write_pcap(tmp_path / name, packets, **kw))
        want = ref_ns if exact else [t // 1000 * 1000 for t in ref_ns]
        assert c.ts.tolist() == want, name
        assert [c.frame(i) for i in range(3)] == [f for _, f in packets]
    ng = read_capture(write_pcapng(tmp_path / "n.pcapng", packets, tsresol=9))
    assert ng.ts.tolist() == ref_ns[:2] + [ref_ns[1]]  # the simple packet block inherits
    assert [ng.frame(i) for i in range(3)] == [f for _, f in packets]
    us = read_capture(write_pcapng(tmp_path / "u.pcapng", packets, tsresol=6))
    assert us.ts.tolist()[:2] == [round(t * 10**6) * 1000 for t, _ in packets[:2]]
    assert capture_start([tmp_path / "n.pcapng", tmp_path / "le.pcap"]) == pytest.approx(
        T0 + 0.123456, abs=1e-6)  # fmt: skip
    # a pcapng attack and a folder of captures as the home
    (tmp_path / "home").mkdir()
    make_home(tmp_path / "home" / "h.pcap", days=1)
    attack_ng = write_pcapng(tmp_path / "a.pcapng", [(T0, host_tcp("S")), (T0 + 1,
                                                                           host_tcp("A"))])  # fmt: skip
    s = build_watch([tmp_path / "home"], tmp_path / "w.pcap", start=T0,
                    infections=[infection(attack_ng, T0 + 30)])  # fmt: skip
    assert s["capture_packets"] == 4 and s["attack_packets"] == 2


def test_not_ethernet_and_not_a_capture(tmp_path):
    raw = write_pcap(tmp_path / "raw.pcap", [(T0, bytes(IP() / TCP()))], linktype=101)
    with pytest.raises(InputError, match=r"raw\.pcap: link type 101 is not Ethernet"):
        build_watch([raw], tmp_path / "w.pcap", start=T0)
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"hello world, not a capture")
    with pytest.raises(InputError, match=r"junk\.pcap: not a capture"):
        read_capture(junk)
    assert not (tmp_path / "w.pcap").exists()


# -- command line ------------------------------------------------------------------------------


def _cli(capsys, *argv):
    rc = cli_main(["watchset", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_builds_watch_and_truth(tmp_path, capsys):
    home = make_home(tmp_path / "home.pcap")
    attack = make_attack(tmp_path / "attack.pcap")
    inv = tmp_path / "inv.csv"
    inv.write_text(f"mac,ip,device_type,name\n{DEV_MAC},{DEV_IP},hub,hub-1\n")
    rc, _, err = _cli(capsys, home, "--out", tmp_path / "w.pcap", "--after-days", 2,
                      "--infect", f"{DEV_IP},{DEV_MAC.upper()}", "--attack", attack,
                      "--attack-host", HOST_IP, "--attack-at-days", 1, "--label", "mirai",
                      "--inventory", inv, "--truth", tmp_path / "t.csv")  # fmt: skip
    assert rc == 0, err
    assert len(err.strip().splitlines()) == 1 and "4 attack connections" in err
    recs = read_out(tmp_path / "w.pcap")
    at_ns = round((T0 + 3 * 86400) * NS)
    assert recs[0][0] == round((T0 + 2 * 86400) * NS)
    assert any(t == at_ns and Ether(f)[IP].src == DEV_IP for t, f, _ in recs)
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert {(r["attack_type"], r["device_type"], r["device_name"]) for r in rows} == {
        ("mirai", "hub", "hub-1")}  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["missing_capture", "host_absent", "bad_mac", "bad_ip", "not_capture", "missing_attack"],
)
def test_cli_errors_one_line_exit_2(tmp_path, capsys, case):
    home = make_home(tmp_path / "home.pcap", days=1)
    attack = make_attack(tmp_path / "attack.pcap")
    junk = tmp_path / "junk.pcap"
    junk.write_text("not a capture")
    caps, infect, host, att = [home], f"{DEV_IP},{DEV_MAC}", HOST_IP, attack
    want = {"missing_capture": "nope.pcap: no such capture", "host_absent": "attack.pcap: host "
            "10.9.9.99 not found", "bad_mac": "not a MAC address", "bad_ip": "not an IPv4",
            "not_capture": "junk.pcap: not a capture",
            "missing_attack": "gone.pcap: no such capture file"}[case]  # fmt: skip
    if case == "missing_capture":
        caps = [home, tmp_path / "nope.pcap"]
    elif case == "host_absent":
        host = "10.9.9.99"
    elif case == "bad_mac":
        infect = f"{DEV_IP},24:6f:28"
    elif case == "bad_ip":
        host = "10.9.9"
    elif case == "not_capture":
        caps = [junk]
    else:
        att = tmp_path / "gone.pcap"
    rc, out, err = _cli(capsys, *caps, "--out", tmp_path / "w.pcap", "--infect", infect,
                        "--attack", att, "--attack-host", host, "--attack-at", T0 + 100)  # fmt: skip
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("iotwatch watchset: error: ") and want in err, err
    assert not (tmp_path / "w.pcap").exists()


# -- the real home -----------------------------------------------------------------------------


@pytest.mark.shared
def test_real_home_mirai_onto_the_lock_hub(tmp_path, shared_data):
    """benign/ after 4 days, IoT-23 Mirai's host rewritten onto lockly-hub-01 one day into
    the watch; metered with the inventory, the Mirai flows are the hub's and the truth CSV
    matches them."""
    from iotwatch.flowmeter import load_profile, meter_captures
    from iotwatch.inventory import Device, Inventory, read_inventory_csv

    root = shared_data("real-homes")
    mirai = root / "malicious" / "iot23-mirai-34-1-irc.pcap"
    lock_mac, lock_ip = "24:6f:28:d9:a7:64", "192.168.1.128"
    clock = time.perf_counter()
    start = capture_start([root / "benign"]) + 4 * 86400
    inf = Infection(mirai, "192.168.1.195", lock_ip, lock_mac, start + 86400, label="mirai",
                    device_type="lockly_hub", device_name="lockly-hub-01")  # fmt: skip
    s = build_watch([root / "benign"], tmp_path / "watch.pcap", start=start, infections=[inf],
                    truth=tmp_path / "truth.csv")  # fmt: skip
    seconds = time.perf_counter() - clock
    assert seconds < 10, seconds
    assert s["attack_packets"] > 30_000 and s["infections"][0]["dropped_frames"] == 0
    config = load_profile("default")
    flows = meter_captures([tmp_path / "watch.pcap"], config,
                           read_inventory_csv(root / "inventory.csv")).table.to_pandas()  # fmt: skip
    assert not (flows["dev_ip"].eq("192.168.1.195") | flows["peer_ip"].eq("192.168.1.195")).any()
    # the Mirai connections: those of the attack capture metered alone (host as device)
    alone = meter_captures([mirai], config, Inventory([Device("mirai", "h", None,
                                                              "192.168.1.195")])).table  # fmt: skip
    keys = set(zip(alone["dev_port"].to_pylist(), alone["peer_ip"].to_pylist(),
                   alone["peer_port"].to_pylist(), strict=True))  # fmt: skip
    is_mirai = np.array([k in keys for k in zip(flows["dev_port"], flows["peer_ip"],
                                                flows["peer_port"], strict=True)])  # fmt: skip
    mal = flows[is_mirai & flows["start"].ge(inf.at - 1).to_numpy()].reset_index(drop=True)
    assert len(mal) >= 0.99 * alone.num_rows
    assert set(mal["dev_ip"]) == {lock_ip} and set(mal["dev_mac"]) == {lock_mac}
    assert set(mal["device_name"]) == {"lockly-hub-01"}
    # match_ground_truth joins on the IP pair: nearly every Mirai connection is with one C&C
    # address (4k x 4k rows at once); matched in buckets of the device's port instead, which
    # a match must share anyway
    gt = read_ground_truth(tmp_path / "truth.csv")
    gt_dev_port = np.where(gt["src_ip"].eq(lock_ip), gt["src_port"], gt["dst_port"])
    matched = 0
    for bucket in range(32):
        f = mal[mal["dev_port"].to_numpy() % 32 == bucket]
        g = gt[(gt_dev_port % 32 == bucket)]
        matched += int((match_ground_truth(f, g.reset_index(drop=True)) >= 0).sum())
    assert matched >= 0.99 * len(mal), (matched, len(mal))
    print(
        f"real-homes watch set built in {seconds:.2f} s: {s['packets']} packets, "
        f"{s['attack_connections']} attack connections; {matched}/{len(mal)} flows matched"
    )
