"""Live capture's kernel: a ``TPACKET_V3`` ring block's frames as classic pcap records, so the
reader's ``walk`` decodes them like a capture file's (``frames.batch_from_tpacket3``).
"""

from __future__ import annotations

import numpy as np

from iotwatch.flowmeter import _jit

_JIT = {"cache": True, "nogil": True}


# Plain (not inlined) helpers: with ``inline="always"`` ones, numba's ahead-of-time build of
# this kernel next to ``_decode.walk`` failed to type ``walk`` (its status variable's literals).
@_jit.njit(**_JIT)
def _word(buf: np.ndarray, p: int, width: int, big: int) -> int:
    """An unsigned ``width``-byte word at ``p`` in the host's byte order (``big``)."""
    v = np.int64(0)
    for i in range(width):
        v |= np.int64(buf[p + (width - 1 - i if big else i)]) << (8 * i)
    return v


@_jit.njit(**_JIT)
def _put_le32(out: np.ndarray, p: int, v: int) -> None:
    out[p] = v & 0xFF
    out[p + 1] = (v >> 8) & 0xFF
    out[p + 2] = (v >> 16) & 0xFF
    out[p + 3] = (v >> 24) & 0xFF


@_jit.njit(**_JIT)
def tpacket3_records(
    block: np.ndarray, n: int, first: int, big: int, out: np.ndarray, result: np.ndarray
) -> None:
    """The frames of a ``TPACKET_V3`` ring block (``n`` of them, the first at ``first``) as
    classic pcap records (little-endian, nanosecond timestamps) written to ``out`` from 0;
    ``result`` (int64[2]) receives (bytes written, frames written). ``big``: the host's byte
    order is big-endian (the ring's headers are in host order). Stops early, never reading
    outside ``block`` or writing outside ``out``, at a frame header or frame that does not fit
    (a damaged block)."""
    pos = first
    o = 0
    done = 0
    size = len(block)
    for _ in range(n):
        if pos < 0 or pos + 28 > size:
            break
        nxt = _word(block, pos, 4, big)
        sec = _word(block, pos + 4, 4, big)
        nsec = _word(block, pos + 8, 4, big)
        snap = _word(block, pos + 12, 4, big)
        wire = _word(block, pos + 16, 4, big)
        mac = _word(block, pos + 24, 2, big)
        start = pos + mac
        if start + snap > size or o + 16 + snap > len(out):
            break
        _put_le32(out, o, sec)
        _put_le32(out, o + 4, nsec)
        _put_le32(out, o + 8, snap)
        _put_le32(out, o + 12, max(wire, snap))
        out[o + 16 : o + 16 + snap] = block[start : start + snap]
        o += 16 + snap
        done += 1
        if nxt <= 0:
            break
        pos += nxt
    result[0] = o
    result[1] = done


EXPORTS = ("tpacket3_records",)  # the functions the ahead-of-time module provides
_jit.use_aot(globals(), EXPORTS)
