"""``iotwatch watchset``: build a watch capture for a deployment evaluation (docs/watch.md).

The later days of a home's captures, with an attack capture's infected host rewritten onto one
of the home's devices (MAC and IPv4 address, checksums fixed), shifted to start at a chosen
time and merged in time order into one classic pcap; plus a ground-truth CSV of the injected
attack's connections (``iotwatch.features.read_ground_truth``'s format).

Captures are read here with ``struct`` (classic pcap in either byte order, microsecond or
nanosecond; pcapng; gzip-compressed either way): the flow meter's reader decodes fields, and a
watch capture needs the frames themselves. Each capture is held in memory (a few MB); only its
record offsets and timestamps become arrays, and the merge is a ``heapq.merge`` of one
time-sorted iterator per source.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import heapq
import ipaddress
import logging
import re
import struct
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path

import numpy as np

from iotwatch.errors import InputError, OutputError
from iotwatch.flowmeter.reader import GZIP_MAGIC, PCAP_MAGICS, PCAPNG_MAGIC

log = logging.getLogger(__name__)

NS = 1_000_000_000
DAY = 86400.0
SNAPLEN = 262_144  # written in the output header; longer frames are cut to it
LINKTYPE_ETHERNET = 1
_OUT_HEADER = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)
_REC = struct.Struct("<IIII")
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
_ICMP_ERRORS = (3, 4, 5, 11, 12)  # ICMP messages quoting the offending IP header
_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


@dataclass
class Infection:
    """One attack host to inject: which capture, which host, which home device it becomes."""

    attack: Path  # attack capture (classic pcap or pcapng, Ethernet; .gz accepted)
    host_ip: str  # the infected host's IPv4 address in that capture
    device_ip: str  # the home device it becomes
    device_mac: str
    at: float  # epoch seconds at which the attack's first packet is placed
    label: str = "attack"  # attack_type written to the ground truth
    host_mac: str | None = None  # None: the MAC that host_ip's frames carry (learnt)
    device_type: str = ""  # written to the ground truth
    device_name: str = ""


# -- reading captures ------------------------------------------------------------------------


@dataclass
class _Capture:
    """One capture in memory: its bytes and, per record, timestamp (ns), offset, lengths."""

    path: Path
    data: bytes
    ts: np.ndarray  # int64 epoch nanoseconds
    off: np.ndarray  # int64 offset of the frame in ``data``
    cap: np.ndarray  # int64 captured length
    wire: np.ndarray  # int64 length on the wire

    def __len__(self) -> int:
        return len(self.ts)

    def frame(self, i: int) -> bytes:
        o = int(self.off[i])
        return self.data[o : o + int(self.cap[i])]


def _load(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such capture file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a capture file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: gzip data is damaged ({exc})") from None
    return data


def read_capture(path: Path | str) -> _Capture:
    """Read a classic pcap / pcapng capture (gzip-compressed or not) of Ethernet frames.

    A file that is no capture, or has a link type other than Ethernet, raises ``InputError``;
    a capture cut short (a damaged or truncated last record) keeps the records before the cut
    and logs a warning.
    """
    path = Path(path)
    data = _load(path)
    if len(data) < 4:
        raise InputError(f"{path}: empty or too short to be a capture")
    magic = data[:4]
    if magic in PCAP_MAGICS:
        ts, off, cap, wire = _read_pcap(path, data)
    elif magic == PCAPNG_MAGIC:
        ts, off, cap, wire = _read_pcapng(path, data)
    else:
        raise InputError(f"{path}: not a capture (unknown magic {magic.hex()}; pcap or pcapng)")
    return _Capture(
        path,
        data,
        np.asarray(ts, np.int64),
        np.asarray(off, np.int64),
        np.asarray(cap, np.int64),
        np.asarray(wire, np.int64),
    )


def _not_ethernet(path: Path, linktype: int) -> InputError:
    return InputError(
        f"{path}: link type {linktype} is not Ethernet ({LINKTYPE_ETHERNET}); "
        "only Ethernet captures can be merged"
    )


def _read_pcap(path: Path, data: bytes) -> tuple[list, list, list, list]:
    endian, unit = PCAP_MAGICS[data[:4]]
    if len(data) < 24:
        raise InputError(f"{path}: pcap header cut short")
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0xFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise _not_ethernet(path, linktype)
    rec = struct.Struct(endian + "IIII").unpack_from
    ts, off, cap, wire = [], [], [], []
    pos, end = 24, len(data)
    while pos + 16 <= end:
        sec, frac, cl, wl = rec(data, pos)
        if cl > SNAPLEN or pos + 16 + cl > end:
            log.warning("%s: record at byte %d is cut or damaged; the rest is ignored", path, pos)
            break
        ts.append(sec * NS + frac * unit)
        off.append(pos + 16)
        cap.append(cl)
        wire.append(max(wl, cl))
        pos += 16 + cl
    else:
        if pos != end:
            log.warning("%s: %d stray bytes at the end ignored", path, end - pos)
    return ts, off, cap, wire


def _tsresol(value: int) -> tuple[int, int]:
    """pcapng if_tsresol -> (multiplier, right shift or divisor as a negative number)."""
    exp = value & 0x7F
    if value & 0x80:  # a power of two: ns = units * 1e9 >> exp
        return NS, exp
    if exp <= 9:
        return 10 ** (9 - exp), 0
    return 1, -(10 ** (exp - 9))


def _read_pcapng(path: Path, data: bytes) -> tuple[list, list, list, list]:
    ts, off, cap, wire = [], [], [], []
    endian = "<"
    ifaces: list[tuple[int, int, int, int]] = []  # (snaplen, mul, shift/div, offset_ns)
    last_ts = 0
    pos, end = 0, len(data)
    while pos + 12 <= end:
        btype = struct.unpack_from(endian + "I", data, pos)[0]
        if data[pos : pos + 4] == PCAPNG_MAGIC:
            bom = data[pos + 8 : pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                raise InputError(f"{path}: pcapng section header with bad byte-order magic")
            btype = 0x0A0D0D0A
            ifaces = []
        blen = struct.unpack_from(endian + "I", data, pos + 4)[0]
        if blen < 12 or blen % 4 or pos + blen > end:
            log.warning("%s: pcapng block at byte %d is cut or damaged; the rest is ignored",
                        path, pos)  # fmt: skip
            break
        body = pos + 8
        if btype == 1 and blen >= 20:  # interface description
            linktype, _, snaplen = struct.unpack_from(endian + "HHI", data, body)
            if linktype != LINKTYPE_ETHERNET:
                raise _not_ethernet(path, linktype)
            mul, shift, offset_ns = 1_000, 0, 0
            opt, stop = body + 8, pos + blen - 4
            while opt + 4 <= stop:
                code, length = struct.unpack_from(endian + "HH", data, opt)
                if code == 0 or opt + 4 + length > stop:
                    break
                if code == 9 and length >= 1:
                    mul, shift = _tsresol(data[opt + 4])
                elif code == 14 and length >= 8:
                    offset_ns = struct.unpack_from(endian + "q", data, opt + 4)[0] * NS
                opt += 4 + ((length + 3) & ~3)
            ifaces.append((snaplen or SNAPLEN, mul, shift, offset_ns))
        elif btype in (6, 2) and blen >= 32:  # enhanced (and obsolete) packet block
            iface, hi, lo, cl, wl = struct.unpack_from(endian + "IIIII", data, body)
            if btype == 2:
                iface = (iface >> 16) if endian == ">" else (iface & 0xFFFF)
            if iface >= len(ifaces) or cl + 32 > blen:
                log.warning("%s: bad packet block at byte %d skipped", path, pos)
            else:
                _, mul, shift, offset_ns = ifaces[iface]
                units = (hi << 32) | lo
                if shift > 0:
                    t = (units * mul) >> shift
                elif shift < 0:
                    t = units // -shift
                else:
                    t = units * mul
                last_ts = t + offset_ns
                ts.append(last_ts)
                off.append(body + 20)
                cap.append(min(cl, SNAPLEN))
                wire.append(max(wl, cl))
        elif btype == 3 and blen >= 16:  # simple packet block: no timestamp, inherits the last
            if not ifaces:
                log.warning("%s: packet block before any interface at byte %d skipped", path, pos)
            else:
                wl = struct.unpack_from(endian + "I", data, body)[0]
                cl = min(wl, blen - 16, ifaces[0][0], SNAPLEN)
                ts.append(last_ts)
                off.append(body + 4)
                cap.append(cl)
                wire.append(wl)
        pos += blen
    return ts, off, cap, wire


def _expand(paths: Iterable[Path | str]) -> list[Path]:
    from iotwatch.flowmeter.discover import expand_captures

    return expand_captures([Path(p) for p in paths])


def capture_start(paths: list[Path]) -> float:
    """The earliest packet timestamp (epoch seconds) across the captures (files or folders)."""
    first = None
    for path in _expand(paths):
        c = read_capture(path)
        if len(c):
            t = int(c.ts.min())
            first = t if first is None else min(first, t)
    if first is None:
        raise InputError(f"{', '.join(map(str, paths))}: no packets in the captures")
    return first / NS


# -- checksums --------------------------------------------------------------------------------


def _sum16(data: bytes | bytearray) -> int:
    """The ones' complement sum of ``data`` as 16-bit big-endian words (0..0xFFFF).

    The sum of the words is the number ``data`` spells taken modulo 0xFFFF (65536 = 1 there):
    one big-integer remainder instead of a Python loop over the words.
    """
    if len(data) % 2:
        data = bytes(data) + b"\0"
    x = int.from_bytes(data, "big")
    r = x % 0xFFFF
    return 0xFFFF if r == 0 and x else r


def _checksum(*parts: bytes | bytearray) -> int:
    """The Internet checksum of the parts joined (each part of even length but the last)."""
    s = 0
    for p in parts:
        s += _sum16(p)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _adjust(cksum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 incremental update, HC' = ~(~HC + ~m + m'), for the even-aligned span ``old``
    of the checksummed data replaced by ``new`` (same length)."""
    s = (~cksum & 0xFFFF) + (~_sum16(old) & 0xFFFF) + _sum16(new)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# -- rewriting the infected host ------------------------------------------------------------


