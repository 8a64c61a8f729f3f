"""Unit tests of the capture reader on hand-made captures whose every field is known."""

from __future__ import annotations

import gzip
import ipaddress
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from captures import epb, idb, pcap_bytes, read_all, shb, spb, write  # noqa: E402

from iotwatch.flowmeter.packets import ReadStats  # noqa: E402
from iotwatch.flowmeter.reader import CaptureError, read_packets  # noqa: E402

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
IP_A, IP_B = "10.1.2.3", "192.168.7.9"
V6_A, V6_B = "2001:db8::1", "2001:db8:1::abcd"


def v4(addr: str) -> int:
    return 0xFFFF_0000_0000 | int(ipaddress.IPv4Address(addr))


def v6(addr: str) -> tuple[int, int]:
    n = int(ipaddress.IPv6Address(addr))
    return n >> 64, n & (2**64 - 1)


def tcp4(payload: int = 10, **ip) -> IP:
    return (
        IP(src=IP_A, dst=IP_B, **ip) / TCP(sport=1234, dport=80, flags="PA") / Raw(b"x" * payload)
    )


def eth(pkt) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / pkt)


def one(tmp_path: Path, frames, linktype: int = 1, **kw):
    cols, stats, _ = read_all([write(tmp_path, "c.pcap", pcap_bytes(frames, linktype, **kw))])
    return cols, stats


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_pcap_fields(tmp_path: Path, endian: str, nano: bool) -> None:
    frames = [
        eth(tcp4(10)),
        eth(IP(src=IP_B, dst=IP_A) / UDP(sport=53, dport=5353) / Raw(b"y" * 7)),
    ]
    cols, stats = one(tmp_path, frames, endian=endian, nano=nano)
    assert stats.packets_read == stats.packets_kept == 2 and not stats.issues
    assert cols["ts_ns"].tolist() == [1_700_000_000 * 10**9 + 7_000, 1_700_000_001 * 10**9 + 8_000]
    assert cols["frame_len"].tolist() == [len(f) for f in frames]
    assert cols["cap_len"].tolist() == [len(f) for f in frames]
    assert cols["ip_len"].tolist() == [20 + 20 + 10, 20 + 8 + 7]
    assert cols["payload_len"].tolist() == [10, 7]
    assert cols["proto"].tolist() == [6, 17]
    assert cols["ip_version"].tolist() == [4, 4]
    assert cols["src_ip_lo"].tolist() == [v4(IP_A), v4(IP_B)]
    assert cols["dst_ip_lo"].tolist() == [v4(IP_B), v4(IP_A)]
    assert cols["src_ip_hi"].tolist() == [0, 0]
    assert cols["sport"].tolist() == [1234, 53] and cols["dport"].tolist() == [80, 5353]
    assert cols["tcp_flags"].tolist() == [0x18, 0]
    assert cols["src_mac"].tolist() == [0x02000000000A] * 2
    assert cols["dst_mac"].tolist() == [0x02000000000B] * 2
    assert cols["vlan"].tolist() == [-1, -1]
    assert cols["offset"].tolist() == [24, 24 + 16 + len(frames[0])]
    assert cols["iface"].tolist() == [0, 0] and cols["file_index"].tolist() == [0, 0]
    assert cols["ts_ns"].dtype == np.int64 and cols["sport"].dtype == np.uint16


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_interfaces_resolutions_and_blocks(tmp_path: Path, endian: str) -> None:
    raw = bytes(IP(src=IP_B, dst=IP_A) / UDP(sport=9, dport=10))
    unknown = struct.pack(endian + "II", 0x0BAD, 16) + b"abcd" + struct.pack(endian + "I", 16)
    data = b"".join(
        [
            shb(endian),
            idb(1, endian),  # default: microseconds
            idb(101, endian, tsresol=9, tsoffset=100),  # ns, +100 s
            idb(1, endian, tsresol=0x80 | 20),  # 2^-20 s
            epb(eth(tcp4(3)), 0, 1_500_000_000_000_001, endian=endian),
            unknown,
            epb(raw, 1, 5 * 10**9 + 3, endian=endian),
            epb(eth(tcp4(0)), 2, (7 << 20) | (1 << 19), endian=endian),
            spb(eth(tcp4(1)), endian),
        ]
    )
    cols, stats, _ = read_all([write(tmp_path, "c.pcapng", data)])
    assert stats.packets_read == 4 and stats.packets_kept == 4 and not stats.issues
    assert cols["ts_ns"].tolist() == [
        1_500_000_000_000_001_000,
        105 * 10**9 + 3,
        7_500_000_000,
        7_500_000_000,  # the simple packet block inherits the last timestamp
    ]
    assert cols["iface"].tolist() == [0, 1, 2, 0]
    assert cols["proto"].tolist() == [6, 17, 6, 6]
    assert cols["src_mac"].tolist()[1] == 0 and cols["sport"].tolist()[1] == 9
    assert cols["payload_len"].tolist() == [3, 0, 0, 1]


