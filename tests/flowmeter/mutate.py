"""Mutations of real captures, and the checks every metered result must pass: shared by the
property test (``test_meter_fuzz.py``) and the fault campaign (``bench/bench_faults.py``).

A mutation is a pure function of ``(capture bytes, seed)``: the same seed gives the same input,
so a failure found by the campaign is reproduced by its seed alone.
"""

from __future__ import annotations

import gzip
import random
import struct
from collections.abc import Callable
from pathlib import Path

from iotwatch.errors import IotwatchError
from iotwatch.flowmeter import FlowConfig, meter_captures
from iotwatch.flowmeter.sanity import problems

PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<",
               b"\xa1\xb2\x3c\x4d": ">"}  # fmt: skip


def records(data: bytes) -> tuple[int, list[tuple[int, int]], str]:
    """``(header length, [(offset, length)] of the records or blocks, byte order)`` of a pcap
    or pcapng (pcapng: every block after the first section header; best effort on damage)."""
    out: list[tuple[int, int]] = []
    if bytes(data[:4]) in PCAP_MAGICS:
        e = PCAP_MAGICS[bytes(data[:4])]
        pos = 24
        while pos + 16 <= len(data):
            n = 16 + struct.unpack_from(e + "I", data, pos + 8)[0]
            if pos + n > len(data):
                break
            out.append((pos, n))
            pos += n
        return 24, out, e
    e = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    pos = 0
    head = 0
    while pos + 12 <= len(data):
        n = struct.unpack_from(e + "I", data, pos + 4)[0]
        if n < 12 or pos + n > len(data):
            break
        if pos == 0:
            head = n
        else:
            out.append((pos, n))
        pos += n
    return head, out, e


def _flip(d: bytearray, r: random.Random, seeds: list[bytes]) -> bytearray:
    for _ in range(r.randint(1, 8)):
        i = r.randrange(len(d))
        d[i] ^= 1 << r.randrange(8)
    return d


def _overwrite(d: bytearray, r: random.Random, seeds: list[bytes]) -> bytearray:
    i = r.randrange(len(d))
    n = r.randint(1, 16)
    d[i : i + n] = bytes(r.choice((0x00, 0xFF, r.randrange(256))) for _ in range(n))
    return d


def _truncate(d: bytearray, r: random.Random, seeds: list[bytes]) -> bytearray:
    return d[: r.randrange(len(d) + 1)]


def _splice(d: bytearray, r: random.Random, seeds: list[bytes]) -> bytearray:
    other = r.choice(seeds)
    return d[: r.randrange(len(d) + 1)] + other[r.randrange(len(other)) :]


def _records_op(op: str) -> Callable[[bytearray, random.Random, list[bytes]], bytearray]:
    def mutate(d: bytearray, r: random.Random, seeds: list[bytes]) -> bytearray:
        head, recs, _ = records(bytes(d))
        if len(recs) < 2:
            return _flip(d, r, seeds)
        parts = [bytes(d[o : o + n]) for o, n in recs]
        tail = bytes(d[recs[-1][0] + recs[-1][1] :])
        if op == "duplicate":
            for _ in range(r.randint(1, 4)):
                i = r.randrange(len(parts))
                parts.insert(i, parts[i])
        else:  # shuffle a stretch
            i = r.randrange(len(parts))
            j = min(len(parts), i + r.randint(2, 32))
            stretch = parts[i:j]
            r.shuffle(stretch)
            parts[i:j] = stretch
        return bytearray(bytes(d[:head]) + b"".join(parts) + tail)

    return mutate


def _field(kind: str) -> Callable[[bytearray, random.Random, list[bytes]], bytearray]:
    """Absurd values in record header fields (classic pcap; pcapng: the EPB fields)."""

    def mutate(d: bytearray, r: random.Random, seeds: list[bytes]) -> bytearray:
        _, recs, e = records(bytes(d))
        if not recs:
            return _overwrite(d, r, seeds)
        pcap = bytes(d[:4]) in PCAP_MAGICS
        for _ in range(r.randint(1, 3)):
            o, _n = r.choice(recs)
            if kind == "length":
                at = o + (r.choice((8, 12)) if pcap else r.choice((20, 24)))
                v = r.choice((0, 1, 0xFFFFFFFF, 0x80000000, r.randrange(2**32), 65536, 262145))
            else:
                at = o + (0 if pcap else r.choice((12, 16)))
                old = struct.unpack_from(e + "I", d, at)[0] if at + 4 <= len(d) else 0
                v = r.choice((0, 0xFFFFFFFF, old + r.choice((-1, 1)) * r.randrange(1, 2**31),
                              (old + 400_000_000) % 2**32, max(old - 3600, 0)))  # fmt: skip
            if at + 4 <= len(d):
                struct.pack_into(e + "I", d, at, v % 2**32)
        return d

    return mutate


OPERATORS: dict[str, Callable[[bytearray, random.Random, list[bytes]], bytearray]] = {
    "flip": _flip,
    "overwrite": _overwrite,
    "truncate": _truncate,
    "splice": _splice,
    "duplicate": _records_op("duplicate"),
    "shuffle": _records_op("shuffle"),
    "length": _field("length"),
    "timestamp": _field("timestamp"),
}


def mutate(seeds: list[bytes], seed: int) -> tuple[bytes, list[str]]:
    """One mutated capture (and the operators applied) for ``seed``: 1-3 operators on one of
    ``seeds``, gzip-wrapped one time in eight."""
    r = random.Random(seed)
    d = bytearray(r.choice(seeds))
    ops = [r.choice(sorted(OPERATORS)) for _ in range(r.randint(1, 3))]
    for op in ops:
        if d:
            d = OPERATORS[op](d, r, seeds)
    if r.random() < 0.125:
        ops.append("gzip")
        return gzip.compress(bytes(d), mtime=0), ops
    return bytes(d), ops


def check(path: Path, config: FlowConfig) -> tuple[str, str]:
    """Meter one capture as a hostile user would and judge it: ``("clean" | "damage" |
    "project_error" | "absurd" | "inconsistent", detail)``. Raises on anything else (a crash).

    Absurd: the table fails ``sanity.problems``. Inconsistent: 1 thread with whole-file chunks
    and 2 threads with 3-packet chunks give different tables (the meter's rules read the
    packets only, so the chunking and the threads never change the result, disorder or not).
    """
    try:
        a = meter_captures([path], config, threads=1)
    except IotwatchError as exc:
        return "project_error", str(exc)
    bad = problems(a.table, config.pad_value)
    if bad:
        return "absurd", "; ".join(bad)
    b = meter_captures([path], config, threads=2, chunk_packets=3)
    if not b.table.equals(a.table) or b.late_packets != a.late_packets:
        return "inconsistent", f"late {a.late_packets} vs {b.late_packets}"
    return ("damage" if a.stats.issues else "clean"), f"{len(a.stats.issues)} issue(s)"