@dataclass
class _Rewrite:
    host_ip: bytes
    device_ip: bytes
    host_mac: bytes
    device_mac: bytes
    checksums_recomputed: int = 0
    checksums_adjusted: int = 0  # truncated or fragmented: RFC 1624 incremental update


_DROP = None


def _l3(f: bytes) -> tuple[int, int]:
    """(ethertype, offset of the layer-3 header) after any 802.1Q / QinQ tags."""
    et, pos = int.from_bytes(f[12:14], "big"), 14
    while et in _VLAN_TYPES and pos + 4 <= len(f):
        et, pos = int.from_bytes(f[pos + 2 : pos + 4], "big"), pos + 4
    return et, pos


def _rewrite(f: bytes, rw: _Rewrite) -> tuple[bytes | None, tuple | None]:
    """One frame of the attack capture -> (frame to write or None to drop, connection key).

    Frames of the host (its IPv4 address as source or destination, ARP naming it, or its MAC
    in the Ethernet header) are rewritten; frames of the host that are neither IPv4 nor ARP
    (IPv6, ...) are dropped; every other frame comes back as the same object. The key is
    (proto, src ip, src port, dst ip, dst port) of a rewritten IPv4 packet (ports None when it
    has none), else None.
    """
    if len(f) < 14:
        return f, None
    et, l3 = _l3(f)
    n = len(f)
    mac_hit = f[0:6] == rw.host_mac or f[6:12] == rw.host_mac
    if et == 0x0800 and n >= l3 + 20 and f[l3] >> 4 == 4:
        src_hit = f[l3 + 12 : l3 + 16] == rw.host_ip
        dst_hit = f[l3 + 16 : l3 + 20] == rw.host_ip
        if not (src_hit or dst_hit or mac_hit):
            return f, None
        b = bytearray(f)
        _swap_macs(b, rw)
        return _rewrite_ipv4(b, l3, src_hit, dst_hit, rw)
    if et == 0x0806 and n >= l3 + 28 and f[l3 : l3 + 6] == b"\x00\x01\x08\x00\x06\x04":
        spa_hit = f[l3 + 14 : l3 + 18] == rw.host_ip
        tpa_hit = f[l3 + 24 : l3 + 28] == rw.host_ip
        if not (spa_hit or tpa_hit or mac_hit):
            return f, None
        b = bytearray(f)
        _swap_macs(b, rw)
        for mac_at, ip_at in ((l3 + 8, l3 + 14), (l3 + 18, l3 + 24)):
            if b[mac_at : mac_at + 6] == rw.host_mac:
                b[mac_at : mac_at + 6] = rw.device_mac
            if b[ip_at : ip_at + 4] == rw.host_ip:
                b[ip_at : ip_at + 4] = rw.device_ip
        return bytes(b), None
    return (_DROP if mac_hit else f), None


