"""`iotwatch monitor`: the two-step detector on captures or a live interface.

    iotwatch monitor SOURCE --model BUNDLE [--out alerts.jsonl] [--report report.html]
    iotwatch monitor --interface IFACE --model BUNDLE [--duration S] [--idle-exit S]

SOURCE is a capture file or a folder of captures (pcap, pcapng, gzip; each file is metered on
its own, in name order, and the devices' votes carry over from one file to the next). Alerts
are JSON Lines, flushed after every batch (stdout without ``--out``); the summary goes to
stderr at the end, on SIGINT/SIGTERM and after an error (``--summary`` also writes it as
JSON). An error (bad bundle, unreadable capture, missing interface, no permission) is one line
and exit status 2; the alerts written until then stay in their file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import signal
import sys
from pathlib import Path
from typing import IO, Any

from iotwatch.errors import InputError, IotwatchError

REPORT_ALERTS = 5_000  # alerts the HTML report lists at most (the alerts file has them all)


class JsonlSink:
    """Alerts as JSON Lines, flushed after each batch so a reader (or a crash) sees them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is None:
            self.fh: IO[str] = sys.stdout
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.fh = path.open("w", encoding="utf-8")
            except OSError as exc:
                raise InputError(f"{path}: cannot write alerts ({exc.strerror or exc})") from None
        self.written = 0
        self.kept: list[dict[str, Any]] = []  # the first alerts, for the HTML report

    def write(self, alerts: list[dict[str, Any]]) -> None:
        self.fh.write("".join(json.dumps(a, separators=(",", ":")) + "\n" for a in alerts))
        self.fh.flush()
        kept = [a for a in alerts if a.get("kind") != "incident"]
        self.written += len(kept)
        room = REPORT_ALERTS - len(self.kept)
        if room > 0:
            self.kept += kept[:room]

    def close(self) -> None:
        if self.path is not None:
            self.fh.close()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="iotwatch monitor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("source", nargs="?", type=Path, help="capture file or folder of captures")
    ap.add_argument("--interface", "-i", help="live traffic from this network interface")
    ap.add_argument("--model", required=True, type=Path, help="model bundle folder")
    ap.add_argument("--out", type=Path, default=None, help="alerts JSON Lines (default stdout)")
    ap.add_argument("--report", type=Path, default=None, help="HTML report with timelines")
    ap.add_argument("--summary", type=Path, default=None, help="also write the summary as JSON")
    ap.add_argument("--local-net", action="append", default=None, metavar="CIDR",
                    help="the monitored network (repeatable; default: the bundle's, else "
                         "private ranges)")  # fmt: skip
    ap.add_argument("--inventory", type=Path, default=None,
                    help="CSV mac,ip,device_type,name: which addresses are devices (orients "
                         "flows as in training; the types are never used to judge)")  # fmt: skip
    ap.add_argument("--duration", type=float, default=None, help="live: stop after S seconds")
    ap.add_argument("--idle-exit", type=float, default=None,
                    help="live: stop after S seconds without a packet")  # fmt: skip
    ap.add_argument("--quiet", action="store_true", help="no summary on stderr")
    return ap


def _one_blas_thread() -> None:
    """The autoencoders' products are small and run beside the capture reader's thread: one
    BLAS thread is twice as fast as two fighting over the two cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=1, user_api="blas")


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if (args.source is None) == (args.interface is None):
        raise InputError("give either a capture SOURCE or --interface IFACE (not both)")
    from iotwatch.bundle import load_bundle
    from iotwatch.monitor.engine import Monitor
    from iotwatch.monitor.orient import PRIVATE_NETWORKS
    from iotwatch.monitor.run import Run

    _one_blas_thread()
    bundle = load_bundle(args.model)
    local = args.local_net or list(bundle.manifest.get("local_networks") or PRIVATE_NETWORKS)
    inventory = None
    if args.inventory is not None:
        from iotwatch.inventory import read_inventory_csv

        inventory = read_inventory_csv(args.inventory)
    files: list[Path] = []
    if args.source is not None:
        from iotwatch.ingest import list_captures

        files = list_captures(args.source)
        if not files:
            raise InputError(f"{args.source}: no capture files found (pcap, pcapng or gzip)")
    sink = JsonlSink(args.out)
    monitor = Monitor(bundle, sink, local_networks=local)
    # the flow meter puts a local end first; the monitor turns local-to-local flows round
    flow_cfg = dataclasses.replace(bundle.flow_config, local_networks=list(local))
    run = Run(monitor, flow_cfg, inventory)
    old = signal.signal(signal.SIGTERM, _sigterm)
    error: IotwatchError | None = None
    interrupted = False
    try:
        if files:
            run.captures(files)
        else:
            run.live(args.interface, duration=args.duration, idle_exit=args.idle_exit)
    except KeyboardInterrupt:
        interrupted = True
    except IotwatchError as exc:
        error = exc
    finally:
        signal.signal(signal.SIGTERM, old)
        try:
            run.finish()
        finally:
            sink.close()
    summary = run.summary()
    summary.update(local_networks=local, interrupted=interrupted, error=str(error) if error else None,
                   peak_memory_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))  # fmt: skip
    if args.summary is not None:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if args.report is not None:
        from iotwatch.monitor.report import write_report

        write_report(args.report, monitor, summary, summary["incidents"], sink.kept)
    if not args.quiet:
        print(format_summary(summary), file=sys.stderr)
    if error is not None:
        raise error
    return 130 if interrupted else 0


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a few lines of text."""
    secs = max(s["seconds"], 1e-9)
    lines = [
        f"monitor: {s['packets']} packets, {s['flows_seen']} flows in {s['seconds']:.2f} s "
        f"({s['packets'] / secs / 1e6:.2f} M packets/s, {s['flows_seen'] / secs:.0f} flows/s), "
        f"peak memory {s['peak_memory_mb']:.0f} MB" + (" [interrupted]" if s["interrupted"] else ""),
        f"  incidents: {len(s['incidents'])}"
        + "".join(f"\n    #{i['id']} {i['device']} ({i['device_type']}) {i['start_time']}: {i['why']}"
                  for i in s["incidents"][:20])
        + (f"\n    ... {len(s['incidents']) - 20} more" if len(s["incidents"]) > 20 else ""),
        f"  flows per device type: {s['flows_per_device_type']}",
        f"  alerts: {s['alerts']} {s['alerts_per_device_type']}",
        f"  unknown devices: {s['unknown_devices'] or 'none'}",
    ]  # fmt: skip
    if "kernel_drops" in s:
        lines.append(f"  kernel: {s['kernel_packets']} packets, {s['kernel_drops']} dropped")
    for key, d in s["devices"].items():
        kind = d["device_type"] or f"unknown (nearest {d['vote']})"
        alerts = f"{d['alerts']} alerts" if d.get("modelled", True) else d["note"]
        lines.append(f"  device {key} {d['ip']}: {kind}, confidence {d['confidence']:.2f}, "
                     f"fit {d['fit']:.2f}, {d['flows']} flows, {alerts}")  # fmt: skip
    return "\n".join(lines)
