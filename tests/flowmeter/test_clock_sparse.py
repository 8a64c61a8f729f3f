"""The clock rule on sparse captures (issue 21): minutes between packets, a few records moved.

One record moved a year ahead used to collapse a sparse capture (the rule looked for a return
within J = 60 s of the anchor, which sparse traffic never gives): every later packet was late,
clamped into a few zero-duration flows, silently. Now the loss is at most the flows the moved
records belong to, and every outlier found is an issue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.flowmeter.sparse import YEAR, loss, metered_records, move, pick, sparse_capture

from iotwatch.flowmeter import load_profile, meter_captures
from iotwatch.flowmeter.clock import CLOCK_RUN

MOVES = {"year ahead": YEAR, "day ahead": 86400, "hour ahead": 3600, "year behind": -YEAR}


@pytest.fixture(scope="module")
def sparse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, np.ndarray, np.ndarray]:
    path = sparse_capture(tmp_path_factory.mktemp("sparse") / "sparse.pcap")
    base = meter_captures([path], load_profile("default"))
    assert base.rows == 60 and not base.stats.issues and not base.late_packets
    offs, ports = metered_records(path)
    return path, base.table, offs, ports


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_moved_records_cost_at_most_their_own_flows(sparse, tmp_path: Path, k: int,
                                                    where: str) -> None:  # fmt: skip
    path, base, offs, ports = sparse
    data = path.read_bytes()
    for seed in range(4):
        rng = np.random.default_rng(seed * 100 + k)
        rows = pick(len(offs), k, where, rng)
        own = {(int(min(p)), int(max(p))) for p in ports[rows]}
        for name, seconds in MOVES.items():
            m = tmp_path / "m.pcap"
            m.write_bytes(move(data, offs[rows].tolist(), seconds))
            res = meter_captures([m], load_profile("default"))
            lost, lost_pk, other, other_pk = loss(base, res.table, own)
            what = f"{name}, records {rows} of {len(offs)}: lost {lost} flows ({lost_pk} pk)"
            assert other == 0, what
            assert lost <= len(own), what
            assert res.late_packets <= k, what
            # every outlier is an issue with its offset; every moved record is one, except
            # among the last 2K packets (when most of those after it moved too, the rule cannot
            # tell which are the trend: kept, nothing after them is clamped) and a backward
            # move of the very first packets (time that only moves forward is no outlier)
            clock = [i for i in res.stats.issues if "trend" in i.message]
            assert len(clock) == res.clock_jumps, what
            found = {i.offset for i in clock}
            missed = [r for r in rows if int(offs[r]) not in found]
            if where == "end":
                assert all(r >= len(offs) - 2 * CLOCK_RUN for r in missed), what
            elif where == "start" and seconds < 0:  # the first packets behind the rest: time
                assert missed == list(range(len(missed))), what  # only moves forward, kept
            else:
                assert not missed, what


def test_a_genuine_jump_in_sparse_traffic_is_followed(tmp_path: Path) -> None:
    """A pause of a day in the middle of a sparse capture (the capture resumed): no outliers,
    no late packets, every flow as it is."""
    from tests.flowmeter.sparse import records

    path = sparse_capture(tmp_path / "s.pcap")
    data = path.read_bytes()
    at = records(data)
    late = move(data, at[len(at) // 2 :], 86400)
    (tmp_path / "p.pcap").write_bytes(late)
    res = meter_captures([tmp_path / "p.pcap"], load_profile("default"))
    assert res.clock_jumps == 0 and res.late_packets == 0 and not res.stats.issues
    assert 60 <= res.rows <= 62  # flows open across the pause are split by the idle timeout