def _swap_macs(b: bytearray, rw: _Rewrite) -> None:
    for at in (0, 6):
        if b[at : at + 6] == rw.host_mac:
            b[at : at + 6] = rw.device_mac


def _rewrite_ipv4(
    b: bytearray, l3: int, src_hit: bool, dst_hit: bool, rw: _Rewrite
) -> tuple[bytes, tuple | None]:
    n = len(b)
    ihl = (b[l3] & 0x0F) * 4
    total = int.from_bytes(b[l3 + 2 : l3 + 4], "big")
    proto = b[l3 + 9]
    frag = int.from_bytes(b[l3 + 6 : l3 + 8], "big")
    first_fragment = frag & 0x1FFF == 0
    whole = frag & 0x3FFF == 0  # not a fragment at all
    changes = []  # (old, new) 4-byte address spans, for the incremental updates
    for hit, at in ((src_hit, l3 + 12), (dst_hit, l3 + 16)):
        if hit:
            changes.append((bytes(b[at : at + 4]), rw.device_ip))
            b[at : at + 4] = rw.device_ip
    # IPv4 header checksum: recomputed when the whole header is captured
    if changes and ihl >= 20 and n >= l3 + ihl:
        b[l3 + 10 : l3 + 12] = b"\0\0"
        b[l3 + 10 : l3 + 12] = _checksum(b[l3 : l3 + ihl]).to_bytes(2, "big")
    elif changes:
        c = int.from_bytes(b[l3 + 10 : l3 + 12], "big")
        for old, new in changes:
            c = _adjust(c, old, new)
        b[l3 + 10 : l3 + 12] = c.to_bytes(2, "big")
    l4 = l3 + max(ihl, 20)
    sport = dport = None
    if first_fragment and proto in (6, 17) and n >= l3 + ihl + 4:
        sport = int.from_bytes(b[l4 : l4 + 2], "big")
        dport = int.from_bytes(b[l4 + 2 : l4 + 4], "big")
    if not first_fragment:
        return bytes(b), None  # no ports: its connection is the first fragment's
    if changes and proto in (6, 17):
        _fix_l4(b, l3, l4, total, proto, whole, changes, rw)
    elif proto == 1:
        _fix_icmp_error(b, l4, l3 + total, whole, rw)
    key = (proto, bytes(b[l3 + 12 : l3 + 16]), sport, bytes(b[l3 + 16 : l3 + 20]), dport)
    return bytes(b), key


