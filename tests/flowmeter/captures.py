"""Hand-assembled pcap / pcapng captures for the reader tests (exact control of every header)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from iotwatch.flowmeter.packets import PacketBatch, ReadStats
from iotwatch.flowmeter.reader import read_packets


def pcap_bytes(
    frames: Iterable[bytes | tuple[bytes, int]],
    linktype: int = 1,
    endian: str = "<",
    nano: bool = False,
    snaplen: int = 65535,
    ts0: int = 1_700_000_000,
) -> bytes:
    """A classic pcap; a frame given as (bytes, orig_len) has a larger original length."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, f in enumerate(frames):
        data, orig = f if isinstance(f, tuple) else (f, len(f))
        frac = (i + 7) * 1000 if nano else i + 7
        out.append(struct.pack(endian + "IIII", ts0 + i, frac, len(data), orig) + data)
    return b"".join(out)


def _opts(endian: str, opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    out = b""
    for code, val in opts:
        out += struct.pack(endian + "HH", code, len(val)) + val + b"\0" * (-len(val) % 4)
    return out + struct.pack(endian + "HH", 0, 0)


def block(btype: int, body: bytes, endian: str = "<", trailer: int | None = None) -> bytes:
    """One pcapng block with correct (or a given) trailing length."""
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", trailer or n)


def shb(endian: str = "<") -> bytes:
    """Section header block."""
    return block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)


def idb(
    linktype: int = 1,
    endian: str = "<",
    tsresol: int | None = None,
    tsoffset: int | None = None,
    snaplen: int = 65535,
) -> bytes:
    """Interface description block with optional if_tsresol / if_tsoffset."""
    opts = []
    if tsresol is not None:
        opts.append((9, bytes([tsresol])))
    if tsoffset is not None:
        opts.append((14, struct.pack(endian + "q", tsoffset)))
    body = struct.pack(endian + "HHI", linktype, 0, snaplen) + _opts(endian, opts)
    return block(1, body, endian)


def epb(
    data: bytes, iface: int = 0, units: int = 0, orig: int | None = None, endian: str = "<"
) -> bytes:
    """Enhanced packet block."""
    hdr = struct.pack(
        endian + "IIIII",
        iface,
        units >> 32,
        units & 0xFFFFFFFF,
        len(data),
        len(data) if orig is None else orig,
    )
    return block(6, hdr + data, endian)


def spb(data: bytes, endian: str = "<") -> bytes:
    """Simple packet block."""
    return block(3, struct.pack(endian + "I", len(data)) + data, endian)


def read_all(
    paths: list[Path], chunk_packets: int = 262_144
) -> tuple[dict[str, np.ndarray], ReadStats, list[PacketBatch]]:
    """Read captures; return the concatenated columns, the stats and the batches."""
    stats = ReadStats()
    batches = list(read_packets(paths, stats, chunk_packets=chunk_packets))
    names = list(PacketBatch.__dataclass_fields__)
    if batches:
        cols = {k: np.concatenate([getattr(b, k) for b in batches]) for k in names}
    else:
        cols = {k: np.zeros(0) for k in names}
    return cols, stats, batches


def write(tmp: Path, name: str, data: bytes) -> Path:
    """Write bytes to tmp/name and return the path."""
    p = tmp / name
    p.write_bytes(data)
    return p
