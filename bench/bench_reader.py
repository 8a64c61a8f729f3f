"""Benchmark the capture reader alone against `cat` and a scapy RawPcapReader+struct baseline.

Runs two captures: the plain one (classic pcap, Ethernet, 5 % IPv6) and the full-generality one
(pcapng, 802.1Q, 50 % IPv6, 1 % out-of-order timestamps), and the process start-to-end time of a
fresh interpreter reading the plain one with a cold numba cache (compile) and a warm one.

.venv/bin/python bench/bench_reader.py [--packets 2000000] [--baseline-packets 300000]
    [--repeat 2] [--no-startup]
"""

from __future__ import annotations

import argparse
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_capture import generate_capture  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
ROOT = Path(__file__).resolve().parents[1]


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


def capture(packets: int, full: bool) -> Path:
    """The cached benchmark capture (generated on first use)."""
    path = OUT / (f"reader_{packets}_full.pcapng" if full else f"reader_{packets}.pcap")
    if not path.exists():
        t = time.perf_counter()
        if full:
            generate_capture(path, packets, pcapng=True, vlan=True, ipv6=0.5, out_of_order=0.01)
        else:
            generate_capture(path, packets)
        print(f"generated {path} in {time.perf_counter() - t:.1f} s")
    return path


def bench_capture(label: str, path: Path, repeat: int, baseline_packets: int) -> float:
    """Print cat / reader / scapy for one capture; return the reader's packets/s."""
    size = path.stat().st_size
    print(f"\n== {label}: {path.name}, {size / 1e6:.0f} MB")
    t = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    dt = time.perf_counter() - t
    print(f"cat:      {dt:6.2f} s  {size / dt / 1e6:8.0f} MB/s")

    reader_run(path)  # warm-up: numba cache load / compile is measured separately (startup)
    best = None
    for _ in range(max(1, repeat)):
        read, kept, dt, anon = reader_run(path)
        if best is None or dt < best[2]:
            best = (read, kept, dt, anon)
    read, kept, dt, anon = best
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reader_pps = read / dt
    print(
        f"reader:   {dt:6.2f} s  {reader_pps / 1e6:8.2f} M packets/s  ({kept:,} kept of {read:,}; "
        f"{size / dt / 1e6:.0f} MB/s)"
    )
    print(f"          peak RSS {rss / 1024:.0f} MB, peak private (RssAnon) {anon / 1024:.0f} MB")

    n, dt = scapy_baseline(path, baseline_packets or None)
    base_pps = n / dt
    print(f"scapy:    {dt:6.2f} s  {base_pps / 1e6:8.2f} M packets/s  ({n:,} packets)")
    print(f"ratio reader/scapy: {reader_pps / base_pps:.1f}x")
    return reader_pps


def startup(path: Path) -> None:
    """Process start-to-end for a fresh interpreter: cold numba cache (compiles), then warm."""
    code = (
        "import sys; from iotwatch.flowmeter.packets import ReadStats;"
        "from iotwatch.flowmeter.reader import read_packets; s = ReadStats();"
        "[None for _ in read_packets([sys.argv[1]], s)]"
    )
    with tempfile.TemporaryDirectory() as cache:
        # A private numba cache dir: cold without touching the shared __pycache__.
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])
        )
        print(f"\n== process start-to-end, {path.name}")
        for label in ("cold (compile)", "warm (cached)", "warm (cached)"):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True)
            print(f"{label:15s} {time.perf_counter() - t:6.2f} s")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import numba"], env=env, check=True)
        print(f"{'import numba':15s} {time.perf_counter() - t:6.2f} s  (interpreter + import only)")


def main(argv: list[str] | None = None) -> None:
    """Generate the captures (unless cached) and print the timings."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--baseline-packets", type=int, default=300_000, help="0: the whole file")
    ap.add_argument("--repeat", type=int, default=2, help="reader runs (best is reported)")
    ap.add_argument("--no-startup", action="store_true", help="skip the cold/warm process runs")
    a = ap.parse_args(argv)
    plain = capture(a.packets, full=False)
    full = capture(a.packets, full=True)
    pps_plain = bench_capture("plain", plain, a.repeat, a.baseline_packets)
    pps_full = bench_capture("full generality", full, a.repeat, a.baseline_packets)
    print(f"\nfull generality costs {100 * (pps_plain / pps_full - 1):+.0f} % time vs plain")
    if not a.no_startup:
        startup(plain)


if __name__ == "__main__":
    main()