def test_pcapng_two_sections_change_byte_order(tmp_path: Path) -> None:
    data = shb("<") + idb(101, "<") + epb(bytes(tcp4(1)), 0, 1, endian="<")
    data += shb(">") + idb(1, ">") + epb(eth(tcp4(2)), 0, 2, endian=">")
    cols, stats, _ = read_all([write(tmp_path, "c.pcapng", data)], chunk_packets=8)
    assert stats.packets_kept == 2 and not stats.issues
    assert cols["payload_len"].tolist() == [1, 2]
    assert cols["ts_ns"].tolist() == [1000, 2000]


def test_link_types(tmp_path: Path) -> None:
    ip = bytes(tcp4(5))
    ip6 = bytes(IPv6(src=V6_A, dst=V6_B) / UDP(sport=7, dport=8))
    sll = struct.pack("!HHH8sH", 0, 1, 6, bytes.fromhex("02000000000a0000"), 0x0800) + ip
    sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, bytes.fromhex("02000000000a0000")) + ip
    cases = {
        113: sll,
        276: sll2,
        101: ip,
        12: ip,
        228: ip,
        229: ip6,
        0: struct.pack("<I", 2) + ip,
        108: struct.pack(">I", 2) + ip,
        9: b"\xff\x03\x00\x21" + ip,
        104: b"\x0f\x00\x08\x00" + ip,
    }
    for lt, frame in cases.items():
        cols, stats = one(tmp_path, [frame, b"\x21" + ip] if lt == 9 else [frame], lt)
        assert stats.packets_kept == stats.packets_read, (lt, stats)
        if lt == 229:
            assert cols["ip_version"].tolist() == [6] and cols["sport"].tolist() == [7]
        else:
            assert set(cols["sport"].tolist()) == {1234}, lt
            assert set(cols["payload_len"].tolist()) == {5}, lt
        if lt in (113, 276):
            assert cols["src_mac"].tolist() == [0x02000000000A]
    # BSD NULL in big-endian host order, and the BSD IPv6 family values.
    cols, stats = one(tmp_path, [struct.pack(">I", 2) + ip, struct.pack("<I", 30) + ip6], 0)
    assert cols["ip_version"].tolist() == [4, 6]


def test_unknown_linktype_counted_per_packet_reported_once(tmp_path: Path) -> None:
    _, stats = one(tmp_path, [b"abc", b"defg", b"h"], linktype=147)
    assert stats.skipped["unknown_linktype"] == 3 and stats.packets_kept == 0
    assert len(stats.issues) == 1 and "147" in stats.issues[0].message


def test_vlan_tags_innermost_id(tmp_path: Path) -> None:
    frames = [
        eth(Dot1Q(vlan=10) / tcp4()),
        eth(Dot1AD(vlan=20) / Dot1Q(vlan=30) / tcp4()),
        bytes(Ether(src=MAC_A, dst=MAC_B, type=0x9100) / Dot1Q(vlan=40) / tcp4()),
        eth(Dot1Q(vlan=50) / ARP()),
    ]
    cols, stats = one(tmp_path, frames)
    assert cols["vlan"].tolist() == [10, 30, 40]
    assert cols["sport"].tolist() == [1234] * 3 and cols["payload_len"].tolist() == [10] * 3
    assert stats.skipped["non_ip"] == 1


