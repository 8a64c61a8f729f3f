"""``iotwatch flows``: Parquet out, a summary, and clean handling of bad input."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.flowmeter.handmade import DEV_IP, T0, connection, write_pcap

from iotwatch.cli import main


def _capture(tmp_path: Path, n: int = 20) -> Path:
    pk = []
    for i in range(n):
        pk += connection(T0 + 5 * i, sport=40000 + i)
    return write_pcap(tmp_path / "c.pcap", pk)


def test_writes_parquet_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "flows.parquet"
    inv = tmp_path / "inv.csv"
    inv.write_text(f"mac,ip,device_type,name\n,{DEV_IP},plug,plug-1\n")
    rc = main(["flows", str(_capture(tmp_path)), "--out", str(out), "--inventory", str(inv)])
    assert rc == 0
    table = pq.read_table(out)
    assert table.num_rows == 20
    assert set(table["device_type"].to_pylist()) == {"plug"}
    err = capsys.readouterr().err
    assert "160 packets read" in err and "20 flows" in err and "0 issue(s)" in err


def test_profile_n_and_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.parquet"
    args = ["flows", str(_capture(tmp_path, 2)), "--out", str(out), "--n", "3", "--quiet"]
    assert main([*args, "--profile", "nfstream"]) == 0
    table = pq.read_table(out)
    assert "size_sent_3" in table.column_names and "size_sent_4" not in table.column_names
    assert table["bytes"].to_pylist() == [732, 732]  # frame bytes: 6 x 54 + 154 + 254
    assert capsys.readouterr().err == ""


def test_truncated_capture_keeps_flows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _capture(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 30])
    out = tmp_path / "f.parquet"
    assert main(["flows", str(cut), "--out", str(out)]) == 0
    assert pq.read_table(out).num_rows == 20
    err = capsys.readouterr().err
    assert "1 issue(s)" in err and "@ byte" in err and "written" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", ["garbage", "missing", "empty"])
def test_unusable_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = tmp_path / "x.pcap"
    if kind == "garbage":
        path.write_bytes(b"this is not a capture file at all" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    out = tmp_path / "f.parquet"
    assert main(["flows", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and str(path) in err and "Traceback" not in err
    assert not out.exists()


def test_unknown_profile_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["flows", str(_capture(tmp_path, 1)), "--out", str(tmp_path / "f"), "--profile", "nope"]
    )
    assert rc == 2
    assert "profile 'nope' not found" in capsys.readouterr().err
