"""Fast capture reader: classic pcap / pcapng (optionally gzip-compressed) to ``PacketBatch`` chunks.

How it stays fast: one compiled pass per chunk (``_decode.walk``, numba) walks the record headers
over a uint8 view of the memory-mapped file and decodes every field, from the record header to
the TCP flags, straight into preallocated output columns. Python only sees chunk boundaries and
the rare blocks the kernel hands back (pcapng section / interface headers, damaged blocks).

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
MAX_BLOCK = dec.MAX_BLOCK
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

# Walk outcomes (shared with the kernel).
_FULL, _MORE, _STOP, _SECTION = dec.FULL, dec.MORE, dec.STOP, dec.SECTION

_EPB, _SPB, _PB = dec.BT_EPB, dec.BT_SPB, dec.BT_PB


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
        except OSError as exc:  # the disk under the input: damage of this file, not an output error
            self.final = True
            self.error = f"cannot read further ({exc.strerror or exc})"
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
            chunk = _Chunk(chunk_packets, len(src.buf) - pos)
            pos, status = parser.walk(src, pos, chunk)
            if chunk.records:
                batch = chunk.finish(parser, file_index)
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


class _Chunk:
    """Preallocated output columns for one batch, plus the kernel's running state."""

    def __init__(self, limit: int, avail: int) -> None:
        self.limit = limit
        # No record is shorter than 16 bytes: never allocate for more than the buffer can hold
        # (a tiny capture must not cost a full chunk's worth of columns).
        n = max(1, min(limit, avail // 16 + 1))
        self.i64 = np.empty((dec.N_I64, n), np.int64)
        self.u64 = np.empty((dec.N_U64, n), np.uint64)
        self.i32 = np.empty((dec.N_I32, n), np.int32)
        self.u16 = np.empty((dec.N_U16, n), np.uint16)
        self.u8 = np.empty((dec.N_U8, n), np.uint8)
        self.state = np.zeros(dec.N_STATE, np.int64)
        self.counts = np.zeros(len(dec.REASONS), np.int64)

    @property
    def records(self) -> int:
        """Packet records consumed so far (kept or skipped)."""
        return int(self.state[dec.ST_RECORDS])

    def run(
        self,
        src: _Source,
        pos: int,
        *,
        pcapng: bool,
        big: bool,
        frac_ns: int = 0,
        linktype: int = 0,
        max_len: int = 0,
        ift: np.ndarray = np.zeros((0, dec.N_IF), np.int64),  # noqa: B008 - read-only
    ) -> tuple[int, int]:
        """Run the kernel from ``pos`` (plain ints only: one compiled signature)."""
        # Records this chunk can still take (the allocation may be smaller than the limit).
        room = min(self.limit, self.i64.shape[1])
        buf = src.buf
        if buf.flags.writeable:  # one compiled signature: the kernel always sees read-only bytes
            buf = buf.view()
            buf.flags.writeable = False
        pos, status = dec.walk(
            buf,
            int(pos),
            int(src.base),
            room,
            int(pcapng),
            int(big),
            int(frac_ns),
            int(linktype),
            int(max_len),
            ift,
            self.i64,
            self.u64,
            self.i32,
            self.u16,
            self.u8,
            self.state,
            self.counts,
        )
        return int(pos), int(status)

    def report_bad_blocks(self, parser: _PcapNgParser) -> None:
        """One issue for the unusable packet blocks the kernel skipped since the last report.

        Called after every kernel run, so issues stay in file order around the ones the
        Python side records for the blocks it handles.
        """
        bad = int(self.state[dec.ST_BAD_BLOCKS])
        if bad:
            _issue(
                parser.stats,
                parser.name,
                int(self.state[dec.ST_BAD_OFFSET]),
                f"{bad} packet block(s) with an unknown interface or a captured "
                "length larger than the block; skipped",
            )
            self.state[dec.ST_BAD_BLOCKS] = 0

    def report_bad_lengths(self, parser: _PcapParser | _PcapNgParser) -> None:
        """One issue for the records with an impossible wire length since the last report
        (their frames were sized from the captured and IP lengths by the kernel)."""
        bad = int(self.state[dec.ST_LEN_BAD])
        if not bad:
            return
        orig, cap = int(self.state[dec.ST_LEN_ORIG]), int(self.state[dec.ST_LEN_CAP])
        why = ("smaller than its captured length" if orig < cap
               else f"more than a link carries ({dec.MAX_WIRE})")  # fmt: skip
        more = f"; {bad - 1} more such record(s) after it" if bad > 1 else ""
        _issue(
            parser.stats,
            parser.name,
            int(self.state[dec.ST_LEN_OFFSET]),
            f"record of {cap} captured bytes claims a wire length of {orig}, {why}: sized "
            f"from the captured and IP lengths{more}",
        )
        self.state[dec.ST_LEN_BAD] = 0

    def finish(self, parser: _PcapParser | _PcapNgParser, file_index: int) -> PacketBatch | None:
        """Count what the chunk saw into the stats; return its kept packets as a batch."""
        stats = parser.stats
        kept = int(self.state[dec.ST_KEPT])
        stats.packets_read += self.records
        stats.packets_kept += kept
        for code in range(1, len(dec.REASONS)):
            if self.counts[code]:
                stats.skipped[dec.REASONS[code]] += int(self.counts[code])
        if kept == 0:
            return None
        i64, u64, i32, u16, u8 = self.i64, self.u64, self.i32, self.u16, self.u8
        if kept < i64.shape[1] // 2:
            # Mostly empty (a short tail, or many skipped records): do not let the batch pin
            # the whole allocation.
            i64, u64, i32 = i64[:, :kept].copy(), u64[:, :kept].copy(), i32[:, :kept].copy()
            u16, u8 = u16[:, :kept].copy(), u8[:, :kept].copy()
        i32[dec.I32_FILE, :kept] = file_index
        return PacketBatch(
            ts_ns=i64[dec.I64_TS, :kept],
            frame_len=i64[dec.I64_FRAME_LEN, :kept],
            cap_len=i64[dec.I64_CAP_LEN, :kept],
            ip_len=i64[dec.I64_IP_LEN, :kept],
            payload_len=i64[dec.I64_PAYLOAD_LEN, :kept],
            ip_version=u8[dec.U8_VERSION, :kept],
            proto=u8[dec.U8_PROTO, :kept],
            src_ip_hi=u64[dec.U64_SRC_HI, :kept],
            src_ip_lo=u64[dec.U64_SRC_LO, :kept],
            dst_ip_hi=u64[dec.U64_DST_HI, :kept],
            dst_ip_lo=u64[dec.U64_DST_LO, :kept],
            sport=u16[dec.U16_SPORT, :kept],
            dport=u16[dec.U16_DPORT, :kept],
            tcp_flags=u8[dec.U8_FLAGS, :kept],
            vlan=i32[dec.I32_VLAN, :kept],
            src_mac=u64[dec.U64_SRC_MAC, :kept],
            dst_mac=u64[dec.U64_DST_MAC, :kept],
            fragment=u8[dec.U8_FRAGMENT, :kept].view(np.bool_),
            iface=i32[dec.I32_IFACE, :kept],
            file_index=i32[dec.I32_FILE, :kept],
            offset=i64[dec.I64_OFFSET, :kept],
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

    def walk(self, src: _Source, pos: int, chunk: _Chunk) -> tuple[int, int]:
        """Decode records from ``pos`` into ``chunk`` (all in the kernel); return (pos, status)."""
        pos, status = chunk.run(
            src,
            pos,
            pcapng=False,
            big=self.endian == ">",
            frac_ns=self.frac_ns,
            linktype=self.linktype,
            max_len=self.max_len,
        )
        chunk.report_bad_lengths(self)
        if status == dec.ABSURD:
            incl = struct.unpack_from(self.endian + "I", src.data, pos + 8)[0]
            _issue(
                self.stats,
                self.name,
                src.base + pos,
                f"absurd record length {incl} (bound {self.max_len}): stopped reading this file",
            )
            status = _STOP
        return pos, status


class _Interface:
    __slots__ = ("linktype", "snaplen", "pow2", "exp", "offset_s")

    def __init__(self, linktype: int, snaplen: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.pow2 = False
        self.exp = 6  # default resolution: microseconds
        self.offset_s = 0

    def row(self) -> list[int]:
        """This interface as a row of the kernel's interface table (``dec.IF_*`` columns)."""
        e = self.exp
        if not self.pow2:
            mode, factor = (dec.TS_MUL, 10 ** (9 - e)) if e <= 9 else (dec.TS_DIV, 10 ** (e - 9))
        else:
            mode, factor = (dec.TS_POW2 if e <= 34 else dec.TS_POW2_FLOAT), 1
        # Keep the offset in int64 range (a garbage if_tsoffset must not overflow the table).
        offset_s = max(-(2**63) // 10**9, min(self.offset_s, (2**63 - 1) // 10**9))
        return [self.linktype, self.snaplen or MAX_BLOCK, mode, e, factor, offset_s]


class _PcapNgParser:
    """pcapng files: sections, interfaces, enhanced/simple/obsolete packet blocks."""

    cut_message = "capture ends inside a block (truncated file)"

    def __init__(self, name: str, stats: ReadStats) -> None:
        self.name = name
        self.stats = stats
        self.endian = "<"
        self.ifaces: list[_Interface] = []
        self.ift = np.zeros((0, dec.N_IF), np.int64)  # the kernel's copy of ``ifaces``
        self.last_ts = 0  # simple packet blocks have no timestamp: they inherit the last one
        self.base = 0  # uncompressed offset of the current window
        self._set_endian("<")

    def _set_endian(self, e: str) -> None:
        self.endian = e
        self.u2 = struct.Struct(e + "II").unpack_from
        self.u1 = struct.Struct(e + "I").unpack_from

    def start(self, src: _Source) -> int | None:
        """pcapng needs no separate header: the first block is the section header."""
        return 0

    def _bad(self, offset: int, message: str) -> None:
        # ``offset`` is in the current window; issues carry uncompressed file offsets.
        _issue(self.stats, self.name, self.base + offset, message)

    def walk(self, src: _Source, pos: int, chunk: _Chunk) -> tuple[int, int]:
        """Decode blocks from ``pos`` into ``chunk``; handle the blocks the kernel hands back."""
        data = src.data
        end = len(src.buf)
        self.base = src.base
        chunk.state[dec.ST_LAST_TS] = self.last_ts
        try:
            while True:
                pos, status = chunk.run(src, pos, pcapng=True, big=self.endian == ">", ift=self.ift)
                chunk.report_bad_blocks(self)
                chunk.report_bad_lengths(self)
                if status != dec.EVENT:
                    return pos, status
                pos, status = self._event(data, pos, end, chunk.records)
                if status != _FULL:
                    return pos, status
        finally:
            self.last_ts = int(chunk.state[dec.ST_LAST_TS])

    def _event(self, data, pos: int, end: int, pending: int) -> tuple[int, int]:
        """Handle the one block at ``pos`` the kernel would not (rare: keep it readable).

        Returns the position after it and ``_FULL`` to go on, or another status to stop.
        """
        u2, u1 = self.u2, self.u1
        btype, blen = u2(data, pos)  # the kernel only hands back blocks with 8 bytes present
        if btype == 0x0A0D0D0A:
            if pending:
                return pos, _SECTION
            if end - pos < 12:
                return pos, _MORE
            bom = bytes(data[pos + 8 : pos + 12])
            if bom == b"\x4d\x3c\x2b\x1a":
                self._set_endian("<")
            elif bom == b"\x1a\x2b\x3c\x4d":
                self._set_endian(">")
            else:
                self._bad(pos, f"section header with bad byte-order magic {bom.hex()}")
                return pos, _STOP
            u2, u1 = self.u2, self.u1
            blen = u2(data, pos)[1]
        if blen < 12 or blen & 3 or blen > MAX_BLOCK:
            self._bad(pos, f"pcapng block with bad length {blen}: stopped reading this file")
            return pos, _STOP
        nxt = pos + blen
        if nxt > end:
            return pos, _MORE
        if u1(data, nxt - 4)[0] != blen:
            # The leading length looked sane: skip this one block and try the next.
            self._bad(pos, f"pcapng block type {btype:#x}: trailing length != {blen}")
            if btype in (_EPB, _SPB, _PB):
                self.stats.packets_read += 1
                self.stats.skipped["bad_record"] += 1
            return nxt, _FULL
        if btype == 0x0A0D0D0A:
            if blen < 28:
                self._bad(pos, "section header block too short")
                return pos, _STOP
            self._set_ifaces([])
        elif btype == 1:
            self._idb(data, pos, blen)
        elif btype in (_SPB, _PB, _EPB):  # handed back only when too short
            self._bad(pos, f"packet block type {btype} too short ({blen} bytes)")
            self.stats.packets_read += 1
            self.stats.skipped["bad_record"] += 1
        return nxt, _FULL

    def _set_ifaces(self, ifaces: list[_Interface]) -> None:
        self.ifaces = ifaces
        self.ift = np.array([i.row() for i in ifaces], np.int64).reshape(-1, dec.N_IF)

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
        self._set_ifaces([*self.ifaces, iface])