def test_ipv4_options_and_other_protocols(tmp_path: Path) -> None:
    frames = [
        eth(IP(src=IP_A, dst=IP_B, options=b"\x01\x01\x01\x00") / TCP(sport=5, dport=6) / b"abc"),
        eth(IP(src=IP_A, dst=IP_B) / ICMP() / b"0123456789"),
        eth(ARP()),
    ]
    cols, stats = one(tmp_path, frames)
    assert cols["sport"].tolist() == [5, 0] and cols["dport"].tolist() == [6, 0]
    assert cols["proto"].tolist() == [6, 1]
    assert cols["payload_len"].tolist() == [3, 18]  # ICMP: everything after the IP header
    assert stats.skipped == {"non_ip": 1}


def test_tcp_options_and_tso_zero_length(tmp_path: Path) -> None:
    opt = IP(src=IP_A, dst=IP_B) / TCP(sport=1, dport=2, options=[("MSS", 1460), ("NOP", None)] * 2)
    tso = bytearray(eth(tcp4(100)))
    tso[16:18] = b"\0\0"  # TSO capture: IP total length 0
    cols, _ = one(tmp_path, [eth(opt / b"abcd"), bytes(tso)])
    assert cols["payload_len"].tolist() == [4, 100]
    assert cols["ip_len"].tolist() == [20 + 32 + 4, 140]


def test_ipv6_extension_headers_and_fragments(tmp_path: Path) -> None:
    base = IPv6(src=V6_A, dst=V6_B)
    frames = [
        eth(
            base
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrRouting()
            / TCP(sport=3, dport=4)
            / b"ab"
        ),
        eth(base / IPv6ExtHdrFragment(offset=0, m=1, nh=17) / UDP(sport=5, dport=6) / b"abcdef"),
        eth(base / IPv6ExtHdrFragment(offset=2, m=0, nh=17) / Raw(b"\x00\x07\x00\x08" + b"z" * 12)),
        eth(IPv6(src=V6_A, dst=V6_B, nh=50) / Raw(b"\x00" * 24)),  # ESP: stop
        eth(
            IPv6(src=V6_A, dst=V6_B, nh=51)
            / Raw(bytes([6, 1]) + b"\0" * 10 + bytes(TCP(sport=9, dport=9)))
        ),
    ]
    cols, stats = one(tmp_path, frames)
    assert stats.packets_kept == 5
    hi, lo = v6(V6_A)
    assert cols["src_ip_hi"].tolist() == [hi] * 5 and cols["src_ip_lo"].tolist() == [lo] * 5
    assert cols["dst_ip_hi"].tolist()[0] == v6(V6_B)[0]
    assert cols["proto"].tolist() == [6, 17, 17, 50, 6]
    assert cols["sport"].tolist() == [3, 5, 0, 0, 9]
    assert cols["fragment"].tolist() == [False, True, True, False, False]
    assert cols["ip_len"].tolist() == [
        40 + 24 + 20 + 2,
        40 + 8 + 8 + 6,
        40 + 8 + 16,
        64,
        40 + 12 + 20,
    ]
    assert cols["payload_len"].tolist() == [2, 6, 16, 24, 0]


def test_ipv4_fragments(tmp_path: Path) -> None:
    first = eth(
        IP(src=IP_A, dst=IP_B, flags="MF", frag=0, proto=17) / UDP(sport=1, dport=2) / (b"x" * 16)
    )
    later = eth(IP(src=IP_A, dst=IP_B, frag=3, proto=17) / Raw(b"\x00\x05\x00\x06" + b"y" * 8))
    cols, _ = one(tmp_path, [first, later])
    assert cols["fragment"].tolist() == [True, True]
    assert cols["sport"].tolist() == [1, 0] and cols["dport"].tolist() == [2, 0]
    assert cols["proto"].tolist() == [17, 17]
    assert cols["payload_len"].tolist() == [16, 12]


def test_snaplen_cut(tmp_path: Path) -> None:
    full = eth(tcp4(500))
    frames = [(full[:54], len(full)), (full[:40], len(full)), (full[:10], len(full))]
    cols, stats = one(tmp_path, frames, snaplen=54)
    assert stats.packets_kept == 1 and stats.skipped == {"truncated": 2}
    assert cols["ip_len"].tolist() == [540] and cols["payload_len"].tolist() == [500]
    assert cols["cap_len"].tolist() == [54] and cols["frame_len"].tolist() == [len(full)]


