"""The fault corpus (tests/data/fault_corpus): inputs that once gave wrong answers, each held
to what it must give now and to the checks every flow table must pass."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from iotwatch.cli import main
from iotwatch.flowmeter import load_profile, meter_captures
from iotwatch.flowmeter.sanity import problems

CORPUS = Path(__file__).resolve().parents[1] / "data" / "fault_corpus"
EXPECTED = {k: v for k, v in json.loads((CORPUS / "expected.json").read_text()).items()
            if k != "_"}  # fmt: skip


def test_corpus_is_complete_and_small() -> None:
    files = {p.name for p in CORPUS.glob("*.pcap*")}
    assert files == set(EXPECTED)
    assert sum(p.stat().st_size for p in CORPUS.iterdir()) < 200_000


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_case(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    want = EXPECTED[name]
    path = CORPUS / name
    out = tmp_path / "f.parquet"
    assert main(["flows", str(path), "--out", str(out), "--profile", "nfstream"]) == want["exit"]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for profile in ("nfstream", "default"):
        cfg = load_profile(profile)
        res = meter_captures([path], cfg)
        assert problems(res.table, cfg.pad_value) == [], profile
        issues = [str(i) for i in res.stats.issues]
        assert len(issues) == len(want["issues"]), issues
        for got, piece in zip(issues, want["issues"], strict=True):
            assert piece in got and f"{path} @ byte " in got
        if profile == "nfstream":
            assert res.table.num_rows == want["flows"]
        # the same table for 1 and 2 threads, and for 1-packet and whole-file chunks
        for kw in ({"threads": 1}, {"threads": 2, "chunk_packets": 1}):
            assert meter_captures([path], cfg, **kw).table.equals(res.table), kw


def test_damaged_records_are_sized_from_what_can_be_trusted() -> None:
    """A wire length the link cannot carry, or below the captured length: the frame is sized
    from the captured bytes and the IP total length, the flows are those of the clean capture."""
    cfg = load_profile("nfstream")  # frame bytes
    for name in ("wire_len_4gib.pcap", "wire_len_short.pcap", "ip_len_zero_wire_3gb.pcap"):
        t = meter_captures([CORPUS / name], cfg).table
        # TCP: 6 x 54 + 154 + 254 bytes; DNS: 2 x 52
        assert sorted(t["bytes"].to_pylist()) == [104, 732, 732], name
    ip = dataclasses.replace(cfg, size="ip")
    t = meter_captures([CORPUS / "ip_len_zero_wire_3gb.pcap"], ip).table
    assert sorted(t["bytes"].to_pylist()) == [76, 620, 620]  # total length 0: 154 - 14 = 140


def test_clock_outliers_are_metered_at_their_neighbours_time() -> None:
    """Three records ~12.7 years ahead in a busy capture: every flow as in the clean capture
    (connections 5 s apart, 8 packets each), none stretched or merged by the bad clock."""
    t = meter_captures([CORPUS / "clock_ahead_12y.pcap"], load_profile("default")).table
    assert t.num_rows == 40
    assert set(t["packets"].to_pylist()) == {8}
    assert max(t["duration"].to_pylist()) <= 3.0
