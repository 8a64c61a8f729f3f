"""Benchmark the whole `iotwatch flows` process against a naive scapy baseline (and NFStream).

.venv/bin/python bench/bench_flows.py [--packets 2000000] [--flows 50000]
    [--baseline-packets N] [--repeat 5] [--multi 5] [--keep] [--compare SRC] [--quick]

Runs, side by side: a naive scapy flow meter (RawPcapReader + struct decoding + a dict of flows
with the first-N features: the default profile's job, on the first ``--baseline-packets``
packets, as packets/s) and the leanest scapy count (packets/bytes per key), NFStream when
importable, and `iotwatch flows` as a subprocess (interpreter start included) on the default
capture and on the full-generality variant (pcapng, VLAN, 50 % IPv6, 1 % out-of-order
timestamps), ``--repeat`` times each, interleaved (best and median). With ahead-of-time
kernels (make setup) the JIT fallback is run too, cold (empty numba cache: every kernel
compiles) and warm. Then one run over ``--multi`` copies of the capture (memory must not follow
the number of captures). Prints packets/s, ratios to the scapy baseline, the cost of generality
and the subprocess's peak resident and private (anonymous) memory. Resident memory includes the
pages of the memory-mapped capture (file-backed, reclaimable); private memory is the process's.

``--compare SRC``: also run `iotwatch flows` from another source tree (``PYTHONPATH=SRC``, e.g.
``/tmp/base/src`` of ``git worktree add /tmp/base HEAD``, its kernels built there with
``PYTHONPATH=SRC python -m iotwatch.flowmeter.build_aot``), interleaved with this tree's runs,
and print the ratio. ``--quick``: only `iotwatch flows` (no scapy, NFStream or JIT runs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_capture import generate_capture  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parents[1]


def scapy_baseline(
    path: Path, limit: int, n: int = 10, timeout: float = 600.0
) -> tuple[int, float]:
    """The naive flow meter: RawPcapReader records, struct-decoded headers, a dict of flows.

    It does the default profile's job the plain Python way, so the ratio compares like with
    like: Ethernet (+ one VLAN tag), IPv4 and IPv6 (no extension headers), TCP only, the
    direction-free key, packets and bytes per direction, the first ``n`` sizes and timestamps of
    each direction, idle/active timeouts (a flow cut by a timeout is finished and a new one
    starts). No table is built at the end (that cost is left out in the baseline's favour).
    """
    from scapy.utils import RawPcapReader

    unpack_h = struct.Struct("!H").unpack_from
    unpack_hh = struct.Struct("!HH").unpack_from
    t = time.perf_counter()
    flows: dict[tuple, list] = {}
    finished = 0
    c = 0
    for data, meta in RawPcapReader(str(path)):
        c += 1
        if c > limit:
            c -= 1
            break
        ts = meta.sec + meta.usec / 1e6
        off = 14
        etype = unpack_h(data, 12)[0]
        if etype == 0x8100:
            etype = unpack_h(data, 16)[0]
            off = 18
        if etype == 0x0800:
            ihl = (data[off] & 15) * 4
            length, proto = unpack_h(data, off + 2)[0], data[off + 9]
            src, dst = data[off + 12 : off + 16], data[off + 16 : off + 20]
            l4 = off + ihl
        elif etype == 0x86DD:
            length, proto = unpack_h(data, off + 4)[0] + 40, data[off + 6]
            src, dst = data[off + 8 : off + 24], data[off + 24 : off + 40]
            l4 = off + 40
        else:
            continue
        if proto != 6:
            continue
        sport, dport = unpack_hh(data, l4)
        fwd = (src, sport) <= (dst, dport)
        key = (src, sport, dst, dport) if fwd else (dst, dport, src, sport)
        f = flows.get(key)
        if f is not None and (ts - f[1] > timeout or ts - f[0] > timeout):
            finished += 1
            f = None
        if f is None:
            # start, last, packets a->b, b->a, bytes a->b, b->a, sizes/times a->b, b->a
            f = flows[key] = [ts, ts, 0, 0, 0, 0, [], [], [], []]
        f[1] = ts
        d = 0 if fwd else 1
        f[2 + d] += 1
        f[4 + d] += length
        if len(f[6 + d]) < n:
            f[6 + d].append(length)
            f[8 + d].append(ts)
    return c, time.perf_counter() - t


def scapy_counter(path: Path, limit: int) -> tuple[int, float]:
    """The leanest scapy flow count: IPv4 TCP packets and bytes per key, nothing else (an upper
    bound for any scapy-based meter)."""
    from scapy.utils import RawPcapReader

    t = time.perf_counter()
    flows: dict[tuple, list[int]] = {}
    n = 0
    for data, _meta in RawPcapReader(str(path)):
        n += 1
        if n > limit:
            n -= 1
            break
        off = 14
        etype = struct.unpack_from("!H", data, 12)[0]
        if etype == 0x8100:
            etype = struct.unpack_from("!H", data, 16)[0]
            off = 18
        if etype != 0x0800:
            continue
        ihl = (data[off] & 15) * 4
        length, proto = struct.unpack_from("!H", data, off + 2)[0], data[off + 9]
        if proto != 6:
            continue
        src, dst = data[off + 12 : off + 16], data[off + 16 : off + 20]
        sport, dport = struct.unpack_from("!HH", data, off + ihl)
        key = (src, sport, dst, dport) if (src, sport) < (dst, dport) else (dst, dport, src, sport)
        f = flows.get(key)
        if f is None:
            flows[key] = [1, length]
        else:
            f[0] += 1
            f[1] += length
    return n, time.perf_counter() - t


def nfstream_run(path: Path) -> tuple[int, float] | None:
    """NFStream on the capture, or None when the package is absent."""
    try:
        from nfstream import NFStreamer
    except ImportError:
        return None
    t = time.perf_counter()
    df = NFStreamer(source=str(path), n_dissections=0, n_meters=1).to_pandas()
    return int(df["bidirectional_packets"].sum()), time.perf_counter() - t


def _anon_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_cli(
    path: Path | list[Path],
    out: Path,
    cache_dir: Path,
    kernels: str = "auto",
    pythonpath: str | None = None,
) -> tuple[float, int, int, str]:
    """`iotwatch flows` as a subprocess: (seconds, peak RSS kB, peak private kB, summary).

    ``cache_dir`` is the numba cache the process uses (empty: a cold JIT run compiles);
    ``kernels``: IOTWATCH_KERNELS for it; ``pythonpath``: a source tree to run instead.
    """
    paths = path if isinstance(path, list) else [path]
    cmd = [
        sys.executable,
        "-m",
        "iotwatch",
        "flows",
        *map(str, paths),
        "--out",
        str(out),
        "--quiet",
    ]
    cmd = [
        "/usr/bin/time",
        "-f",
        "%M",
        *cmd,
    ]
    t = time.perf_counter()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "IOTWATCH_KERNELS": kernels}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    peak = [0]

    def watch() -> None:
        # the child of /usr/bin/time is the interpreter: sample its private memory
        while proc.poll() is None:
            try:
                kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            except OSError:
                kids = []
            for k in kids:
                peak[0] = max(peak[0], _anon_kb(int(k)))
            time.sleep(0.01)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    _, err = proc.communicate()
    dt = time.perf_counter() - t
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"iotwatch flows failed ({proc.returncode}):\n{err}")
    rss = int(err.strip().splitlines()[-1])
    import pyarrow.parquet as pq

    rows = pq.read_metadata(out).num_rows
    return dt, rss, peak[0], f"{rows} flows"


def main(argv: list[str] | None = None) -> None:
    """Generate the captures, run everything, print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--flows", type=int, default=50_000)
    ap.add_argument("--baseline-packets", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=5, help="warm runs per variant")
    ap.add_argument("--multi", type=int, default=5, help="captures in the multi-capture run")
    ap.add_argument("--keep", action="store_true", help="keep the generated captures")
    ap.add_argument("--compare", metavar="SRC", help="another source tree to time alongside")
    ap.add_argument("--quick", action="store_true", help="only `iotwatch flows` runs")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    # bytecode for the package, as a regular install has (an editable install under
    # PYTHONDONTWRITEBYTECODE=1 would compile iotwatch's modules from source in every run)
    for src in (REPO / "src", *([Path(args.compare)] if args.compare else [])):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True)
    plain = OUT / f"flows_{args.packets}.pcap"
    full = OUT / f"flows_{args.packets}_full.pcapng"
    if not plain.exists():
        generate_capture(plain, args.packets, args.flows)
    if not full.exists():
        generate_capture(full, args.packets, args.flows, pcapng=True, vlan=True, ipv6=0.5,
                         out_of_order=0.01)  # fmt: skip
    n = args.packets
    mb = plain.stat().st_size / 1e6
    print(
        f"capture: {n} packets, {mb:.0f} MB ({plain.name}); full: {full.stat().st_size / 1e6:.0f} MB"
    )

    if args.quick:
        _compare(args, variants=(("default", plain), ("full-generality", full)), n=n)
        if not args.keep:
            plain.unlink()
            full.unlink()
        return
    bn, bt = scapy_baseline(plain, args.baseline_packets)
    base_pps = bn / bt
    print(
        f"naive scapy meter (RawPcapReader + struct, dict of flows with first-N features): "
        f"{bn} packets in {bt:.2f} s = {base_pps / 1e6:.3f} Mpkt/s  <- the baseline of the ratios"
    )
    cn, ct = scapy_counter(plain, args.baseline_packets)
    lean_pps = cn / ct
    print(f"leanest scapy count (IPv4 TCP packets/bytes per key only): {cn / ct / 1e6:.3f} Mpkt/s")
    nf = nfstream_run(plain)
    if nf is None:
        print("nfstream: not installed, skipped")
    else:
        print(f"nfstream: {nf[0]} packets in {nf[1]:.2f} s = {n / nf[1] / 1e6:.3f} Mpkt/s")

    kinds = subprocess.run(
        [sys.executable, "-c", "from iotwatch.flowmeter import _jit; print(_jit.kind())"],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout.strip()  # fmt: skip
    print(f"kernels: {kinds} ({'built by make setup' if kinds == 'aot' else 'JIT: no build'})")
    variants = (("default", plain), ("full-generality", full))
    cache = tempfile.mkdtemp(prefix="numba-cache-")
    runs: dict[tuple[str, str], list] = {}
    for _ in range(max(1, args.repeat)):  # interleaved: machine noise hits both alike
        for label, path in variants:
            run = run_cli(path, OUT / f"{path.stem}.parquet", Path(cache))
            runs.setdefault((label, kinds), []).append(run)
    if kinds == "aot":  # the JIT fallback, for comparison: cold (empty cache), then warm
        jit_cache = tempfile.mkdtemp(prefix="numba-cache-")
        for label, path in variants:
            out = OUT / f"{path.stem}.parquet"
            runs[label, "jit cold"] = [run_cli(path, out, Path(jit_cache), "jit")]
            runs[label, "jit warm"] = [run_cli(path, out, Path(jit_cache), "jit")]
        shutil.rmtree(jit_cache, ignore_errors=True)
    if args.multi > 1:  # memory does not follow the number of captures (merged runs)
        dt, rss, anon, what = run_cli([plain] * args.multi, OUT / "multi.parquet", Path(cache))
        print(
            f"iotwatch flows [{args.multi} x default in one run]: {dt:.2f} s = "
            f"{args.multi * n / dt / 1e6:.2f} Mpkt/s; peak private {anon / 1024:.0f} MB, {what}"
        )
        (OUT / "multi.parquet").unlink(missing_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    if args.compare:
        _compare(args, variants, n)
    results = {}
    for (label, kind), rs in runs.items():
        rs.sort()
        dt, rss, anon, what = rs[0]
        med = rs[len(rs) // 2][0]
        pps, mpps = n / dt, n / med
        results[label, kind] = (pps, mpps)
        spread = f"; median {mpps / 1e6:.2f} Mpkt/s of {len(rs)}" if len(rs) > 1 else ""
        print(
            f"iotwatch flows [{label}, {kind}]: best {dt:.2f} s = {pps / 1e6:.2f} Mpkt/s "
            f"({pps / base_pps:.1f}x scapy meter, {pps / lean_pps:.1f}x lean count){spread}; "
            f"peak RSS {rss / 1024:.0f} MB, peak private {anon / 1024:.0f} MB, {what}"
        )
    (d_best, d_med), (f_best, f_med) = results["default", kinds], results["full-generality", kinds]
    print(
        f"full generality costs {100 * (d_best / f_best - 1):+.0f} % time (best runs), "
        f"{100 * (d_med / f_med - 1):+.0f} % (medians)"
    )
    if not args.keep:
        plain.unlink()
        full.unlink()


def _compare(args: argparse.Namespace, variants: tuple, n: int) -> None:
    """This tree against ``--compare`` (when given), interleaved: best and median per variant."""
    trees = [("this tree", None)] + ([("compared", args.compare)] if args.compare else [])
    for label, src in trees:
        kind = subprocess.run(
            [sys.executable, "-c", "from iotwatch.flowmeter import _jit; print(_jit.kind())"],
            capture_output=True, text=True, check=True, cwd=REPO,
            env={**os.environ, **({"PYTHONPATH": src} if src else {})},
        ).stdout.strip()  # fmt: skip
        print(f"{label}: kernels {kind}" + (f" ({src})" if src else ""))
    cache = tempfile.mkdtemp(prefix="numba-cache-")
    times: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}  # user + system seconds: less noisy on a VM
    for _ in range(max(1, args.repeat)):
        for vlabel, path in variants:
            for label, src in trees:
                before = os.times()
                dt = run_cli(path, OUT / f"{path.stem}.parquet", Path(cache), pythonpath=src)[0]
                after = os.times()
                used = (after.children_user - before.children_user) + (
                    after.children_system - before.children_system
                )
                times.setdefault((vlabel, label), []).append(dt)
                cpu.setdefault((vlabel, label), []).append(used)
    shutil.rmtree(cache, ignore_errors=True)
    for vlabel, _ in variants:
        line = []
        for label, _src in trees:
            ts, cs = sorted(times[vlabel, label]), sorted(cpu[vlabel, label])
            line.append(f"{label} best {ts[0]:.3f} s ({n / ts[0] / 1e6:.2f} Mpkt/s), "
                        f"median {ts[len(ts) // 2]:.3f} s, CPU median {cs[len(cs) // 2]:.3f} s")  # fmt: skip
        if len(trees) == 2:
            a, b = sorted(times[vlabel, trees[0][0]]), sorted(times[vlabel, trees[1][0]])
            ca, cb = sorted(cpu[vlabel, trees[0][0]]), sorted(cpu[vlabel, trees[1][0]])
            line.append(f"this/compared best {a[0] / b[0]:.3f}, "
                        f"median {a[len(a) // 2] / b[len(b) // 2]:.3f}, "
                        f"CPU median {ca[len(ca) // 2] / cb[len(cb) // 2]:.3f}")  # fmt: skip
        print(f"iotwatch flows [{vlabel}, {args.repeat} runs each]: " + "; ".join(line))


if __name__ == "__main__":
    main()
