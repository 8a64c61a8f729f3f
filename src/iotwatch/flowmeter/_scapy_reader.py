"""Slow reference reader built on scapy: yields the same ``PacketBatch`` as the real reader.

Used by tests as an independent decoder; one Python dissection per packet, so
only for small captures.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from iotwatch.errors import InputError
from iotwatch.flowmeter.packets import PacketBatch, ReadIssue, ReadStats

_COLS = {
    "ts_ns": np.int64, "frame_len": np.int64, "cap_len": np.int64, "ip_len": np.int64,
    "payload_len": np.int64, "ip_version": np.uint8, "proto": np.uint8,
    "src_ip_hi": np.uint64, "src_ip_lo": np.uint64, "dst_ip_hi": np.uint64,
    "dst_ip_lo": np.uint64, "sport": np.uint16, "dport": np.uint16, "tcp_flags": np.uint8,
    "vlan": np.int32, "src_mac": np.uint64, "dst_mac": np.uint64, "fragment": np.bool_,
    "iface": np.int32, "file_index": np.int32, "offset": np.int64,
}  # fmt: skip


def _ip_words(addr: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return 0, 0xFFFF_0000_0000 | int(ip)
    v = int(ip)
    return v >> 64, v & 0xFFFF_FFFF_FFFF_FFFF


def _mac(text: str | None) -> int:
    return int(text.replace(":", ""), 16) if text else 0


def _decode(pkt, rows: dict[str, list]) -> bool:  # noqa: ANN001
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
    from scapy.layers.l2 import Dot1Q, Ether

    ip = pkt.getlayer(IP)
    ip6 = pkt.getlayer(IPv6)
    # The outermost IP header wins (tunnels are not decoded).
    if ip is not None and ip6 is not None:
        depth = {id(layer): i for i, layer in enumerate(pkt.iterpayloads())}
        if depth[id(ip6)] < depth[id(ip)]:
            ip = None
        else:
            ip6 = None
    if ip is None and ip6 is None:
        return False
    frag = False
    first = True
    if ip is not None:
        version, proto, ip_len = 4, ip.proto, ip.len
        hdr = ip.ihl * 4
        src, dst = ip.src, ip.dst
        frag = bool(ip.flags.MF) or ip.frag > 0
        first = ip.frag == 0
        l4 = ip.payload
    else:
        version, ip_len = 6, 40 + ip6.plen
        src, dst = ip6.src, ip6.dst
        hdr = 40
        layer = ip6.payload
        proto = ip6.nh
        while layer is not None and layer.__class__.__name__.startswith("IPv6ExtHdr"):
            hdr += len(layer) - len(layer.payload)
            if isinstance(layer, IPv6ExtHdrFragment):
                frag = True
                first = layer.offset == 0
            proto = layer.nh
            layer = layer.payload
        l4 = layer
    sport = dport = flags = 0
    l4hdr = 0
    if first and isinstance(l4, TCP):
        sport, dport, flags, l4hdr = l4.sport, l4.dport, int(l4.flags) & 0xFF, l4.dataofs * 4
    elif first and isinstance(l4, UDP):
        sport, dport, l4hdr = l4.sport, l4.dport, 8
    vlan = -1
    for layer in pkt.iterpayloads():
        if isinstance(layer, Dot1Q):
            vlan = layer.vlan
    eth = pkt.getlayer(Ether)
    sh, sl = _ip_words(src)
    dh, dl = _ip_words(dst)
    wire = pkt.wirelen if pkt.wirelen is not None else len(bytes(pkt))
    vals = {
        "ts_ns": int(pkt.time * 1_000_000_000), "frame_len": wire, "cap_len": getattr(pkt, "caplen_", len(bytes(pkt))),
        "ip_len": ip_len, "payload_len": max(ip_len - hdr - l4hdr, 0), "ip_version": version,
        "proto": proto, "src_ip_hi": sh, "src_ip_lo": sl, "dst_ip_hi": dh, "dst_ip_lo": dl,
        "sport": sport, "dport": dport, "tcp_flags": flags, "vlan": vlan,
        "src_mac": _mac(eth.src) if eth is not None else 0,
        "dst_mac": _mac(eth.dst) if eth is not None else 0,
        "fragment": frag, "iface": 0, "file_index": 0, "offset": 0,
    }  # fmt: skip
    for k, v in vals.items():
        rows[k].append(v)
    return True


def _ppp(pkt):  # noqa: ANN001, ANN202
    """Link type 9 (PPP, possibly HDLC-framed): scapy leaves it raw; decode the IP inside."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    data = bytes(pkt)
    if data[:2] == b"\xff\x03":
        data = data[2:]
    proto = int.from_bytes(data[:2], "big")
    cls = {0x0021: IP, 0x0057: IPv6, 0x0800: IP, 0x86DD: IPv6}.get(proto)
    if cls is None:
        return pkt
    out = cls(data[2:])
    out.time, out.wirelen = pkt.time, pkt.wirelen
    out.caplen_ = len(bytes(pkt))
    return out


def _batch(rows: dict[str, list]) -> PacketBatch:
    out = {}
    for k, t in _COLS.items():
        try:
            out[k] = np.asarray(rows[k], dtype=t)
        except OverflowError:
            raise OverflowError(k) from None
    return PacketBatch(**out)


def read_packets_scapy(
    paths: Sequence[str | Path],
    stats: ReadStats,
    chunk_packets: int = 262_144,
    progress: object = None,
) -> Iterator[PacketBatch]:
    """Decode captures with scapy into PacketBatch chunks (slow reference implementation)."""
    import scapy.layers.all  # noqa: F401  (layer bindings must exist before the first dissection)
    from scapy.error import Scapy_Exception
    from scapy.utils import PcapReader

    for index, path in enumerate(paths):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such capture file")
        try:
            reader = PcapReader(str(path))
        except (Scapy_Exception, OSError, EOFError) as exc:
            raise InputError(f"{path}: not a capture file ({exc})") from None
        stats.files += 1
        rows: dict[str, list] = {k: [] for k in _COLS}
        with reader:
            while True:
                try:
                    pkt = reader.read_packet(size=1 << 20)
                except EOFError:
                    break
                except Exception as exc:  # scapy raises many types on damage
                    stats.issues.append(ReadIssue(str(path), -1, f"unreadable record ({exc})"))
                    break
                stats.packets_read += 1
                stats.bytes_read += len(bytes(pkt))
                try:
                    if reader.linktype == 9 and pkt.__class__.__name__ == "Raw":
                        pkt = _ppp(pkt)
                    ok = _decode(pkt, rows)
                except Exception:  # a malformed packet is skipped, as the real reader does
                    ok = False
                if not ok:
                    stats.skipped["not_ip"] += 1
                    continue
                rows["file_index"][-1] = index
                stats.packets_kept += 1
                if len(rows["ts_ns"]) >= chunk_packets:
                    yield _batch(rows)
                    rows = {k: [] for k in _COLS}
        if rows["ts_ns"]:
            yield _batch(rows)
