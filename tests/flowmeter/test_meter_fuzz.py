"""Property test: mutated captures, metered whole, give sane, reproducible tables.

Every result is checked, not only "no exception other than the project's own": bytes per
packet within what a link carries, ``packets_sent + packets_recv == packets``, no negative or
NaN durations and gaps (``sanity.problems``), and the same table for 1 and 2 threads and for
whole-file and 3-packet chunks (``mutate.check``). The mutations are the fault campaign's
(``bench/bench_faults.py``): bit flips, overwrites, truncations, splices, duplicated and
shuffled records, absurd length and timestamp fields, gzip.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from handmade import T0, connection, udp, write_pcap  # noqa: E402
from mutate import check, mutate  # noqa: E402

from iotwatch.flowmeter import FlowConfig, load_profile  # noqa: E402


def _seeds() -> list[bytes]:
    with tempfile.TemporaryDirectory() as d:
        pk = []
        for i in range(6):
            pk += connection(T0 + 2 * i, sport=40000 + i, close=("fin", "rst", "none")[i % 3])
            pk.append(udp(T0 + 2 * i + 0.1, "192.168.1.10", "8.8.8.8", 5353, 53))
        pk.sort(key=lambda p: float(p.time))
        a = write_pcap(Path(d) / "a.pcap", pk).read_bytes()
        b = write_pcap(Path(d) / "b.pcap", pk[::-1][:20]).read_bytes()  # disordered
    return [a, b]


SEEDS = _seeds()
CONFIGS = [
    dataclasses.replace(FlowConfig(), protocols=["all"]),
    load_profile("nfstream"),  # frame bytes: the wire length field
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), profile=st.sampled_from([0, 1]))
def test_mutated_captures_meter_to_sane_tables(seed: int, profile: int) -> None:
    data, ops = mutate(SEEDS, seed)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.pcap"
        p.write_bytes(data)
        kind, detail = check(p, CONFIGS[profile])
    assert kind in ("clean", "damage", "project_error"), (seed, ops, kind, detail)
