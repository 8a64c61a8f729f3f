"""Raw frames from a live source (an AF_PACKET socket, a ring buffer) to a ``PacketBatch``.

The frames are laid out as an in-memory nanosecond pcap and decoded by the reader's kernel, so
a live packet becomes exactly the row it would be in a capture file (same link types, same
skip reasons, same counters in ``ReadStats``).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Sequence

import numpy as np

from iotwatch.flowmeter import reader as R
from iotwatch.flowmeter.packets import PacketBatch, ReadIssue, ReadStats

LINKTYPE_ETHERNET = 1
_HEADER = struct.Struct("<IHHiIII")  # classic pcap global header
_RECORD = struct.Struct("<IIII")  # ts_sec, ts_nsec, captured length, original length
_MAGIC_NS = 0xA1B23C4D  # nanosecond timestamps


class _BytesSource(R._Source):
    """The whole in-memory capture as the reader's byte window."""

    def __init__(self, data: np.ndarray) -> None:
        self.buf = data.view()
        self.buf.flags.writeable = False  # the reader's kernel takes read-only bytes
        self.data = self.buf  # type: ignore[assignment]


def frames_to_pcap(
    frames: Iterable[tuple[int, bytes] | tuple[int, bytes, int]],
    linktype: int = LINKTYPE_ETHERNET,
) -> bytes:
    """Frames as a classic pcap (nanosecond timestamps): ``(ts_ns, frame)`` or
    ``(ts_ns, frame, wire_length)`` each (the wire length defaults to the frame's)."""
    parts = [_HEADER.pack(_MAGIC_NS, 2, 4, 0, 0, R.MAX_RECORD, linktype)]
    for item in frames:
        ts, frame = int(item[0]), bytes(item[1])
        wire = int(item[2]) if len(item) > 2 else len(frame)
        sec, ns = divmod(ts, 1_000_000_000)
        parts.append(_RECORD.pack(sec, ns, len(frame), max(wire, len(frame))))
        parts.append(frame)
    return b"".join(parts)


def batch_from_frames(
    frames: Sequence[tuple[int, bytes] | tuple[int, bytes, int]],
    linktype: int = LINKTYPE_ETHERNET,
    stats: ReadStats | None = None,
    name: str = "<frames>",
) -> PacketBatch | None:
    """Decode raw frames (``(ts_ns, frame bytes[, wire length])``, link type ``linktype``:
    1 = Ethernet) into one ``PacketBatch``; None when no frame is an IP packet the reader
    keeps. ``stats`` (optional) counts them like a capture's packets (``files`` excepted);
    frames longer than 262,144 bytes are reported there and end the batch early."""
    if not frames:
        return None
    data = np.frombuffer(frames_to_pcap(frames, linktype), np.uint8)
    return _decode_pcap(data, len(frames), stats, name)


def batch_from_tpacket3(
    block: np.ndarray,
    n: int,
    first: int,
    linktype: int = LINKTYPE_ETHERNET,
    stats: ReadStats | None = None,
    name: str = "<frames>",
) -> PacketBatch | None:
    """``batch_from_frames`` for the ``n`` frames of a ``TPACKET_V3`` ring block (uint8 array;
    the first frame's header at ``first``): the block's frames become pcap records in one
    compiled pass (``_ring.tpacket3_records``), with no Python object per frame. A damaged
    block ends at the damage (reported in ``stats``)."""
    from iotwatch.flowmeter import _ring

    stats = stats if stats is not None else ReadStats()
    if n <= 0:
        return None
    out = np.empty(_HEADER.size + len(block) + _RECORD.size * n, np.uint8)
    out[: _HEADER.size] = np.frombuffer(
        _HEADER.pack(_MAGIC_NS, 2, 4, 0, 0, R.MAX_RECORD, linktype), np.uint8
    )
    result = np.zeros(2, np.int64)
    _ring.tpacket3_records(block, n, first, int(sys.byteorder == "big"), out[_HEADER.size :],
                           result)  # fmt: skip
    size, done = int(result[0]), int(result[1])
    if done < n:
        stats.issues.append(ReadIssue(name, first, f"ring block: {n - done} of {n} frames "
                                      "unreadable (damaged block)"))  # fmt: skip
    if not done:
        return None
    return _decode_pcap(out[: _HEADER.size + size], done, stats, name)


def _decode_pcap(
    data: np.ndarray, n_records: int, stats: ReadStats | None, name: str
) -> PacketBatch | None:
    """A nanosecond pcap in memory (``frames_to_pcap``'s layout) as one ``PacketBatch``."""
    stats = stats if stats is not None else ReadStats()
    src = _BytesSource(data)
    parser = R._PcapParser(name, stats, _HEADER.pack(_MAGIC_NS, 0, 0, 0, 0, 0, 0)[:4])
    pos = parser.start(src)
    batches = []
    while pos is not None:
        chunk = R._Chunk(n_records, len(src.buf) - pos)
        pos, status = parser.walk(src, pos, chunk)
        if chunk.records:
            b = chunk.finish(parser, 0)
            if b is not None:
                batches.append(b)
        if status in (R._STOP, R._MORE) or not chunk.records:
            break
    if not batches:
        return None
    if len(batches) == 1:
        return batches[0]
    return PacketBatch(
        **{
            f: np.concatenate([getattr(b, f) for b in batches])
            for f in PacketBatch.__dataclass_fields__
        }
    )
