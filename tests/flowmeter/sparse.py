"""Sparse captures with moved timestamps, and what the move cost (issue 21).

Shared by ``test_clock_sparse.py`` and the fault campaign (``bench/bench_faults.py``): move a
few records' timestamps of a classic pcap, meter it, and count the flows and packets of the
unmutated capture's table that are no longer there, and how many of those are not the flows the
moved records belong to (the loss the clock rule must not cause).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
from tests.flowmeter.handmade import DEV_IP, SRV_IP, T0, tcp, write_pcap

YEAR = 365 * 86400
KEY = ["proto", "dev_ip", "dev_port", "peer_ip", "peer_port", "start", "end",
       "packets", "bytes"]  # fmt: skip


def sparse_capture(path: Path, flows: int = 60, seed: int = 0) -> Path:
    """``flows`` TCP keep-alive flows, 4 packets each 2.5 min apart, a flow starting every
    7 min: minutes between any two packets of the capture (about 7 hours)."""
    rng = np.random.default_rng(seed)
    pk = []
    for i in range(flows):
        t = T0 + 420 * i + float(rng.uniform(0, 30))
        a, b = (DEV_IP, SRV_IP, 40000 + i, 443), (SRV_IP, DEV_IP, 443, 40000 + i)
        for j in range(4):
            pk.append(tcp(t + 150 * j + float(rng.uniform(0, 20)), *(a if j % 2 == 0 else b),
                          "PA", 60 + j))  # fmt: skip
    pk.sort(key=lambda p: float(p.time))
    return write_pcap(path, pk)


def records(data: bytes) -> list[int]:
    """Byte offsets of the records of a classic pcap (either byte order)."""
    end = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, pos = [], 24
    while pos + 16 <= len(data):
        out.append(pos)
        pos += 16 + struct.unpack_from(end + "I", data, pos + 8)[0]
    return out


def metered_records(path: Path, protos: tuple[int, ...] = (6,)) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets and ports (sport, dport) of the records of protocols ``protos``."""
    from iotwatch.flowmeter.packets import ReadStats
    from iotwatch.flowmeter.reader import read_packets

    offs, ports = [], []
    for b in read_packets([path], ReadStats()):
        m = np.isin(b.proto, protos)
        offs.append(b.offset[m])
        ports.append(np.stack([b.sport[m], b.dport[m]], axis=1).astype(np.int64))
    return np.concatenate(offs), np.concatenate(ports)


def move(data: bytes, offsets: list[int], seconds: int) -> bytes:
    """The capture with the records at ``offsets`` moved ``seconds`` (little-endian pcap)."""
    d = bytearray(data)
    for o in offsets:
        ts = struct.unpack_from("<I", d, o)[0]
        struct.pack_into("<I", d, o, (ts + seconds) % 2**32)
    return bytes(d)


def pick(n: int, k: int, where: str, rng: np.random.Generator, span: int = 12) -> list[int]:
    """``k`` distinct indices among ``span`` consecutive ones at the ``where`` of ``n``."""
    lo = {"start": 0, "middle": max(0, n // 2 - span // 2), "end": max(0, n - span)}[where]
    return sorted(rng.choice(np.arange(lo, min(n, lo + span)), k, replace=False).tolist())


def loss(base: pa.Table, got: pa.Table, own: set[tuple[int, int]]) -> tuple[int, int, int, int]:
    """Flows of ``base`` missing from ``got`` (same key, times, counts): (flows, packets, flows
    whose port pair is not in ``own`` (the moved records' pairs, low port first), their
    packets)."""

    def rows(t: pa.Table) -> set[tuple]:
        cols = [t.column(c).to_pylist() for c in KEY]
        return set(zip(*cols, strict=True))

    lost = rows(base) - rows(got)
    other = [r for r in lost if (min(r[2], r[4]), max(r[2], r[4])) not in own]
    return (len(lost), sum(r[7] for r in lost), len(other), sum(r[7] for r in other))
