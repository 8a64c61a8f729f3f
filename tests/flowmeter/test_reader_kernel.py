"""Properties of the compiled decoding pass: chunking, gzip windows, dtypes, issue order."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from captures import epb, idb, pcap_bytes, read_all, shb, spb, write  # noqa: E402

from iotwatch.flowmeter import reader  # noqa: E402
from iotwatch.flowmeter.packets import PacketBatch  # noqa: E402

FRAMES = [
    bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / Raw(b"a" * 9)),
    bytes(Ether() / Dot1Q(vlan=7) / IP(options=b"\x01\x01\x01\x00") / UDP(sport=3, dport=4)),
    bytes(Ether() / IPv6() / IPv6ExtHdrFragment(nh=6, offset=0) / TCP(sport=5, dport=6)),
    bytes(Ether(type=0x0806) / Raw(b"\0" * 28)),  # ARP: non_ip
]
RAW = bytes(IP(src="10.9.9.9", dst="10.8.8.8") / UDP(sport=7, dport=8) / Raw(b"z" * 3))

DTYPES = {
    "ts_ns": np.int64,
    "frame_len": np.int64,
    "cap_len": np.int64,
    "ip_len": np.int64,
    "payload_len": np.int64,
    "ip_version": np.uint8,
    "proto": np.uint8,
    "src_ip_hi": np.uint64,
    "src_ip_lo": np.uint64,
    "dst_ip_hi": np.uint64,
    "dst_ip_lo": np.uint64,
    "sport": np.uint16,
    "dport": np.uint16,
    "tcp_flags": np.uint8,
    "vlan": np.int32,
    "src_mac": np.uint64,
    "dst_mac": np.uint64,
    "fragment": np.bool_,
    "iface": np.int32,
    "file_index": np.int32,
    "offset": np.int64,
}


def _mixed_pcapng() -> bytes:
    """Two sections, several interfaces / link types / block kinds, and some damage."""
    bad_cap = bytearray(epb(FRAMES[0]))
    bad_cap[20:24] = struct.pack("<I", 5000)  # captured length beyond the block
    body = [
        shb(),
        idb(1),
        idb(101, tsresol=0x80 | 10, tsoffset=5),
        *(epb(f, units=1000 + i) for i, f in enumerate(FRAMES)),
        epb(RAW, iface=1, units=3 << 10),
        spb(FRAMES[0]),
        bytes(bad_cap),
        epb(FRAMES[1], iface=9),  # unknown interface
        epb(FRAMES[2], units=77),
        shb(">"),
        idb(1, ">", tsresol=9),
        *(epb(f, units=10**9 + i, endian=">") for i, f in enumerate(FRAMES)),
        spb(FRAMES[1], ">"),
    ]
    return b"".join(body)


def test_columns_have_the_contract_dtypes(tmp_path: Path) -> None:
    _, _, batches = read_all([write(tmp_path, "m.pcapng", _mixed_pcapng())])
    assert batches
    for b in batches:
        assert isinstance(b, PacketBatch)
        for name, dtype in DTYPES.items():
            col = getattr(b, name)
            assert col.dtype == dtype, name
            assert col.shape == (len(b),), name


@pytest.mark.parametrize("gz", [False, True])
def test_chunk_size_never_changes_the_result(tmp_path: Path, gz: bool) -> None:
    data = _mixed_pcapng()
    path = write(tmp_path, "m.bin", gzip.compress(data) if gz else data)
    ref, ref_stats, _ = read_all([path])
    assert ref_stats.packets_kept == 10 and ref_stats.skipped == {"non_ip": 2, "bad_record": 2}
    for chunk in (1, 2, 3, 5, 1000):
        cols, stats, batches = read_all([path], chunk_packets=chunk)
        assert all(len(b) <= chunk for b in batches)
        for name in DTYPES:
            assert np.array_equal(cols[name], ref[name]), (chunk, name)
        assert stats.packets_read == ref_stats.packets_read
        assert stats.skipped == ref_stats.skipped
        # The "unusable packet blocks" issue is per kernel run; the damage found is the same.
        assert sum(int(i.message.split()[0]) for i in stats.issues) == 2


def test_issues_come_in_file_order(tmp_path: Path) -> None:
    good = epb(FRAMES[0])
    bad_trailer = epb(FRAMES[0])[:-4] + struct.pack("<I", 999)
    data = shb() + idb() + epb(FRAMES[0], iface=3) + bad_trailer + good
    data += struct.pack("<II", 6, 37) + b"\0" * 40  # bad length: stop here
    _, stats, _ = read_all([write(tmp_path, "o.pcapng", data)])
    offsets = [i.offset for i in stats.issues]
    assert offsets == sorted(offsets) and len(offsets) == 3
    assert stats.packets_kept == 1 and stats.skipped["bad_record"] == 2


@pytest.mark.parametrize("ng", [False, True])
def test_gzip_windows_keep_file_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ng: bool
) -> None:
    # Tiny decompression windows: records straddle window ends all the time, and the offsets of
    # packets and issues must still be the uncompressed file offsets.
    monkeypatch.setattr(reader, "GZ_WINDOW", 333)
    monkeypatch.setattr(reader, "GZ_READ", 64)
    frames = FRAMES * 40
    if ng:
        data = shb() + idb() + b"".join(epb(f, units=i) for i, f in enumerate(frames))
        data += epb(FRAMES[0])[:-4] + struct.pack("<I", 999)  # damaged block at the end
    else:
        data = pcap_bytes(frames)
        data += struct.pack("<IIII", 0, 0, 10**7, 10**7)  # absurd record length at the end
    plain, s1, _ = read_all([write(tmp_path, "p.bin", data)])
    gz, s2, _ = read_all([write(tmp_path, "p.bin.gz", gzip.compress(data))], chunk_packets=7)
    assert s1.packets_kept == s2.packets_kept == 120
    for name in DTYPES:
        assert np.array_equal(plain[name], gz[name]), name
    assert [(i.offset, i.message) for i in s1.issues] == [(i.offset, i.message) for i in s2.issues]
    assert s1.issues and s1.issues[-1].offset > 333


def test_small_capture_batches_do_not_pin_a_full_chunk(tmp_path: Path) -> None:
    _, _, batches = read_all([write(tmp_path, "s.pcap", pcap_bytes(FRAMES))])
    (b,) = batches
    for name in DTYPES:
        col = getattr(b, name)
        base = col.base if col.base is not None else col
        assert base.nbytes <= 64 * col.itemsize * 8, name