def _fix_l4(
    b: bytearray, l3: int, l4: int, total: int, proto: int, whole: bool, changes: list,
    rw: _Rewrite,
) -> None:  # fmt: skip
    """TCP / UDP checksum after the addresses changed: recomputed over the pseudo-header and
    the segment when all of it is captured, else updated incrementally (RFC 1624)."""
    at = l4 + (16 if proto == 6 else 6)
    if len(b) < at + 2:
        return  # the checksum itself was not captured
    old = int.from_bytes(b[at : at + 2], "big")
    if proto == 17 and old == 0:
        return  # UDP without a checksum stays so
    end = l3 + total
    if whole and l4 + (20 if proto == 6 else 8) <= end <= len(b):
        b[at : at + 2] = b"\0\0"
        pseudo = b[l3 + 12 : l3 + 20] + bytes((0, proto)) + (end - l4).to_bytes(2, "big")
        new = _checksum(pseudo, b[l4:end])
        rw.checksums_recomputed += 1
    else:
        new = old
        for o, nw in changes:
            new = _adjust(new, o, nw)
        rw.checksums_adjusted += 1
    if proto == 17 and new == 0:
        new = 0xFFFF
    b[at : at + 2] = new.to_bytes(2, "big")


def _fix_icmp_error(b: bytearray, l4: int, end: int, whole: bool, rw: _Rewrite) -> None:
    """An ICMP error quoting a packet of the host: the quoted IPv4 header's addresses (and its
    checksum, and the quoted UDP/TCP checksum when captured) rewritten, then the ICMP
    checksum recomputed (or updated incrementally when the message is not all captured)."""
    inner = l4 + 8
    n = len(b)
    if n < inner + 20 or b[l4] not in _ICMP_ERRORS or b[inner] >> 4 != 4:
        return
    old_msg = bytes(b[l4:n])
    changes = []
    for at in (inner + 12, inner + 16):
        if b[at : at + 4] == rw.host_ip:
            changes.append((bytes(b[at : at + 4]), rw.device_ip))
            b[at : at + 4] = rw.device_ip
    if not changes:
        return
    c = int.from_bytes(b[inner + 10 : inner + 12], "big")
    for o, nw in changes:
        c = _adjust(c, o, nw)
    b[inner + 10 : inner + 12] = c.to_bytes(2, "big")
    ihl = (b[inner] & 0x0F) * 4
    proto = b[inner + 9]
    at = inner + ihl + (16 if proto == 6 else 6)
    if proto in (6, 17) and n >= at + 2:
        c = int.from_bytes(b[at : at + 2], "big")
        if c or proto == 6:
            for o, nw in changes:
                c = _adjust(c, o, nw)
            if proto == 17 and c == 0:
                c = 0xFFFF
            b[at : at + 2] = c.to_bytes(2, "big")
    if n < l4 + 4:
        return
    if whole and end <= n:
        b[l4 + 2 : l4 + 4] = b"\0\0"
        b[l4 + 2 : l4 + 4] = _checksum(b[l4:end]).to_bytes(2, "big")
        rw.checksums_recomputed += 1
    else:  # the changed spans sit at even offsets of the message: one adjustment covers all
        old_sum_span = old_msg[4 : n - l4] + (b"\0" if (n - l4) % 2 else b"")
        new_sum_span = bytes(b[l4 + 4 : n]) + (b"\0" if (n - l4) % 2 else b"")
        c = int.from_bytes(b[l4 + 2 : l4 + 4], "big")
        b[l4 + 2 : l4 + 4] = _adjust(c, old_sum_span, new_sum_span).to_bytes(2, "big")
        rw.checksums_adjusted += 1


