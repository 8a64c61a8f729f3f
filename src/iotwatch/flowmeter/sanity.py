"""Checks every flow table must pass, whatever the input: the fuzz tests and the fault campaign
(``bench/bench_faults.py``) hold each metered result to them.

Why a module and not test code: an "absurd output" must mean the same thing to the tests, the
campaign's figures and anyone validating a table they were given (``problems(table)``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from iotwatch.flowmeter._decode import MAX_WIRE
from iotwatch.flowmeter.schema import END_REASONS


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def problems(table: pa.Table, pad_value: float = 0, max_packet: int = MAX_WIRE) -> list[str]:
    """What is impossible in a flow table (empty when nothing): counters that do not add up,
    a packet larger than ``max_packet`` bytes (the default: the longest frame a link carries
    uncaptured, ``_decode.MAX_WIRE``), negative or NaN times, gaps and sizes, unknown end
    reasons, flow ids out of order."""
    out: list[str] = []
    if table.num_rows == 0:
        return out
    packets, sent, recv = (_col(table, c) for c in ("packets", "packets_sent", "packets_recv"))
    nbytes, bsent, brecv = (_col(table, c) for c in ("bytes", "bytes_sent", "bytes_recv"))
    if np.any(sent + recv != packets):
        out.append("packets_sent + packets_recv != packets")
    if np.any(bsent + brecv != nbytes):
        out.append("bytes_sent + bytes_recv != bytes")
    if np.any(packets < 1) or np.any(sent < 0) or np.any(recv < 0):
        out.append("a flow without packets, or a negative packet count")
    if np.any(bsent < 0) or np.any(brecv < 0):
        out.append("negative bytes")
    worst = np.max(nbytes / np.maximum(packets, 1))
    if worst > max_packet:
        out.append(f"{worst:.0f} bytes per packet, more than {max_packet}")
    start, end, duration = (_col(table, c) for c in ("start", "end", "duration"))
    for name, v in (("start", start), ("end", end), ("duration", duration)):
        if np.any(np.isnan(v)):
            out.append(f"NaN in {name}")
    if np.any(duration < 0) or np.any(end < start):
        out.append("negative duration")
    for field in table.schema:
        if field.name.startswith("iat_"):
            v = _col(table, field.name)
            if np.any(np.isnan(v)):
                out.append(f"NaN in {field.name}")
            elif np.any((v < 0) & (v != pad_value)):
                out.append(f"negative gap in {field.name}")
        elif field.name.startswith("size_"):
            v = _col(table, field.name)
            if np.any((v < 0) & (v != pad_value)) or np.any(v > max(max_packet, 0)):
                out.append(f"impossible size in {field.name}")
    reasons = set(table.column("end_reason").to_pylist())
    if not reasons <= set(END_REASONS):
        out.append(f"unknown end reason(s) {sorted(reasons - set(END_REASONS))}")
    ids = _col(table, "flow_id")
    if not np.array_equal(ids, np.arange(len(ids))):
        out.append("flow_id is not 0..n-1 in row order")
    return out
