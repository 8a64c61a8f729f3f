"""Fast capture reader: classic pcap / pcapng (optionally gzip-compressed) to ``PacketBatch`` chunks.

How it stays fast: the only per-record Python work is a tight walk that collects record offsets
(classic pcap records must be walked sequentially: each length says where the next one starts).
Every field, from the record header to the TCP flags, is then decoded for the whole chunk at once
with numpy gathers on the memory-mapped file (``_decode``).

How it stays small: uncompressed files are memory-mapped (file-backed pages, not private memory);
gzip files are decompressed in bounded windows. Batches hold at most ``chunk_packets`` records.

Bad input never raises a traceback. A file that is not a capture at all (empty, unknown magic)
or is damaged is recorded in ``stats.issues`` (file, byte offset, message) and the reader moves
on, keeping everything it already decoded; the caller decides whether that is fatal. Only a path
that does not exist or cannot be opened raises ``CaptureError`` (an ``InputError``).
"""

from __future__ import annotations

import contextlib
import mmap
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from iotwatch.errors import InputError
from iotwatch.flowmeter import _decode as dec
from iotwatch.flowmeter.packets import PacketBatch, ReadIssue, ReadStats

MAX_RECORD = 256 * 1024  # classic pcap record bound (libpcap's own maximum snap length)
MAX_BLOCK = 16 * 1024 * 1024  # pcapng block bound (packet blocks are further checked)
GZ_WINDOW = 32 * 1024 * 1024  # decompressed bytes held at once for gzip captures
GZ_READ = 1024 * 1024

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"

# Walk outcomes.
_FULL = 0  # the chunk is full; call again
_MORE = 1  # the next record is not complete in the buffer (needs more data, or the file is cut)
_STOP = 2  # the file cannot be read any further (issue recorded)
_SECTION = 3  # a new pcapng section starts: flush the chunk first

_EPB, _SPB, _PB = 6, 3, 2


class CaptureError(InputError):
    """A capture file cannot be opened at all; the message names it."""


def read_packets(
    paths: Sequence[Path | str],
    stats: ReadStats,
    chunk_packets: int = 262_144,
    progress: Callable[[int], None] | None = None,
) -> Iterator[PacketBatch]:
    """Decode the IP packets of the captures in order, as chunks of at most ``chunk_packets``."""
    files = [Path(p) for p in paths]
    for f in files:
        if not f.is_file():
            raise CaptureError(f"{f}: no such capture file")
    chunk_packets = max(1, int(chunk_packets))
    for index, f in enumerate(files):
        stats.files += 1
        yield from _read_file(f, index, stats, chunk_packets, progress)


def _issue(stats: ReadStats, name: str, offset: int, message: str) -> None:
    stats.issues.append(ReadIssue(name, int(offset), message))


class _Source:
    """A window of capture bytes: ``data[0]`` is at uncompressed offset ``base``."""

    data: bytes | mmap.mmap
    buf: np.ndarray
    base: int = 0
    final: bool = True
    error: str | None = None

    def raw_consumed(self, pos: int) -> int:
        """File bytes consumed once ``pos`` of the window is done (for progress)."""
        return self.base + pos

    def advance(self, pos: int) -> None:
        """Drop the first ``pos`` bytes and load more (no-op for a fully mapped file)."""

    def release(self, pos: int) -> None:
        """The bytes before ``pos`` will not be read again."""

    def close(self) -> None:
        """Release the file."""