def _parse_mac(text: str, where: str) -> bytes:
    mac = text.strip().lower().replace("-", ":")
    if not _MAC_RE.match(mac):
        raise InputError(f"{where}: '{text}' is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return bytes.fromhex(mac.replace(":", ""))


def _parse_ipv4(text: str, where: str) -> bytes:
    try:
        return ipaddress.IPv4Address(text.strip()).packed
    except ValueError:
        raise InputError(f"{where}: '{text}' is not an IPv4 address") from None


def _learn_host_mac(c: _Capture, host_ip: bytes) -> bytes | None:
    """The MAC the host's frames carry: the source MAC of its IPv4 packets (the most common),
    else the destination MAC of the packets sent to it."""
    sent: dict[bytes, int] = {}
    received: dict[bytes, int] = {}
    for i in range(len(c)):
        f = c.frame(i)
        if len(f) < 34:
            continue
        et, l3 = _l3(f)
        if et != 0x0800 or len(f) < l3 + 20:
            continue
        if f[l3 + 12 : l3 + 16] == host_ip:
            sent[f[6:12]] = sent.get(f[6:12], 0) + 1
        elif f[l3 + 16 : l3 + 20] == host_ip:
            received[f[0:6]] = received.get(f[0:6], 0) + 1
    for seen in (sent, received):
        if seen:
            return max(seen, key=seen.__getitem__)
    return None


@dataclass
class _Injected:
    """An infection's packets, ready to merge: time-sorted and inside the window."""

    ts: list[int]
    frames: list[bytes]
    wire: list[int]
    rows: list[list[str]]
    dropped: int  # frames of the host that are neither IPv4 nor ARP
    host_mac: str
    shift_s: float


def _inject(inf: Infection, start_ns: int, end_ns: int | None) -> _Injected:
    attack = Path(inf.attack)
    host_ip = _parse_ipv4(inf.host_ip, f"{attack}: attack host")
    device_ip = _parse_ipv4(inf.device_ip, "device ip")
    device_mac = _parse_mac(inf.device_mac, "device mac")
    c = read_capture(attack)
    if not len(c):
        raise InputError(f"{attack}: the attack capture holds no packets")
    if inf.host_mac:
        host_mac = _parse_mac(inf.host_mac, "attack mac")
    else:
        learnt = _learn_host_mac(c, host_ip)
        if learnt is None:
            raise InputError(
                f"{attack}: host {inf.host_ip} not found (no IPv4 packet from or to it)"
            )
        host_mac = learnt
    rw = _Rewrite(host_ip, device_ip, host_mac, device_mac)
    order = np.argsort(c.ts, kind="stable")
    shift = round(inf.at * NS) - int(c.ts[order[0]])
    ts_all = (c.ts[order] + shift).tolist()
    wire_all = c.wire[order].tolist()
    ts, frames, wire = [], [], []
    conns: dict[tuple, list] = {}  # key -> [first ts, last ts, src (ip, port), dst, proto]
    dropped = touched = 0
    for t, i, w in zip(ts_all, order.tolist(), wire_all, strict=True):
        if t < start_ns or (end_ns is not None and t >= end_ns):
            continue
        f = c.frame(i)
        new, key = _rewrite(f, rw)
        if new is None:
            dropped += 1
            continue
        if new is not f:
            touched += 1
        ts.append(t)
        frames.append(new)
        wire.append(w)
        if key is not None:
            proto, sip, sport, dip, dport = key
            a, z = (sip, sport), (dip, dport)
            ck = (proto, *sorted((a, z), key=lambda e: (e[0], e[1] or 0)))
            conn = conns.get(ck)
            if conn is None:
                conns[ck] = [t, t, a, z, proto]
            else:
                conn[1] = t
    if not touched and not conns:
        found = _learn_host_mac(c, host_ip) is not None
        raise InputError(
            f"{attack}: host {inf.host_ip} has no packet between the watch's start and end"
            if found
            else f"{attack}: host {inf.host_ip} not found (no IPv4 packet from or to it)"
        )
    rows = []

    def order(v: list) -> tuple:  # start, then endpoints (no port sorts first)
        return v[0], v[2][0], -1 if v[2][1] is None else v[2][1], v[3][0], v[4]

    for first, last, (sip, sport), (dip, dport), proto in sorted(conns.values(), key=order):
        rows.append([
            inf.label, inf.device_type, inf.device_name, _PROTO_NAMES.get(proto, str(proto)),
            str(ipaddress.IPv4Address(sip)), "" if sport is None else str(sport),
            str(ipaddress.IPv4Address(dip)), "" if dport is None else str(dport),
            _fmt_time(first, floor=True), _fmt_time(last, floor=False),
        ])  # fmt: skip
    log.debug("%s: %d checksums recomputed, %d updated incrementally", attack,
              rw.checksums_recomputed, rw.checksums_adjusted)  # fmt: skip
    return _Injected(ts, frames, wire, rows, dropped, host_mac.hex(":"), shift / NS)


def _fmt_time(ns: int, floor: bool) -> str:
    """Epoch ns as seconds with 6 decimals, rounded outwards so the window holds the packet."""
    us = ns // 1000 if floor else -(-ns // 1000)
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


# -- merging and writing --------------------------------------------------------------------


def _source_records(c: _Capture, start_ns: int, end_ns: int | None) -> tuple[Iterator, int]:
    keep = c.ts >= start_ns
    if end_ns is not None:
        keep &= c.ts < end_ns
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(c.ts[idx], kind="stable")]
    data = c.data
    offs = c.off[idx].tolist()
    caps = c.cap[idx].tolist()
    frames = (data[o : o + n] for o, n in zip(offs, caps, strict=True))
    return zip(c.ts[idx].tolist(), frames, c.wire[idx].tolist(), strict=True), len(idx)


