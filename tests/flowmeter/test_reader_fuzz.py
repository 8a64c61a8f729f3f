"""Property test: damaged captures only ever give batches, issues, or the project's InputError."""

from __future__ import annotations

import gzip
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Dot1Q, Ether

sys.path.insert(0, str(Path(__file__).resolve().parent))
from captures import epb, idb, pcap_bytes, shb, spb  # noqa: E402

from iotwatch.errors import InputError  # noqa: E402
from iotwatch.flowmeter.packets import ReadStats  # noqa: E402
from iotwatch.flowmeter.reader import read_packets  # noqa: E402

FRAMES = [
    bytes(Ether() / IP() / TCP() / b"abc"),
    bytes(Ether() / Dot1Q(vlan=3) / IP(options=b"\x01\x01\x01\x00") / UDP()),
    bytes(Ether() / IPv6() / IPv6ExtHdrFragment(nh=6) / TCP()),
]
SEEDS = [
    pcap_bytes(FRAMES),
    pcap_bytes(FRAMES, endian=">", nano=True),
    pcap_bytes([bytes(IP() / TCP())] * 3, linktype=101),
    shb()
    + idb(1)
    + idb(101, tsresol=0x80 | 10)
    + b"".join(epb(f) for f in FRAMES)
    + epb(bytes(IP() / UDP()), iface=1)
    + spb(FRAMES[0]),
    shb(">") + idb(1, ">") + b"".join(epb(f, endian=">") for f in FRAMES),
]


def _check(data: bytes, gz: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f"
        p.write_bytes(gzip.compress(data) if gz else data)
        stats = ReadStats()
        try:
            n = sum(len(b) for b in read_packets([p], stats, chunk_packets=2))
        except InputError:
            return
        assert n == stats.packets_kept <= stats.packets_read
        assert stats.packets_read == stats.packets_kept + sum(stats.skipped.values())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 10**6),
    splice=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from(SEEDS)),
    gz=st.booleans(),
)
def test_mutated_captures_never_crash(
    seed: bytes, flips: list[tuple[int, int]], cut: int, splice: tuple, gz: bool
) -> None:
    data = bytearray(seed)
    for at, val in flips:
        data[at % len(data)] = val
    a, b, other = splice
    data = data[: a % (len(data) + 1)] + other[b % len(other) :] if a % 3 == 0 else data
    data = data[: cut % (len(data) + 1)] if cut % 2 else data
    _check(bytes(data), gz)