class _MappedSource(_Source):
    def __init__(self, fh, size: int) -> None:
        self.fh = fh
        self.data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(self.data, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            self.data.madvise(mmap.MADV_SEQUENTIAL)
        self.buf = np.frombuffer(self.data, np.uint8)
        self.size = size
        self.released = 0

    def release(self, pos: int) -> None:
        # Drop consumed pages from our mapping so resident memory stays flat on huge files
        # (they are clean file pages: the kernel rereads them if ever touched again).
        upto = pos - pos % mmap.PAGESIZE
        if upto - self.released >= 64 * mmap.PAGESIZE and hasattr(mmap, "MADV_DONTNEED"):
            with contextlib.suppress(OSError, ValueError):
                self.data.madvise(mmap.MADV_DONTNEED, self.released, upto - self.released)
            self.released = upto

    def close(self) -> None:
        self.buf = np.zeros(0, np.uint8)
        with contextlib.suppress(BufferError):  # a caller still holds a view: GC unmaps it
            self.data.close()
        self.fh.close()


class _GzipSource(_Source):
    def __init__(self, fh) -> None:
        self.fh = fh
        self.fh.seek(0)
        self.raw_read = 0
        self.pending = b""
        self.d: zlib._Decompress | None = zlib.decompressobj(31)
        self.final = False
        self.data = b""
        self.buf = np.zeros(0, np.uint8)
        self.advance(0)

    def raw_consumed(self, pos: int) -> int:
        return self.raw_read

    def advance(self, pos: int) -> None:
        parts = [self.data[pos:]]
        size = len(parts[0])
        self.base += pos
        want = max(GZ_WINDOW, size + 1)  # always make progress, even past a huge leftover
        try:
            while size < want and not self.final:
                if self.d is not None and self.d.eof:
                    self.pending = self.d.unused_data + self.pending
                    self.d = None
                if not self.pending:
                    self.pending = self.fh.read(GZ_READ)
                    self.raw_read += len(self.pending)
                    if not self.pending:
                        self.final = True
                        if self.d is not None and not self.d.eof:
                            self.error = "gzip stream ends early"
                        break
                if self.d is None:  # another gzip member follows
                    self.d = zlib.decompressobj(31)
                out = self.d.decompress(self.pending, GZ_WINDOW)
                self.pending = self.d.unconsumed_tail
                parts.append(out)
                size += len(out)
        except zlib.error as exc:
            self.final = True
            self.error = f"gzip data is corrupt ({exc})"
        self.data = b"".join(parts)
        self.buf = np.frombuffer(self.data, np.uint8)

    def close(self) -> None:
        self.fh.close()


def _open(path: Path) -> _Source | None:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - owned by the source, closed in close()
        size = path.stat().st_size
        if size == 0:
            fh.close()
            return None
        head = fh.read(2)
        if head == GZIP_MAGIC:
            return _GzipSource(fh)
        return _MappedSource(fh, size)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read capture ({exc.strerror or exc})") from exc


def _read_file(
    path: Path,
    file_index: int,
    stats: ReadStats,
    chunk_packets: int,
    progress: Callable[[int], None] | None,
) -> Iterator[PacketBatch]:
    name = str(path)
    src = _open(path)
    if src is None:
        _issue(stats, name, 0, "empty file, not a capture")
        return
    reported = 0
    try:
        magic = bytes(src.data[:4])
        parser: _PcapParser | _PcapNgParser
        if magic in PCAP_MAGICS:
            parser = _PcapParser(name, stats, magic)
        elif magic == PCAPNG_MAGIC:
            parser = _PcapNgParser(name, stats)
        else:
            what = "decompressed data" if isinstance(src, _GzipSource) else "file"
            _issue(stats, name, 0, f"not a pcap/pcapng capture ({what} starts with {magic.hex()})")
            return
        pos = parser.start(src)
        while pos is not None:
            records, pos, status = parser.walk(src.data, pos, len(src.buf), chunk_packets)
            if records is not None:
                batch = parser.decode(src, records, file_index)
                src.release(pos)
                if batch is not None:
                    yield batch
            if progress is not None:
                done = src.raw_consumed(pos)
                if done > reported:
                    progress(done - reported)
                    reported = done
            if status == _STOP:
                break
            if status == _MORE:
                if src.final:
                    if pos < len(src.buf):
                        _issue(stats, name, src.base + pos, parser.cut_message)
                    break
                src.advance(pos)
                pos = 0
        if src.error:
            _issue(stats, name, src.base + len(src.buf), src.error)
    finally:
        total = path.stat().st_size if path.exists() else reported
        stats.bytes_read += total
        if progress is not None and total > reported:
            progress(total - reported)
        src.close()


def _finish(
    parser: _PcapParser | _PcapNgParser,
    src: _Source,
    file_index: int,
    start: np.ndarray,
    data: np.ndarray,
    cap: np.ndarray,
    orig: np.ndarray,
    ts: np.ndarray,
    iface: np.ndarray,
    linktype: np.ndarray,
    reason: np.ndarray,
) -> PacketBatch | None:
    """Decode the frames of one chunk, count skips, and keep the IP packets."""
    stats = parser.stats
    cap = np.where(reason == dec.KEPT, cap, 0)
    g = dec.Gather(src.buf)
    out = dec.decode_frames(g, data, cap, orig, linktype, reason)
    n = len(data)
    counts = np.bincount(reason, minlength=len(dec.REASONS))
    stats.packets_read += n
    stats.packets_kept += int(counts[dec.KEPT])
    for code in range(1, len(dec.REASONS)):
        if counts[code]:
            stats.skipped[dec.REASONS[code]] += int(counts[code])
    if counts[dec.KEPT] == 0:
        return None
    keep = reason == dec.KEPT
    return PacketBatch(
        ts_ns=ts[keep],
        frame_len=orig[keep],
        cap_len=cap[keep],
        ip_len=out["ip_len"][keep],
        payload_len=out["payload_len"][keep],
        ip_version=out["ip_version"][keep],
        proto=out["proto"][keep],
        src_ip_hi=out["src_ip_hi"][keep],
        src_ip_lo=out["src_ip_lo"][keep],
        dst_ip_hi=out["dst_ip_hi"][keep],
        dst_ip_lo=out["dst_ip_lo"][keep],
        sport=out["sport"][keep],
        dport=out["dport"][keep],
        tcp_flags=out["tcp_flags"][keep],
        vlan=out["vlan"][keep],
        src_mac=out["src_mac"][keep],
        dst_mac=out["dst_mac"][keep],
        fragment=out["fragment"][keep],
        iface=iface[keep].astype(np.int32),
        file_index=np.full(int(counts[dec.KEPT]), file_index, np.int32),
        offset=start[keep] + src.base,
    )


def _linktype_issue(stats: ReadStats, name: str, offset: int, linktype: int) -> None:
    if linktype not in dec.SUPPORTED_LINKTYPES:
        _issue(stats, name, offset, f"unsupported link type {linktype}: its packets are skipped")


class _PcapParser:
    """Classic libpcap files."""

    cut_message = "capture ends inside a packet record (truncated file)"

    def __init__(self, name: str, stats: ReadStats, magic: bytes) -> None:
        self.name = name
        self.stats = stats
        self.endian, self.frac_ns = PCAP_MAGICS[magic]
        self.incl_at = struct.Struct(self.endian + "I").unpack_from
        self.linktype = 0
        self.max_len = MAX_RECORD

    def start(self, src: _Source) -> int | None:
        """Parse the 24-byte global header; return where records start."""
        if len(src.buf) < 24:
            _issue(self.stats, self.name, 0, "pcap global header is truncated")
            return None
        _, _, _, _, snaplen, linktype = struct.unpack_from(self.endian + "HHiIII", src.data, 4)
        # The upper bits of the link-type field carry FCS information, not the type.
        self.linktype = linktype & 0xFFFF
        if MAX_RECORD < snaplen <= MAX_BLOCK:
            self.max_len = snaplen
        _linktype_issue(self.stats, self.name, 20, self.linktype)
        return 24

    def walk(self, data, pos: int, end: int, limit: int) -> tuple[list[int] | None, int, int]:
        """Collect up to ``limit`` complete record offsets from ``pos`` (the only per-record loop)."""
        offs: list[int] = []
        app = offs.append
        incl_at = self.incl_at
        status = _FULL
        # The record-length bound is checked afterwards, vectorised (``_check_lengths``): a
        # garbage length that still fits in the file only costs walking a few garbage records.
        try:
            for _ in range(limit):
                nxt = pos + 16 + incl_at(data, pos + 8)[0]
                if nxt > end:
                    status = _MORE
                    break
                app(pos)
                pos = nxt
            else:
                if pos >= end:
                    status = _MORE
        except struct.error:  # fewer than 12 bytes left
            status = _MORE
        if status == _MORE and end - pos >= 12:
            incl = incl_at(data, pos + 8)[0]
            if incl > self.max_len:
                status = _STOP
                self._absurd(pos, incl)
        if offs:
            start = np.array(offs, np.int64)
            incl = dec.be_words(
                dec.Gather(np.frombuffer(data, np.uint8)).rows(start + 8, 4), self.endian + "u4"
            )[:, 0]
            bad = np.flatnonzero(incl > self.max_len)
            if len(bad):
                first = int(bad[0])
                pos = int(start[first])
                self._absurd(pos, int(incl[first]))
                return (start[:first] if first else None), pos, _STOP
            return start, pos, status
        return None, pos, status

    def _absurd(self, pos: int, incl: int) -> None:
        _issue(
            self.stats,
            self.name,
            pos,
            f"absurd record length {incl} (bound {self.max_len}): stopped reading this file",
        )

    def decode(self, src: _Source, start: np.ndarray, file_index: int) -> PacketBatch | None:
        """Decode the records that start at ``start``."""
        g = dec.Gather(src.buf)
        hdr = dec.be_words(g.rows(start, 16), self.endian + "u4").astype(np.int64)
        ts = hdr[:, 0] * 1_000_000_000 + hdr[:, 1] * self.frac_ns
        n = len(start)
        return _finish(
            self,
            src,
            file_index,
            start,
            start + 16,
            hdr[:, 2],
            hdr[:, 3],
            ts,
            np.zeros(n, np.int32),
            np.full(n, self.linktype, np.int64),
            np.zeros(n, np.int8),
        )


class _Interface:
    __slots__ = ("linktype", "snaplen", "pow2", "exp", "offset_s")

    def __init__(self, linktype: int, snaplen: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.pow2 = False
        self.exp = 6  # default resolution: microseconds
        self.offset_s = 0


def _units_to_ns(units: np.ndarray, iface: _Interface) -> np.ndarray:
    """Convert pcapng timestamp units (uint64) to int64 nanoseconds for one interface."""
    e = iface.exp
    if not iface.pow2:
        ns = units * np.uint64(10 ** (9 - e)) if e <= 9 else units // np.uint64(10 ** (e - 9))
    elif e <= 34:
        # Split seconds and fraction so units * 1e9 never overflows 64 bits.
        sec = units >> np.uint64(e)
        frac = units & np.uint64((1 << e) - 1)
        ns = sec * np.uint64(1_000_000_000) + ((frac * np.uint64(1_000_000_000)) >> np.uint64(e))
    else:
        ns = (units.astype(np.float64) / float(1 << e) * 1e9).astype(np.uint64)
    return ns.astype(np.int64) + iface.offset_s * 1_000_000_000


class _PcapNgParser:
    """pcapng files: sections, interfaces, enhanced/simple/obsolete packet blocks."""

    cut_message = "capture ends inside a block (truncated file)"

    def __init__(self, name: str, stats: ReadStats) -> None:
        self.name = name
        self.stats = stats
        self.endian = "<"
        self.ifaces: list[_Interface] = []
        self.last_ts = 0  # simple packet blocks have no timestamp: they inherit the last one
        self._set_endian("<")

    def _set_endian(self, e: str) -> None:
        self.endian = e
        self.u2 = struct.Struct(e + "II").unpack_from
        self.u1 = struct.Struct(e + "I").unpack_from

    def start(self, src: _Source) -> int | None:
        """pcapng needs no separate header: the first block is the section header."""
        return 0

    def _bad(self, offset: int, message: str) -> None:
        _issue(self.stats, self.name, offset, message)

    def walk(self, data, pos: int, end: int, limit: int) -> tuple[list | None, int, int]:
        """Collect up to ``limit`` blocks' offsets; handle section/interface blocks inline."""
        epb: list[int] = []
        app = epb.append
        other: list[tuple[int, int]] = []  # (offset, type) for simple/obsolete packet blocks
        u2, u1 = self.u2, self.u1
        status = _FULL
        try:
            for _ in range(limit):
                btype, blen = u2(data, pos)
                if btype == _EPB and 32 <= blen <= MAX_BLOCK and not blen & 3:
                    nxt = pos + blen
                    if nxt > end:
                        status = _MORE
                        break
                    if u1(data, nxt - 4)[0] == blen:
                        app(pos)
                        pos = nxt
                        continue
                # Everything else (rare) goes the slow way.
                if btype == 0x0A0D0D0A:
                    if epb or other:
                        status = _SECTION
                        break
                    if end - pos < 12:
                        status = _MORE
                        break
                    bom = bytes(data[pos + 8 : pos + 12])
                    if bom == b"\x4d\x3c\x2b\x1a":
                        self._set_endian("<")
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        self._set_endian(">")
                    else:
                        self._bad(pos, f"section header with bad byte-order magic {bom.hex()}")
                        status = _STOP
                        break
                    u2, u1 = self.u2, self.u1
                    blen = u2(data, pos)[1]
                if blen < 12 or blen & 3 or blen > MAX_BLOCK:
                    self._bad(
                        pos, f"pcapng block with bad length {blen}: stopped reading this file"
                    )
                    status = _STOP
                    break
                nxt = pos + blen
                if nxt > end:
                    status = _MORE
                    break
                if u1(data, nxt - 4)[0] != blen:
                    # The leading length looked sane: skip this one block and try the next.
                    self._bad(pos, f"pcapng block type {btype:#x}: trailing length != {blen}")
                    if btype in (_EPB, _SPB, _PB):
                        self.stats.packets_read += 1
                        self.stats.skipped["bad_record"] += 1
                    pos = nxt
                    continue
                if btype == 0x0A0D0D0A:
                    if blen < 28:
                        self._bad(pos, "section header block too short")
                        status = _STOP
                        break
                    self.ifaces = []
                elif btype == 1:
                    self._idb(data, pos, blen)
                elif btype in (_SPB, _PB) or btype == _EPB:
                    if blen < (16 if btype == _SPB else 32):
                        self._bad(pos, f"packet block type {btype} too short ({blen} bytes)")
                        self.stats.packets_read += 1
                        self.stats.skipped["bad_record"] += 1
                    else:
                        other.append((pos, btype))
                pos = nxt
            else:
                if pos >= end:
                    status = _MORE
        except struct.error:
            status = _MORE
        if not epb and not other:
            return None, pos, status
        return (epb, other), pos, status

    def _idb(self, data, pos: int, blen: int) -> None:
        linktype, _, snaplen = struct.unpack_from(self.endian + "HHI", data, pos + 8)
        iface = _Interface(linktype, snaplen)
        opt = pos + 16
        stop = pos + blen - 4
        while opt + 4 <= stop:
            code, length = struct.unpack_from(self.endian + "HH", data, opt)
            if code == 0:
                break
            body = opt + 4
            if body + length > stop:
                self._bad(opt, "interface option runs past its block; options ignored")
                break
            if code == 9 and length >= 1:  # if_tsresol
                v = data[body]
                iface.pow2 = bool(v & 0x80)
                iface.exp = v & 0x7F
                if (not iface.pow2 and iface.exp > 19) or (iface.pow2 and iface.exp > 63):
                    self._bad(opt, f"if_tsresol {v:#x} out of range; using microseconds")
                    iface.pow2, iface.exp = False, 6
            elif code == 14 and length >= 8:  # if_tsoffset, seconds
                iface.offset_s = struct.unpack_from(self.endian + "q", data, body)[0]
            opt = body + ((length + 3) & ~3)
        _linktype_issue(self.stats, self.name, pos, linktype)
        self.ifaces.append(iface)

    def decode(self, src: _Source, records: tuple, file_index: int) -> PacketBatch | None:
        """Decode packet blocks (enhanced, simple, obsolete) in file order."""
        epb, other = records
        start = np.array(epb, np.int64)
        kind = np.full(len(epb), _EPB, np.int64)
        if other:
            start = np.concatenate([start, np.array([o[0] for o in other], np.int64)])
            kind = np.concatenate([kind, np.array([o[1] for o in other], np.int64)])
            order = np.argsort(start, kind="stable")
            start, kind = start[order], kind[order]
        n = len(start)
        g = dec.Gather(src.buf)
        w = dec.be_words(g.rows(start, 28), self.endian + "u4").astype(np.int64)
        blen = w[:, 1]
        reason = np.zeros(n, np.int8)
        iface = w[:, 2].copy()
        if (kind == _PB).any():  # obsolete Packet Block: 16-bit interface id + drops count
            pb = kind == _PB
            iface[pb] = (w[pb, 2] & 0xFFFF) if self.endian == "<" else (w[pb, 2] >> 16)
        spb = kind == _SPB
        iface[spb] = 0
        data = np.where(spb, start + 12, start + 28)
        orig = np.where(spb, w[:, 2], w[:, 6])
        cap = np.where(spb, np.minimum(orig, blen - 16), w[:, 5])
        nif = len(self.ifaces)
        if nif:
            snap = np.array([i.snaplen or MAX_BLOCK for i in self.ifaces], np.int64)
            lts = np.array([i.linktype for i in self.ifaces], np.int64)
            cap = np.where(spb, np.minimum(cap, snap[0]), cap)
        else:
            lts = np.zeros(1, np.int64)
        bad = (iface >= nif) | (~spb & (cap + 32 > blen))
        if bad.any():
            reason[bad] = dec.BAD_RECORD
            first = int(np.flatnonzero(bad)[0])
            self._bad(
                int(start[first]) + src.base,
                f"{int(bad.sum())} packet block(s) with an unknown interface or a captured "
                "length larger than the block; skipped",
            )
        iface = np.where(bad, 0, iface)
        linktype = lts[np.minimum(iface, len(lts) - 1)]
        units = (w[:, 3].astype(np.uint64) << np.uint64(32)) | w[:, 4].astype(np.uint64)
        ts = np.zeros(n, np.int64)
        for i in np.unique(iface[~spb & ~bad]).tolist():
            m = (iface == i) & ~spb & ~bad
            ts[m] = _units_to_ns(units[m], self.ifaces[i])
        if spb.any():
            # Forward-fill the last timestamped packet's time into simple packet blocks.
            has = ~spb & ~bad
            idx = np.where(has, np.arange(n), -1)
            np.maximum.accumulate(idx, out=idx)
            ts = np.where(idx >= 0, ts[np.maximum(idx, 0)], self.last_ts)
        good = ~bad
        if good.any():
            self.last_ts = int(ts[np.flatnonzero(good)[-1]])
        return _finish(self, src, file_index, start, data, cap, orig, ts, iface, linktype, reason)
