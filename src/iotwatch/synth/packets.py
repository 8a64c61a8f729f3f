"""Fast packet emission: fixed header layouts packed with struct, checksums by big-int arithmetic.

Building each packet as scapy layers costs ~100 us; here a packet costs a few us. The layouts
were checked against scapy (tests/synth compare checksums with scapy's on a sample). The
one's-complement sum of 16-bit words equals the big-endian integer of the bytes modulo 0xFFFF
(2**16 == 1 mod 0xFFFF), so ``int.from_bytes`` gives a checksum in C speed.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from dataclasses import dataclass, field

import numpy as np

from iotwatch.flowmeter.reader import PCAP_MAGICS

ETH_IPV4 = b"\x08\x00"
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
PROTO_TCP, PROTO_UDP = 6, 17
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_REC = struct.Struct("<IIII")
# classic pcap, little-endian, microsecond stamps: the reader's table of magics names it
PCAP_MAGIC_US = next(m for m, fmt in PCAP_MAGICS.items() if fmt == ("<", 1_000))
LINKTYPE_ETHERNET = 1


def ones_sum(data: bytes) -> int:
    """One's-complement sum of ``data`` (padded to even length), modulo 0xFFFF."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return n % 0xFFFF


def finish_checksum(total: int) -> int:
    """Checksum field value for a one's-complement sum (non-zero data), matching scapy."""
    total %= 0xFFFF
    return 0 if total == 0 else 0xFFFF - total