def _write_pcap(
    path: Path, records: Iterator[tuple[int, bytes, int]], name: Path
) -> tuple[int, int, int]:
    """Write the records as a little-endian nanosecond pcap; (packets, first ns, last ns)."""
    pack = _REC.pack
    count = 0
    first = last = 0
    try:
        with path.open("wb") as fh:
            w = fh.write
            w(_OUT_HEADER)
            for t, frame, wire in records:
                if len(frame) > SNAPLEN:
                    frame = frame[:SNAPLEN]
                sec, frac = divmod(t, NS)
                w(pack(sec, frac, len(frame), max(wire, len(frame))))
                w(frame)
                if not count:
                    first = t
                last = t
                count += 1
    except OSError as exc:
        raise OutputError.from_os(path, exc) from None
    except struct.error:
        raise InputError(f"{name}: a packet time does not fit a pcap (before 1970 or after 2106)"
                         ) from None  # fmt: skip
    return count, first, last


def _read_truth_rows(path: Path, start: float, end: float | None) -> list[list[str]]:
    from iotwatch.features import GROUND_TRUTH_COLUMNS

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: ground-truth CSV not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ground-truth CSV ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in GROUND_TRUTH_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; expected "
                         f"{list(GROUND_TRUTH_COLUMNS)}")  # fmt: skip
    rows = []
    for line, row in enumerate(reader, start=2):
        try:
            r_start, r_end = float(row["start"]), float(row["end"])
        except (TypeError, ValueError):
            raise InputError(f"{path}: line {line}: start and end must be numbers") from None
        if r_end >= start and (end is None or r_start < end):
            rows.append([row[c] or "" for c in GROUND_TRUTH_COLUMNS])
    return rows


def _write_truth(path: Path, rows: list[list[str]]) -> None:
    from iotwatch.features import GROUND_TRUTH_COLUMNS
    from iotwatch.flowmeter.schema import replacing

    with replacing(path) as tmp:
        try:
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(GROUND_TRUTH_COLUMNS)
                w.writerows(rows)
        except OSError as exc:
            raise OutputError.from_os(tmp, exc) from None


