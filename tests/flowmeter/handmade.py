"""Hand-made captures for the flow meter tests: scapy-built packets with exact timestamps."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

T0 = 1_700_000_000.0
DEV_IP, DEV_MAC = "192.168.1.10", "02:00:00:00:00:10"
SRV_IP, SRV_MAC = "93.184.216.34", "02:00:00:00:00:01"
DEV6, SRV6 = "2001:db8::10", "2001:db8:1::1"


def tcp(
    t: float,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: str,
    payload: int = 0,
    vlan: int | None = None,
    v6: bool = False,
) -> Packet:
    """One Ethernet/[VLAN]/IP/TCP packet at time ``t`` (MACs follow the IPs)."""
    smac = DEV_MAC if src in (DEV_IP, DEV6) else SRV_MAC
    dmac = SRV_MAC if smac == DEV_MAC else DEV_MAC
    eth = Ether(src=smac, dst=dmac)
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    pkt = eth / ip / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=1)
    if payload:
        pkt = pkt / Raw(b"x" * payload)
    pkt.time = t
    return pkt


def udp(t: float, src: str, dst: str, sport: int, dport: int, payload: int = 10) -> Packet:
    """One Ethernet/IP/UDP packet at time ``t``."""
    smac = DEV_MAC if src == DEV_IP else SRV_MAC
    dmac = SRV_MAC if smac == DEV_MAC else DEV_MAC
    pkt = Ether(src=smac, dst=dmac) / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport)
    pkt = pkt / Raw(b"u" * payload)
    pkt.time = t
    return pkt


def connection(
    t: float,
    sport: int = 40000,
    dport: int = 443,
    close: str = "fin",
    client: str = DEV_IP,
    server: str = SRV_IP,
    v6: bool = False,
) -> list[Packet]:
    """A TCP connection: handshake, 100 B up, 200 B down, then FIN both ways + ACK, or RST."""
    c, s = (client, server)
    a = (c, s, sport, dport)
    b = (s, c, dport, sport)
    pk = [
        tcp(t, *a, "S", v6=v6),
        tcp(t + 0.25, *b, "SA", v6=v6),
        tcp(t + 0.5, *a, "A", v6=v6),
        tcp(t + 1.0, *a, "PA", 100, v6=v6),
        tcp(t + 1.5, *b, "PA", 200, v6=v6),
    ]
    if close == "fin":
        pk += [tcp(t + 2.0, *a, "FA", v6=v6), tcp(t + 2.5, *b, "FA", v6=v6)]
        pk += [tcp(t + 3.0, *a, "A", v6=v6)]
    elif close == "rst":
        pk += [tcp(t + 2.0, *b, "R", v6=v6)]
    return pk


def write_pcap(path: Path, packets: Sequence[Packet]) -> Path:
    """Write packets (in the given order) as a classic pcap with µs timestamps."""
    wrpcap(str(path), list(packets))
    return path


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def write_pcapng_two_ifaces(path: Path, packets: Sequence[tuple[int, Packet]]) -> Path:
    """pcapng with iface 0 = Ethernet (µs) and iface 1 = raw IP (ns); items are (iface, packet)."""
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb0 = _block(1, struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HHB3x", 9, 1, 6) + b"\0" * 4)
    idb1 = _block(
        1, struct.pack("<HHI", 101, 0, 65535) + struct.pack("<HHB3x", 9, 1, 9) + b"\0" * 4
    )
    out = [shb, idb0, idb1]
    for iface, pkt in packets:
        if iface == 0:
            data, ts = bytes(pkt), round(float(pkt.time) * 1_000_000)
        else:
            layer = pkt.getlayer(IP) or pkt.getlayer(IPv6)
            data, ts = bytes(layer), round(float(pkt.time) * 1_000_000_000)
        body = struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
        out.append(_block(6, body + data))
    path.write_bytes(b"".join(out))
    return path


def tpacket3_block(
    frames: Sequence[tuple[int, bytes] | tuple[int, bytes, int]], size: int = 1 << 16
) -> tuple[bytearray, int, int]:
    """A ``TPACKET_V3`` ring block holding ``frames`` as the kernel lays them out (host byte
    order: block header, then per frame a ``tpacket3_hdr``, the frame at ``tp_mac``, each entry
    16-byte aligned and chained by ``tp_next_offset``): (block, frames, first frame's offset)."""
    block = bytearray(size)
    first = pos = 48
    for k, item in enumerate(frames):
        ts, frame = item[0], item[1]
        wire = item[2] if len(item) > 2 else len(frame)
        mac = 82  # TPACKET_ALIGN(sizeof tpacket3_hdr + sockaddr_ll) + 2 (IP header aligned)
        nxt = 0 if k == len(frames) - 1 else (mac + len(frame) + 15) // 16 * 16
        struct.pack_into("=IIIIIIHH", block, pos, nxt, ts // 10**9, ts % 10**9, len(frame), wire,
                         1, mac, mac + 14)  # fmt: skip
        block[pos + mac : pos + mac + len(frame)] = frame
        pos += nxt
    struct.pack_into("=IIIII", block, 0, 3, 0, 1, len(frames), first)  # version, priv, status...
    return block, len(frames), first