class Rand:
    """Buffered draws from one numpy Generator: scalar draws at list-indexing cost."""

    def __init__(self, rng: np.random.Generator, pool_bytes: int = 1 << 20) -> None:
        self.rng = rng
        self._u: list[float] = []
        self._i = 0
        self.pool = rng.bytes(pool_bytes)  # random payload bytes, sliced per message

    def u(self) -> float:
        """Uniform in [0, 1)."""
        if self._i >= len(self._u):
            self._u = self.rng.random(8192).tolist()
            self._i = 0
        v = self._u[self._i]
        self._i += 1
        return v

    def uniform(self, lo: float, hi: float) -> float:
        """Uniform in [lo, hi)."""
        return lo + (hi - lo) * self.u()

    def span(self, r: list[float]) -> float:
        """Uniform in a ``[low, high]`` config range."""
        return r[0] + (r[1] - r[0]) * self.u()

    def ispan(self, r: list[int]) -> int:
        """Integer uniform in a ``[low, high]`` config range, inclusive."""
        return int(r[0]) + int(self.u() * (int(r[1]) - int(r[0]) + 1))

    def integer(self, lo: int, hi: int) -> int:
        """Integer uniform in [lo, hi)."""
        return lo + int(self.u() * (hi - lo))

    def exp(self, mean: float) -> float:
        """Exponential with the given mean."""
        return -mean * math.log(1.0 - self.u())

    def chance(self, p: float) -> bool:
        """True with probability p."""
        return self.u() < p

    def choice(self, seq: list) -> object:
        """One element of a non-empty sequence."""
        return seq[int(self.u() * len(seq))]

    def poisson(self, lam: float) -> int:
        """Poisson count."""
        return int(self.rng.poisson(lam)) if lam > 0 else 0

    def payload(self, n: int) -> bytes:
        """``n`` random-looking bytes (a slice of the pool; repeated for huge sizes)."""
        pool = self.pool
        if n <= len(pool):
            off = int(self.u() * (len(pool) - n + 1))
            return pool[off : off + n]
        return (pool * (n // len(pool) + 1))[:n]

    def u32(self) -> int:
        """Random 32-bit integer (initial sequence numbers)."""
        return int(self.u() * 4294967296.0) & 0xFFFFFFFF


@dataclass(eq=False)
class Host:
    """An IP endpoint as seen from the LAN: its address and the MAC its frames carry."""

    ip: str
    mac: str  # for a WAN host: the gateway's MAC (the sniffer sees the router's frames)
    wan: bool = False
    ttl: int = 64
    ip4: bytes = field(init=False)
    mac6: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.ip4 = socket.inet_aton(self.ip)
        self.mac6 = bytes.fromhex(self.mac.replace(":", ""))


@dataclass
class FlowInfo:
    """What the generator knows about one 5-tuple it opened: who is the device, and the label."""

    proto: int
    dev: Host
    dev_port: int
    peer: Host
    peer_port: int
    device_name: str | None  # None: background traffic (phone broadcasts), not a device flow
    device_type: str | None
    label: str | None  # None for legitimate traffic, else the attack type


class Emitter:
    """Collects (timestamp, frame, flow id, from-device, tcp flags) records for one output stream."""

    def __init__(self, start_epoch: float, day_s: float = 86400.0) -> None:
        self.start = start_epoch
        self.day_s = day_s
        self.buckets: dict[int, list[tuple[int, int, bytes, int, bool, int, int]]] = {}
        self.flows: list[FlowInfo] = []
        self.serial = 0  # tie-breaker: emission order, so sorting never depends on bytes

    def new_flow(self, info: FlowInfo) -> int:
        """Register a 5-tuple the generator opens; returns its id."""
        self.flows.append(info)
        return len(self.flows) - 1

    def add(
        self, t: float, frame: bytes, fid: int, from_dev: bool, flags: int, ip_len: int
    ) -> None:
        """Record one frame seen by the sniffer at time ``t`` (epoch seconds)."""
        ts_us = int(round(t * 1e6))
        day = int((t - self.start) // self.day_s)
        self.serial += 1
        rec = (ts_us, self.serial, frame, fid, from_dev, flags, ip_len)
        b = self.buckets.get(day)
        if b is None:
            self.buckets[day] = b = []
        b.append(rec)

    def pop_sorted(self, days: list[int]) -> list[tuple[int, int, bytes, int, bool, int, int]]:
        """Remove and return the records of these day buckets in time order."""
        out: list[tuple[int, int, bytes, int, bool, int, int]] = []
        for d in days:
            out.extend(self.buckets.pop(d, []))
        out.sort(key=lambda r: (r[0], r[1]))
        return out


def eth_ip(src: Host, dst: Host, proto: int, ident: int, l4: bytes, ttl: int) -> tuple[bytes, int]:
    """Ethernet + IPv4 (DF set) around an L4 segment; frames padded to the 60-byte minimum."""
    total = 20 + len(l4)
    hdr = _IP.pack(0x45, 0, total, ident & 0xFFFF, 0x4000, ttl, proto, 0, src.ip4, dst.ip4)
    ck = finish_checksum(ones_sum(hdr))
    hdr = hdr[:10] + ck.to_bytes(2, "big") + hdr[12:]
    frame = dst.mac6 + src.mac6 + ETH_IPV4 + hdr + l4
    if len(frame) < 60:  # a LAN sniffer sees short frames padded by the sending NIC
        frame += b"\x00" * (60 - len(frame))
    return frame, total


def tcp_bytes(
    src: Host, dst: Host, sport: int, dport: int, seq: int, ack: int, flags: int, win: int,
    payload: bytes, opts: bytes = b"",
) -> bytes:  # fmt: skip
    """A TCP segment (header, options, payload) with a correct checksum."""
    off = ((20 + len(opts)) // 4) << 4
    hdr = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off, flags, win, 0, 0) + opts
    seg_len = len(hdr) + len(payload)
    pseudo = src.ip4 + dst.ip4 + bytes((0, PROTO_TCP)) + seg_len.to_bytes(2, "big")
    total = ones_sum(pseudo + hdr) + (ones_sum(payload) if payload else 0)
    ck = finish_checksum(total)
    return hdr[:16] + ck.to_bytes(2, "big") + hdr[18:] + payload


def udp_bytes(src: Host, dst: Host, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP datagram with a correct checksum (0 is sent as 0xFFFF)."""
    length = 8 + len(payload)
    hdr = _UDP.pack(sport, dport, length, 0)
    pseudo = src.ip4 + dst.ip4 + bytes((0, PROTO_UDP)) + length.to_bytes(2, "big")
    ck = finish_checksum(ones_sum(pseudo + hdr) + (ones_sum(payload) if payload else 0)) or 0xFFFF
    return hdr[:6] + ck.to_bytes(2, "big") + payload


class Net:
    """Shared per-stream context: emitter, random draws, network timing parameters."""

    def __init__(self, em: Emitter, rnd: Rand, cfg) -> None:  # cfg: NetworkConfig
        self.em = em
        self.rnd = rnd
        self.cfg = cfg
        self.mss = cfg.mss
        self.wan_mss = cfg.wan_mss

    def udp(
        self, t: float, fid: int, src: Host, sport: int, dst: Host, dport: int, payload: bytes,
        from_dev: bool,
    ) -> None:  # fmt: skip
        """Emit one UDP datagram."""
        l4 = udp_bytes(src, dst, sport, dport, payload)
        frame, ip_len = eth_ip(src, dst, PROTO_UDP, self.rnd.integer(0, 65536), l4, src.ttl)
        self.em.add(t, frame, fid, from_dev, 0, ip_len)


def syn_options(mss: int, ts: int) -> bytes:
    """MSS, SACK-permitted, timestamps, NOP, window scale: a Linux-like SYN option block."""
    return (
        b"\x02\x04" + mss.to_bytes(2, "big") + b"\x04\x02\x08\x0a" + (ts & 0xFFFFFFFF).to_bytes(4, "big")
        + b"\x00\x00\x00\x00" + b"\x01\x03\x03\x07"
    )  # fmt: skip


class Tcp:
    """One TCP connection between a device-side host and a peer, with consistent seq/ack."""

    def __init__(
        self, net: Net, info: FlowInfo, client_is_dev: bool, rtt: float, lan: bool = False,
        dev_win: int = 14600, peer_win: int = 29200,
    ) -> None:  # fmt: skip
        self.net = net
        self.info = info
        self.fid = net.em.new_flow(info)
        self.client_is_dev = client_is_dev
        self.rtt = rtt
        self.lan = lan
        r = net.rnd
        self.seq = {True: r.u32(), False: r.u32()}  # keyed by from_dev: next seq to send
        self.win = {True: dev_win, False: peer_win}
        self.ident = {True: r.integer(0, 65536), False: r.integer(0, 65536)}
        self.t = 0.0  # time of the latest packet emitted on this connection
        self.open = False

    # -- low level -------------------------------------------------------------------------
    def pkt(
        self, t: float, from_dev: bool, flags: int, payload: bytes = b"", opts: bytes = b"",
        seq: int | None = None,
    ) -> None:  # fmt: skip
        """Emit one segment; advances the sender's seq unless ``seq`` is given (retransmission)."""
        info = self.info
        if from_dev:
            src, dst, sp, dp = info.dev, info.peer, info.dev_port, info.peer_port
        else:
            src, dst, sp, dp = info.peer, info.dev, info.peer_port, info.dev_port
        s = self.seq[from_dev] if seq is None else seq
        ack = self.seq[not from_dev] if flags & ACK else 0
        win = self.win[from_dev]
        l4 = tcp_bytes(src, dst, sp, dp, s, ack, flags, win, payload, opts)
        self.ident[from_dev] += 1
        frame, ip_len = eth_ip(src, dst, PROTO_TCP, self.ident[from_dev], l4, src.ttl)
        self.net.em.add(t, frame, self.fid, from_dev, flags, ip_len)
        if seq is None:
            self.seq[from_dev] = (s + len(payload) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        if t > self.t:
            self.t = t

    def _delay(self, receiver_is_dev: bool) -> float:
        """Time from a segment seen on the LAN to the receiver's answer seen on the LAN."""
        r = self.net.rnd
        if self.lan:
            return r.span(self.net.cfg.lan_rtt_ms) / 1000.0
        if receiver_is_dev:  # segment already on the LAN, device answers locally
            return r.span(self.net.cfg.ack_delay_ms) / 1000.0
        return self.rtt * r.uniform(0.9, 1.3)  # the answer crosses the WAN and back

    # -- connection life ---------------------------------------------------------------------
    def connect(self, t: float, refuse: bool = False) -> float:
        """Three-way handshake from the client; returns the time of the last packet."""
        t = max(t, self.t)
        c = self.client_is_dev
        r = self.net.rnd
        self.pkt(t, c, SYN, opts=syn_options(self.net.mss, r.u32()))
        t2 = t + self._delay(not c)
        if refuse:
            self.pkt(t2, not c, RST | ACK)
            return t2
        self.pkt(t2, not c, SYN | ACK, opts=syn_options(self.net.mss, r.u32()))
        t3 = t2 + self._delay(c)
        self.pkt(t3, c, ACK)
        self.open = True
        return t3

    def send(self, t: float, from_dev: bool, data: bytes, kbps: float | None = None) -> float:
        """Send ``data`` in MSS segments (PSH on the last), the receiver ACKing every second one."""
        t = max(t, self.t)
        cfg = self.net.cfg
        r = self.net.rnd
        wan_sender = not from_dev and not self.lan and self.info.peer.wan
        mss = self.net.wan_mss if wan_sender else self.net.mss
        if kbps is None:
            kbps = cfg.uplink_kbps if from_dev else cfg.downlink_kbps
        gap = mss * 8.0 / (kbps * 1000.0)
        n = len(data)
        last = t
        for k, off in enumerate(range(0, n, mss), start=1):
            chunk = data[off : off + mss]
            end = off + mss >= n
            seq0 = self.seq[from_dev]
            self.pkt(t, from_dev, ACK | (PSH if end else 0), chunk)
            if r.u() < cfg.retransmit_prob:  # lost on the far side: same bytes again after RTO
                self.pkt(t + r.span(cfg.rto_ms) / 1000.0, from_dev, ACK, chunk, seq=seq0)
            if k % 2 == 0 or end:
                ta = t + self._delay(not from_dev)
                self.pkt(ta, not from_dev, ACK)
                last = max(last, ta)
            last = max(last, t)
            t += gap * r.uniform(0.8, 1.25)
        if not from_dev and r.u() < cfg.window_update_prob:  # device's buffer drained: new window
            self.win[True] = min(65535, self.win[True] + 2920)
            last += r.uniform(0.001, 0.05)
            self.pkt(last, True, ACK)
        return max(last, self.t)

    def exchange(self, t: float, out: bytes, back: bytes, think: float = 0.0) -> float:
        """Device sends ``out``, peer answers ``back`` (request/response)."""
        t = self.send(t, True, out) if out else t
        if back:
            t = self.send(t + self._delay(False) + think, False, back)
        return t

    def probe(self, t: float, from_dev: bool) -> float:
        """A TCP keep-alive: an empty segment one byte behind (seq - 1), answered by an ACK."""
        t = max(t, self.t)
        self.pkt(t, from_dev, ACK, seq=(self.seq[from_dev] - 1) & 0xFFFFFFFF)
        t2 = t + self._delay(not from_dev)
        self.pkt(t2, not from_dev, ACK)
        return t2

    def close(self, t: float, dev_first: bool, rst: bool = False) -> float:
        """FIN handshake (FIN, FIN/ACK, ACK) or an abortive RST from one side."""
        t = max(t, self.t)
        self.open = False
        if rst:
            self.pkt(t, dev_first, RST | ACK)
            return t
        self.pkt(t, dev_first, FIN | ACK)
        t2 = t + self._delay(not dev_first)
        self.pkt(t2, not dev_first, FIN | ACK)
        t3 = t2 + self._delay(dev_first)
        self.pkt(t3, dev_first, ACK)
        return t3


# -- application payloads ------------------------------------------------------------------


TLS_MINOR = {"1.0": 1, "1.2": 3}  # record-layer version byte after 0x03


def tls_records(
    rnd: Rand, n: int, content_type: int = 0x17, record_max: int = 16384, minor: int = 3
) -> bytes:
    """``n`` bytes of TLS records (5-byte header + opaque ciphertext), last one shortened;
    ``minor`` 3 = TLS 1.2, 1 = TLS 1.0 (what the D-Link and TP-Link firmwares send)."""
    parts = []
    while n > 0:
        body = min(record_max, max(n - 5, 1))
        parts.append(bytes((content_type, 3, minor)) + body.to_bytes(2, "big") + rnd.payload(body))
        n -= body + 5
    return b"".join(parts)


def tls_client_hello(rnd: Rand, n: int, hostname: str, minor: int = 3) -> bytes:
    """A ClientHello-shaped record of exactly ``n`` bytes: handshake header, client version,
    random, SNI, then opaque bytes standing for the cipher list and extensions."""
    sni = hostname.encode()
    head = b"\x01" + (n - 9).to_bytes(3, "big") + bytes((3, minor)) + rnd.payload(32) + b"\x00"
    body = head + b"\x00\x00" + len(sni).to_bytes(2, "big") + sni
    body += rnd.payload(max(0, n - 5 - len(body)))
    return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body


def dns_query(txid: int, name: str) -> bytes:
    """A standard recursive A query."""
    q = b"".join(len(p).to_bytes(1, "big") + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + q + b"\x00\x01\x00\x01"


def dns_response(txid: int, name: str, ips: list[str], ttl: int) -> bytes:
    """The answer to ``dns_query``: A records with compression pointers to the question."""
    q = dns_query(txid, name)[12:]
    ans = b"".join(
        b"\xc0\x0c\x00\x01\x00\x01" + ttl.to_bytes(4, "big") + b"\x00\x04" + socket.inet_aton(ip)
        for ip in ips
    )
    return struct.pack("!HHHHHH", txid, 0x8180, 1, len(ips), 0, 0) + q + ans


NTP_EPOCH = 2208988800


def ntp_packet(t: float, mode: int, rnd: Rand) -> bytes:
    """A 48-byte NTPv4 client (mode 3) or server (mode 4) packet stamped with ``t``."""
    secs = int(t) + NTP_EPOCH
    frac = int((t % 1.0) * 4294967296.0) & 0xFFFFFFFF
    stamp = secs.to_bytes(4, "big") + frac.to_bytes(4, "big")
    if mode == 3:
        return b"\x23" + b"\x00" * 39 + stamp
    ref = b"\x47\x50\x53\x00"  # "GPS"
    return (
        b"\x24\x01\x00\xe9" + b"\x00\x00\x00\x10" + b"\x00\x00\x00\x20" + ref
        + stamp + rnd.payload(8) + stamp + stamp
    )  # fmt: skip


def kasa_xor(data: bytes) -> bytes:
    """TP-Link Kasa 'autokey' obfuscation: each byte XORed with the previous ciphertext byte."""
    key = 171
    out = bytearray(len(data))
    for i, b in enumerate(data):
        key ^= b
        out[i] = key
    return bytes(out)


def kasa_tcp(obj: dict) -> bytes:
    """Kasa TCP/9999 message: 4-byte big-endian length, then the obfuscated JSON."""
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return len(raw).to_bytes(4, "big") + kasa_xor(raw)


def kasa_udp(obj: dict) -> bytes:
    """Kasa UDP/9999 discovery message: obfuscated JSON without length prefix."""
    return kasa_xor(json.dumps(obj, separators=(",", ":")).encode())


class PcapWriter:
    """Buffered classic-pcap writer (microsecond timestamps, Ethernet)."""

    def __init__(self, path, snaplen: int = 65535) -> None:
        self.fh = open(path, "wb", buffering=1 << 22)  # noqa: SIM115 - closed by close()
        self.fh.write(
            PCAP_MAGIC_US + struct.pack("<HHiIII", 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)
        )
        self.snaplen = snaplen
        self.packets = 0
        self.bytes = 0

    def write_records(self, recs: list) -> None:
        """Write (ts_us, serial, frame, ...) records, already in time order."""
        pack = _REC.pack
        snap = self.snaplen
        parts = []
        for rec in recs:
            ts, frame = rec[0], rec[2]
            n = len(frame)
            cap = frame if n <= snap else frame[:snap]
            parts.append(pack(ts // 1_000_000, ts % 1_000_000, len(cap), n))
            parts.append(cap)
            self.bytes += n
        self.packets += len(recs)
        self.fh.write(b"".join(parts))

    def close(self) -> None:
        """Flush and close the file."""
        self.fh.close()