def build_watch(
    captures: list[Path],
    out: Path,
    *,
    start: float,
    end: float | None = None,
    infections: list[Infection] = (),
    truth: Path | None = None,
    extra: list[Path] = (),
    extra_truth: Path | None = None,
) -> dict:
    """Write one classic pcap `out`: every packet of `captures` (files or folders of captures)
    with start <= ts < end, plus each infection's attack packets (host rewritten, shifted so the
    attack's first packet is at `infection.at`; packets after `end` dropped), plus `extra`
    captures as they are (ts >= start), all merged in timestamp order (stable). Writes `truth`
    (CSV) = the ground truth of the injected attacks (and the rows of `extra_truth` whose end >=
    start, copied). Returns a summary dict (packets per source, attack connections, time span).

    The window start <= ts < end applies to every source (attack packets placed before
    ``start`` are dropped too, and so are ``extra`` packets from ``end`` on); ties keep the
    order captures, infections, extras, and each source's own order.
    """
    from iotwatch.flowmeter.schema import replacing

    if end is not None and end <= start:
        raise InputError(f"{out}: the watch ends ({end}) before it starts ({start})")
    start_ns = round(start * NS)
    end_ns = None if end is None else round(end * NS)
    files = _expand(captures)
    extra_files = _expand(extra) if extra else []
    if extra_truth is not None and truth is None:
        raise InputError(f"{extra_truth}: extra ground truth given without a truth file to copy "
                         "it to")  # fmt: skip
    sources: list[tuple[str, Iterator, int]] = []
    per_source: dict[str, int] = {}
    for path in files:
        it, n = _source_records(read_capture(path), start_ns, end_ns)
        sources.append((str(path), it, n))
    rows: list[list[str]] = []
    infected = []
    for inf in infections:
        inj = _inject(inf, start_ns, end_ns)
        it = zip(inj.ts, inj.frames, inj.wire, strict=True)
        sources.append((f"attack:{inf.attack}", it, len(inj.ts)))
        rows += inj.rows
        infected.append({
            "attack": str(inf.attack), "host_ip": inf.host_ip, "host_mac": inj.host_mac,
            "device_ip": inf.device_ip, "device_mac": inf.device_mac.lower(),
            "packets": len(inj.ts), "connections": len(inj.rows),
            "dropped_frames": inj.dropped, "shift_s": inj.shift_s,
        })  # fmt: skip
    for path in extra_files:
        it, n = _source_records(read_capture(path), start_ns, end_ns)
        sources.append((f"extra:{path}", it, n))
    extra_rows = _read_truth_rows(extra_truth, start, end) if extra_truth is not None else []
    for name, _, n in sources:
        per_source[name] = per_source.get(name, 0) + n
    merged = heapq.merge(*(it for _, it, _ in sources), key=itemgetter(0))
    with replacing(out) as tmp:
        packets, first, last = _write_pcap(tmp, merged, out)
    if truth is not None:
        _write_truth(truth, rows + extra_rows)
    return {
        "out": str(out),
        "packets": packets,
        "sources": per_source,
        "capture_packets": sum(n for name, _, n in sources[: len(files)]),
        "attack_packets": sum(i["packets"] for i in infected),
        "extra_packets": sum(n for _, _, n in sources[len(files) + len(infected) :]),
        "attack_connections": len(rows),
        "extra_truth_rows": len(extra_rows),
        "infections": infected,
        "start": start,
        "end": end,
        "first": first / NS if packets else None,
        "last": last / NS if packets else None,
        "truth": None if truth is None else str(truth),
    }


