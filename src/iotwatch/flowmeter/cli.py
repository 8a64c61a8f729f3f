"""``iotwatch flows``: captures to a Parquet flow table, with a progress bar and a summary."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from iotwatch.errors import InputError

MAX_ISSUES_SHOWN = 5
PROGRESS_MIN_BYTES = 32 * 1024 * 1024  # below this a capture meters in about a second: no bar


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="iotwatch flows",
        description="Meter packet captures into a table of bidirectional flows (Parquet).",
    )
    ap.add_argument(
        "captures",
        nargs="+",
        type=Path,
        help="pcap / pcapng files (.gz accepted), or folders of them",
    )
    ap.add_argument("--out", required=True, type=Path, help="output Parquet file")
    ap.add_argument(
        "--profile", default="default", help="conf/flows/NAME.yaml, or a path to a YAML profile"
    )
    ap.add_argument("--inventory", type=Path, help="mac,ip,device_type,name CSV of known devices")
    ap.add_argument(
        "--local-net", action="append", default=[], metavar="CIDR", help="a device network"
    )
    ap.add_argument("--n", type=int, help="packets per direction in the features (N)")
    ap.add_argument(
        "--threads",
        type=int,
        help="flow tables metered at once (default: 2 on a machine with two cores or more)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    return ap


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so the temporary files are removed on the way."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into ``Terminated`` (main thread only); a second one is ignored, so the
    clean-up it starts is not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    """Run ``iotwatch flows``; 0 when the table was written, 2 when there was nothing to meter
    or the output cannot be written (one line naming the file and why), 143 on SIGTERM."""
    args = _parser().parse_args(argv)
    try:
        with _sigterm_unwinds():
            return _main(args)
    except Terminated:
        print(f"iotwatch flows: terminated; {args.out} left as it was", file=sys.stderr)
        return 143


def _main(args: argparse.Namespace) -> int:
    from iotwatch.flowmeter.config import load_profile
    from iotwatch.flowmeter.discover import expand_captures
    from iotwatch.flowmeter.meter import meter_captures
    from iotwatch.flowmeter.schema import replacing

    config = load_profile(args.profile)
    changes: dict = {}
    if args.local_net:
        changes["local_networks"] = list(config.local_networks) + args.local_net
    if args.n is not None:
        changes["n_packets"] = args.n
    if changes:
        try:
            config = dataclasses.replace(config, **changes)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    inventory = None
    if args.inventory is not None:
        from iotwatch.inventory import read_inventory_csv

        inventory = read_inventory_csv(args.inventory)
    captures = expand_captures(args.captures)  # folders: every capture in them (the pipeline's)
    big = sum(p.stat().st_size for p in captures) >= PROGRESS_MIN_BYTES
    # the table is streamed to a temporary file next to --out (row groups as flows become
    # final: memory stays bounded on long captures) and renamed once the run is known good
    with replacing(args.out) as tmp:
        result = meter_captures(
            captures,
            config,
            inventory,
            progress=big and not args.quiet,
            out=tmp,
            threads=args.threads,
        )
        stats = result.stats
        if stats.packets_kept == 0 and stats.issues:
            # nothing could be metered at all (not a capture, cut before its first record,
            # only link types we cannot decode): an error, not an empty table
            tmp.unlink(missing_ok=True)  # --out stays as it was
            for issue in stats.issues[:MAX_ISSUES_SHOWN]:
                print(f"iotwatch flows: error: {issue}", file=sys.stderr)
            print(
                f"iotwatch flows: error: no packet could be metered; {args.out} left as it was",
                file=sys.stderr,
            )
            return 2
    if not args.quiet:
        print(f"iotwatch flows: {result.summary_line()} -> {args.out}", file=sys.stderr)
    for issue in stats.issues[:MAX_ISSUES_SHOWN]:
        print(f"  issue: {issue}", file=sys.stderr)
    if len(stats.issues) > MAX_ISSUES_SHOWN:
        print(f"  ... and {len(stats.issues) - MAX_ISSUES_SHOWN} more issue(s)", file=sys.stderr)
    if stats.issues:
        print(
            "iotwatch flows: damaged input: what could not be used is listed above; the flows "
            "of everything else were written",
            file=sys.stderr,
        )
    return 0
