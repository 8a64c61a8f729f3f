"""Benchmark the capture reader alone against `cat` and a scapy RawPcapReader+struct baseline.

.venv/bin/python bench/bench_reader.py [--packets 2000000] [--pcapng] [--vlan] [--ipv6 0.05]
    [--baseline-packets N] [--keep]
"""

from __future__ import annotations

import argparse
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_capture import generate_capture  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def _rss_anon_kb() -> int:
    """Current private (anonymous) resident memory, from /proc (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def scapy_baseline(path: Path, limit: int | None) -> tuple[int, float]:
    """The naive reader: scapy's RawPcapReader plus a struct walk of Ethernet/IP/TCP headers."""
    from scapy.utils import RawPcapReader

    eth = struct.Struct("!H")
    ip4 = struct.Struct("!BBHHHBBH4s4s")
    ports = struct.Struct("!HH")
    n = 0
    t0 = time.perf_counter()
    for data, _meta in RawPcapReader(str(path)):
        n += 1
        et = eth.unpack_from(data, 12)[0]
        off = 14
        if et == 0x8100:
            et = eth.unpack_from(data, 16)[0]
            off = 18
        if et == 0x0800:
            v, _, tot, _, _, _, proto, _, src, dst = ip4.unpack_from(data, off)
            if proto in (6, 17):
                ports.unpack_from(data, off + (v & 15) * 4)
        if limit and n >= limit:
            break
    return n, time.perf_counter() - t0


def reader_run(path: Path) -> tuple[int, int, float, int]:
    """Time read_packets over the whole file; also track peak private memory per batch."""
    from iotwatch.flowmeter.packets import ReadStats
    from iotwatch.flowmeter.reader import read_packets

    stats = ReadStats()
    peak_anon = 0
    t0 = time.perf_counter()
    for _batch in read_packets([path], stats):
        peak_anon = max(peak_anon, _rss_anon_kb())
    dt = time.perf_counter() - t0
    return stats.packets_read, stats.packets_kept, dt, peak_anon


def main(argv: list[str] | None = None) -> None:
    """Generate a capture (unless cached) and print the three timings."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--pcapng", action="store_true")
    ap.add_argument("--vlan", action="store_true")
    ap.add_argument("--ipv6", type=float, default=0.05)
    ap.add_argument("--baseline-packets", type=int, default=0, help="0: the whole file")
    ap.add_argument("--repeat", type=int, default=2, help="reader runs (best is reported)")
    a = ap.parse_args(argv)
    suffix = ".pcapng" if a.pcapng else ".pcap"
    name = f"bench_{a.packets}{'_vlan' if a.vlan else ''}_v6{a.ipv6}{suffix}"
    path = OUT / name
    if not path.exists():
        t = time.perf_counter()
        generate_capture(path, a.packets, pcapng=a.pcapng, vlan=a.vlan, ipv6=a.ipv6)
        print(f"generated {path} in {time.perf_counter() - t:.1f} s")
    size = path.stat().st_size
    print(f"capture: {path.name}, {a.packets:,} packets, {size / 1e6:.0f} MB")

    t = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    dt = time.perf_counter() - t
    print(f"cat:      {dt:6.2f} s  {size / dt / 1e6:8.0f} MB/s")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = None
    for _ in range(max(1, a.repeat)):
        read, kept, dt, anon = reader_run(path)
        if best is None or dt < best[2]:
            best = (read, kept, dt, anon)
    read, kept, dt, anon = best
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reader_pps = read / dt
    print(
        f"reader:   {dt:6.2f} s  {reader_pps / 1e6:8.2f} M packets/s  ({kept:,} kept of {read:,}; "
        f"{size / dt / 1e6:.0f} MB/s)"
    )
    print(
        f"          peak RSS {rss_after / 1024:.0f} MB (before: {rss_before / 1024:.0f} MB), peak private {anon / 1024:.0f} MB"
    )

    n, dt = scapy_baseline(path, a.baseline_packets or None)
    base_pps = n / dt
    print(f"scapy:    {dt:6.2f} s  {base_pps / 1e6:8.2f} M packets/s  ({n:,} packets)")
    print(f"ratio reader/scapy: {reader_pps / base_pps:.1f}x")


if __name__ == "__main__":
    main()
