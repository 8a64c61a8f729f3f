"""Fast synthetic capture generator for benchmarks (scapy builds a few templates; numpy copies them).

.venv/bin/python bench/gen_capture.py bench/out/bench.pcap --packets 2000000 [--pcapng]
    [--vlan] [--ipv6 0.5] [--out-of-order 0.01]
"""

from __future__ import annotations

import argparse
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK = 65_536  # packets built per numpy pass (keeps the generator's memory small)
TS0_US = 1_700_000_000_000_000


@dataclass
class _Template:
    frame: np.ndarray  # uint8 frame bytes
    src: int  # offset of the (last 4 bytes of the) source address, -1 if none
    dst: int
    l4: int  # offset of the transport header, -1 if no ports


def _templates(vlan: bool, v6: bool) -> tuple[list[_Template], np.ndarray]:
    """A handful of frames (TCP/UDP of several sizes, ARP) and the probability of each."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.packet import Raw

    def eth():
        e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        return e / Dot1Q(vlan=42) if vlan else e

    l3 = 18 if vlan else 14
    out: list[_Template] = []
    weights: list[float] = []
    for ipv6 in (False, True):
        share = (v6 if ipv6 else 1.0 - v6) * 0.99
        if share <= 0:
            continue
        ip = (
            IPv6(src="2001:db8::1", dst="2001:db8::2")
            if ipv6
            else IP(src="10.0.0.1", dst="10.0.0.2")
        )
        src, dst, l4 = (l3 + 20, l3 + 36, l3 + 40) if ipv6 else (l3 + 12, l3 + 16, l3 + 20)
        # 80% TCP (pure ACKs, small and full-size segments), 20% UDP.
        for proto, size, w in (
            ("tcp", 0, 0.35),
            ("tcp", 60, 0.2),
            ("tcp", 300, 0.1),
            ("tcp", 1200, 0.15),
            ("udp", 40, 0.12),
            ("udp", 200, 0.08),
        ):
            l4h = (
                TCP(sport=1, dport=2, flags="PA" if size else "A")
                if proto == "tcp"
                else UDP(sport=1, dport=2)
            )
            pkt = eth() / ip / l4h / Raw(b"\x00" * size)
            out.append(_Template(np.frombuffer(bytes(pkt), np.uint8), src, dst, l4))
            weights.append(share * w)
    arp = eth() / ARP(psrc="10.0.0.1", pdst="10.0.0.2")
    out.append(_Template(np.frombuffer(bytes(arp), np.uint8), -1, -1, -1))
    weights.append(0.01)
    p = np.array(weights)
    return out, p / p.sum()


def _put_u32be(buf: np.ndarray, pos: np.ndarray, val: np.ndarray) -> None:
    v = val.astype(np.uint32)
    for k in range(4):
        buf[pos + k] = (v >> np.uint32(24 - 8 * k)) & np.uint32(0xFF)


def _put_u16be(buf: np.ndarray, pos: np.ndarray, val: np.ndarray) -> None:
    v = val.astype(np.uint32)
    buf[pos] = (v >> np.uint32(8)) & np.uint32(0xFF)
    buf[pos + 1] = v & np.uint32(0xFF)


def generate_capture(
    path: Path | str,
    packets: int = 2_000_000,
    flows: int = 50_000,
    pcapng: bool = False,
    vlan: bool = False,
    ipv6: float = 0.05,
    out_of_order: float = 0.0,
    seed: int = 0,
) -> Path:
    """Write a synthetic Ethernet capture of ``packets`` frames over ``flows`` flows; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    temps, probs = _templates(vlan, ipv6)
    lens = np.array([len(t.frame) for t in temps], np.int64)
    # Each flow has fixed endpoints; packets pick a flow and a direction.
    f_src = rng.integers(0x0A000000, 0x0AFFFFFF, flows, dtype=np.int64)
    f_dst = rng.integers(0xC0A80000, 0xC0A8FFFF, flows, dtype=np.int64)
    f_sport = rng.integers(1024, 65535, flows, dtype=np.int64)
    f_dport = rng.choice(np.array([80, 443, 53, 8883, 1883, 123]), flows)
    rec_hdr = 28 + 4 if pcapng else 16
    ts_us = TS0_US
    with open(path, "wb") as fh:
        if pcapng:
            fh.write(struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28))
            fh.write(struct.pack("<IIHHII", 1, 20, 1, 0, 262144, 20))
        else:
            fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for first in range(0, packets, BLOCK):
            n = min(BLOCK, packets - first)
            t = rng.choice(len(temps), n, p=probs)
            flen = lens[t]
            body = (flen + 3) & ~3 if pcapng else flen
            size = rec_hdr + body
            off = np.zeros(n, np.int64)
            np.cumsum(size[:-1], out=off[1:])
            buf = np.zeros(int(size.sum()), np.uint8)
            dstart = off + (28 if pcapng else 16)
            gaps = rng.exponential(20.0, n).astype(np.int64)
            ts = ts_us + np.cumsum(gaps)
            ts_us = int(ts[-1])
            if out_of_order > 0:
                swap = np.flatnonzero(rng.random(n - 1) < out_of_order)
                ts[swap], ts[swap + 1] = ts[swap + 1], ts[swap].copy()
            hdr = np.zeros((n, 7 if pcapng else 4), np.uint32)
            if pcapng:
                hdr[:, 0] = 6
                hdr[:, 1] = size
                hdr[:, 2] = 0
                hdr[:, 3] = ts >> 32
                hdr[:, 4] = ts & 0xFFFFFFFF
                hdr[:, 5] = flen
                hdr[:, 6] = flen
            else:
                hdr[:, 0] = ts // 1_000_000
                hdr[:, 1] = ts % 1_000_000
                hdr[:, 2] = flen
                hdr[:, 3] = flen
            hb = hdr.view(np.uint8).reshape(n, -1)
            cols = np.arange(hb.shape[1])
            buf[off[:, None] + cols] = hb
            if pcapng:
                buf[(off + size - 4)[:, None] + np.arange(4)] = (
                    size.astype("<u4").view(np.uint8).reshape(n, 4)
                )
            fl = rng.integers(0, flows, n)
            rev = rng.random(n) < 0.5
            for k, tp in enumerate(temps):
                idx = np.flatnonzero(t == k)
                if len(idx) == 0:
                    continue
                L = len(tp.frame)
                buf[dstart[idx][:, None] + np.arange(L)] = tp.frame
                if tp.src < 0:
                    continue
                a, b = f_src[fl[idx]], f_dst[fl[idx]]
                pa, pb = f_sport[fl[idx]], f_dport[fl[idx]]
                r = rev[idx]
                _put_u32be(buf, dstart[idx] + tp.src, np.where(r, b, a))
                _put_u32be(buf, dstart[idx] + tp.dst, np.where(r, a, b))
                _put_u16be(buf, dstart[idx] + tp.l4, np.where(r, pb, pa))
                _put_u16be(buf, dstart[idx] + tp.l4 + 2, np.where(r, pa, pb))
            fh.write(buf.tobytes())
    return path


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--flows", type=int, default=50_000)
    ap.add_argument("--pcapng", action="store_true")
    ap.add_argument("--vlan", action="store_true")
    ap.add_argument("--ipv6", type=float, default=0.05, help="share of IPv6 packets")
    ap.add_argument("--out-of-order", type=float, default=0.0, help="share of swapped timestamps")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    p = generate_capture(
        a.path, a.packets, a.flows, a.pcapng, a.vlan, a.ipv6, a.out_of_order, a.seed
    )
    print(f"{p}: {a.packets} packets, {p.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