# -- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="iotwatch watchset",
        description="Build a watch capture: the later days of a home's captures, with an attack "
        "capture's infected host rewritten onto one of the home's devices (docs/watch.md).",
    )
    ap.add_argument("captures", nargs="+", type=Path, help="the home's captures or folders")
    ap.add_argument("--out", required=True, type=Path, help="the watch capture (classic pcap)")
    when = ap.add_mutually_exclusive_group()
    when.add_argument("--after-days", type=float, metavar="K",
                      help="start K days after the captures' first packet")  # fmt: skip
    when.add_argument("--from", dest="from_", type=float, metavar="EPOCH", help="start time")
    ap.add_argument("--until", type=float, metavar="EPOCH", help="end time (exclusive)")
    ap.add_argument("--infect", metavar="DEVICE_IP,DEVICE_MAC",
                    help="the home device the attack host becomes")  # fmt: skip
    ap.add_argument("--attack", type=Path, metavar="ATTACK.pcap", help="the attack capture")
    ap.add_argument("--attack-host", metavar="IP", help="the infected host's IPv4 address")
    ap.add_argument("--attack-mac", metavar="MAC",
                    help="the infected host's MAC (default: learnt from its packets)")  # fmt: skip
    at = ap.add_mutually_exclusive_group()
    at.add_argument("--attack-at-days", type=float, metavar="D",
                    help="the attack's first packet D days after the watch starts")  # fmt: skip
    at.add_argument("--attack-at", type=float, metavar="EPOCH",
                    help="the attack's first packet at this time")  # fmt: skip
    ap.add_argument("--label", default="attack", help="attack_type in the ground truth")
    ap.add_argument("--inventory", type=Path,
                    help="mac,ip,device_type,name CSV: the infected device's type and name "
                    "in the ground truth")  # fmt: skip
    ap.add_argument("--truth", type=Path, help="ground-truth CSV of the injected connections")
    ap.add_argument("--extra", nargs="+", type=Path, default=[], metavar="CAPTURE",
                    help="captures merged in as they are (e.g. other attacks)")  # fmt: skip
    ap.add_argument("--extra-truth", type=Path, metavar="GT.csv",
                    help="their ground truth, copied into --truth")  # fmt: skip
    return ap


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    """Run ``iotwatch watchset``: 0 when the watch capture was written; bad input raises
    ``InputError`` (the dispatcher prints one line and exits 2)."""
    args = _parser().parse_args(argv)
    for path in args.captures:
        if not path.exists():
            raise InputError(f"{path}: no such capture file or directory")
    if args.after_days is not None:
        start = capture_start(args.captures) + args.after_days * DAY
    elif args.from_ is not None:
        start = args.from_
    else:
        start = capture_start(args.captures)
    infections = []
    attack_args = (args.attack, args.attack_host, args.attack_mac, args.attack_at,
                   args.attack_at_days)  # fmt: skip
    if args.infect is None:
        if any(a is not None for a in attack_args):
            raise InputError("--infect: missing (DEVICE_IP,DEVICE_MAC of the device to infect)")
    else:
        parts = [p.strip() for p in args.infect.split(",")]
        if len(parts) != 2:
            raise InputError(f"--infect: '{args.infect}' is not DEVICE_IP,DEVICE_MAC")
        device_ip, device_mac = parts
        _parse_ipv4(device_ip, "--infect")
        _parse_mac(device_mac, "--infect")
        for name, value in (("--attack", args.attack), ("--attack-host", args.attack_host)):
            if value is None:
                raise InputError(f"{name}: missing (needed with --infect)")
        _parse_ipv4(args.attack_host, "--attack-host")
        if args.attack_mac is not None:
            _parse_mac(args.attack_mac, "--attack-mac")
        if args.attack_at is None and args.attack_at_days is None:
            raise InputError("--attack-at: missing (or --attack-at-days; needed with --infect)")
        if not args.attack.is_file():
            raise InputError(f"{args.attack}: no such capture file")
        when = args.attack_at if args.attack_at is not None else start + args.attack_at_days * DAY
        device_type = device_name = ""
        if args.inventory is not None:
            from iotwatch.inventory import read_inventory_csv

            dev = read_inventory_csv(args.inventory).lookup(mac=device_mac, ip=device_ip)
            if dev is None:
                raise InputError(f"{args.inventory}: no device with {device_mac} or {device_ip}")
            device_type, device_name = dev.device_type, dev.name
        infections.append(
            Infection(
                args.attack,
                args.attack_host,
                device_ip,
                device_mac,
                when,
                label=args.label,
                host_mac=args.attack_mac,
                device_type=device_type,
                device_name=device_name,
            )  # fmt: skip
        )
    if args.extra_truth is not None and args.truth is None:
        raise InputError(f"{args.extra_truth}: --extra-truth needs --truth to copy it to")
    s = build_watch(args.captures, args.out, start=start, end=args.until, infections=infections,
                    truth=args.truth, extra=args.extra, extra_truth=args.extra_truth)  # fmt: skip
    line = (
        f"iotwatch watchset: {s['packets']} packets ({s['capture_packets']} of the captures, "
        f"{s['attack_packets']} attack, {s['extra_packets']} extra), "
        f"{s['attack_connections']} attack connections, {_iso(s['first'])} .. "
        f"{_iso(s['last'])} UTC -> {args.out}"
    )
    if args.truth is not None:
        line += f", truth {args.truth}"
    print(line, file=sys.stderr)
    return 0