def test_gzip_equals_plain(tmp_path: Path) -> None:
    data = pcap_bytes([eth(tcp4(i)) for i in range(50)])
    plain, s1, _ = read_all([write(tmp_path, "a.pcap", data)])
    gz, s2, _ = read_all([write(tmp_path, "a.bin", gzip.compress(data))], chunk_packets=7)
    assert s1.packets_kept == s2.packets_kept == 50 and not s2.issues
    for k, v in plain.items():
        assert np.array_equal(v, gz[k]), k


def test_gzip_truncated_stream(tmp_path: Path) -> None:
    data = gzip.compress(pcap_bytes([eth(tcp4(i)) for i in range(200)]))
    _, stats, _ = read_all([write(tmp_path, "a.gz", data[: len(data) // 2])])
    assert 0 < stats.packets_kept < 200 and stats.issues


def test_chunks_progress_and_file_index(tmp_path: Path) -> None:
    a = write(tmp_path, "a.pcap", pcap_bytes([eth(tcp4(i)) for i in range(10)]))
    b = write(tmp_path, "b", pcap_bytes([bytes(tcp4(1))] * 4, 101))
    seen: list[int] = []
    stats = ReadStats()
    batches = list(read_packets([a, str(b)], stats, chunk_packets=3, progress=seen.append))
    assert all(0 < len(x) <= 3 for x in batches)
    assert np.concatenate([x.file_index for x in batches]).tolist() == [0] * 10 + [1] * 4
    assert sum(seen) == a.stat().st_size + b.stat().st_size == stats.bytes_read
    assert stats.files == 2 and stats.packets_kept == 14


def test_bad_files_are_issues_not_errors(tmp_path: Path) -> None:
    good = pcap_bytes([eth(tcp4(1))] * 3)
    empty = write(tmp_path, "empty.pcap", b"")
    garbage = write(tmp_path, "garbage.pcap", b"this is not a capture at all")
    cut = write(tmp_path, "cut.pcap", good[:-5])
    short_hdr = write(tmp_path, "hdr.pcap", good[:10])
    absurd = bytearray(good)
    rec2 = 24 + 16 + len(eth(tcp4(1)))
    absurd[rec2 + 8 : rec2 + 12] = struct.pack("<I", 10**7)
    absurd_p = write(tmp_path, "absurd.pcap", bytes(absurd))
    cols, stats, _ = read_all([empty, garbage, cut, short_hdr, absurd_p])
    assert stats.packets_kept == 2 + 1
    offsets = {(Path(i.file).name, i.offset) for i in stats.issues}
    assert ("empty.pcap", 0) in offsets and ("garbage.pcap", 0) in offsets
    assert ("cut.pcap", rec2 + 16 + len(eth(tcp4(1)))) in offsets
    assert ("absurd.pcap", rec2) in offsets and ("hdr.pcap", 0) in offsets
    assert cols["file_index"].tolist() == [2, 2, 4]


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="nope.pcap"):
        list(read_packets([tmp_path / "nope.pcap"], ReadStats()))


def test_pcapng_damage(tmp_path: Path) -> None:
    good = epb(eth(tcp4(1)))
    bad_trailer = epb(eth(tcp4(2)))[:-4] + struct.pack("<I", 999)
    bad_cap = bytearray(epb(eth(tcp4(3))))
    bad_cap[20:24] = struct.pack("<I", 5000)  # captured length beyond the block
    data = shb() + idb() + good + bad_trailer + bytes(bad_cap) + epb(eth(tcp4(4)), iface=7) + good
    cols, stats, _ = read_all([write(tmp_path, "d.pcapng", data)])
    assert cols["payload_len"].tolist() == [1, 1]
    assert stats.skipped["bad_record"] == 3 and stats.packets_read == 5
    assert len(stats.issues) == 2
    # A block length that is not a multiple of 4: stop, keep what was read.
    broken = shb() + idb() + good + struct.pack("<II", 6, 37) + b"\0" * 40 + good
    cols, stats, _ = read_all([write(tmp_path, "e.pcapng", broken)])
    assert stats.packets_kept == 1 and "bad length" in stats.issues[0].message
    # Cut inside a block.
    cols, stats, _ = read_all([write(tmp_path, "f.pcapng", (shb() + idb() + good + good)[:-7])])
    assert stats.packets_kept == 1 and "truncated" in stats.issues[0].message
