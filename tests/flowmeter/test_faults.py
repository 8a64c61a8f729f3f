"""Faults and hostile input (issue 12): output errors, folders, SIGTERM, the clock rule."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tests.flowmeter.handmade import T0, connection, write_pcap

from iotwatch.cli import main
from iotwatch.flowmeter import FlowConfig, meter_captures

REPO = Path(__file__).resolve().parents[2]
S = 1_000_000_000


def _capture(path: Path, n: int = 4) -> Path:
    pk = []
    for i in range(n):
        pk += connection(T0 + 5 * i, sport=40000 + i)
    return write_pcap(path, pk)


def _one_error_line(err: str, *pieces: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("iotwatch flows: error: ")
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


# -- output-side errors: one line naming --out and the reason, exit 2, nothing lost ----------
def test_out_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "flows.parquet"
    out.mkdir()
    assert main(["flows", str(_capture(tmp_path / "c.pcap")), "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, str(out), "it is a folder")
    assert out.is_dir() and _hidden(tmp_path) == []


def test_out_parent_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "reports").write_text("a file, not a folder")
    out = tmp_path / "reports" / "sub" / "flows.parquet"
    assert main(["flows", str(_capture(tmp_path / "c.pcap")), "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, str(out), "is a file, not a folder")


@pytest.mark.parametrize("captures", [1, 2])
def test_full_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    captures: int,
) -> None:  # fmt: skip
    """ENOSPC while writing (the background writer's thread): one line, the old table kept,
    neither the temporary file nor the run files left."""
    import pyarrow.parquet as pq_mod

    def full(self: object, table: object, *a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space")

    paths = [str(_capture(tmp_path / f"c{i}.pcap")) for i in range(captures)]
    out = tmp_path / "flows.parquet"
    out.write_bytes(b"the previous table")
    monkeypatch.setattr(pq_mod.ParquetWriter, "write_table", full)
    assert main(["flows", *paths, "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, str(out), "No space left on device")
    assert out.read_bytes() == b"the previous table" and _hidden(tmp_path) == []


def test_read_only_disk_and_a_cleanup_that_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EROFS on open, and removing the (missing) temporary file raises EROFS again: still
    the one line of the first error."""
    import pyarrow.parquet as pq_mod

    def read_only(*a: object, **k: object) -> None:
        raise OSError(errno.EROFS, "Failed to open local file. Detail: [errno 30] Read-only")

    def unlink(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    cap = str(_capture(tmp_path / "c.pcap"))
    out = tmp_path / "flows.parquet"
    monkeypatch.setattr(pq_mod.ParquetWriter, "__init__", read_only)
    monkeypatch.setattr(Path, "unlink", unlink)
    assert main(["flows", cap, "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, str(out), "Read-only file system")


def _unshare_ok() -> bool:
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d"
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True,
                              timeout=10).returncode == 0  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.parametrize("disk", ["ro", "size=16k"])
def test_real_read_only_and_full_disks(tmp_path: Path, disk: str) -> None:
    """The same on real file systems (a private mount namespace; skipped where there is none)."""
    if not _unshare_ok():
        pytest.skip("needs unshare -m and mount (root in a container, or a user namespace)")
    cap = _capture(tmp_path / "c.pcap", 300)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    exe = REPO / ".venv" / "bin" / "iotwatch"
    exe_cmd = str(exe) if exe.exists() else f"{sys.executable} -m iotwatch"
    script = (f"mount -t tmpfs -o {disk} tmpfs {mnt} && "
              f"{exe_cmd} flows {cap} --out {mnt}/flows.parquet --quiet")  # fmt: skip
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    reason = "Read-only file system" if disk == "ro" else "No space left on device"
    _one_error_line(proc.stderr, f"{mnt}/flows.parquet", reason)


# -- folders: what the pipeline accepts --------------------------------------------------------
def test_folder_argument_meters_its_captures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "caps"
    (folder / "sub").mkdir(parents=True)
    a = _capture(folder / "a.pcap", 2)
    b = _capture(folder / "sub" / "b.bin", 3)  # found by its magic number, not its name
    (folder / "notes.txt").write_text("not a capture")
    (folder / ".hidden.pcap").write_bytes(a.read_bytes())
    out_dir, out_files = tmp_path / "d.parquet", tmp_path / "f.parquet"
    assert main(["flows", str(folder), "--out", str(out_dir), "--quiet"]) == 0
    assert main(["flows", str(a), str(b), "--out", str(out_files), "--quiet"]) == 0
    assert pq.read_table(out_dir).equals(pq.read_table(out_files))
    assert pq.read_table(out_dir).num_rows == 5


@pytest.mark.parametrize("kind", ["empty folder", "missing"])
def test_folder_without_captures_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    folder = tmp_path / "caps"
    if kind == "empty folder":
        folder.mkdir()
        (folder / "notes.txt").write_text("not a capture")
    assert main(["flows", str(folder), "--out", str(tmp_path / "f.parquet")]) == 2
    err = capsys.readouterr().err
    want = "no capture files found" if kind == "empty folder" else "no such capture file"
    assert str(folder) in err and want in err and "Traceback" not in err


# -- SIGTERM: no temporary files left ----------------------------------------------------------
def test_sigterm_leaves_no_temporary_files(tmp_path: Path) -> None:
    """SIGTERM in the middle of the second capture (after the first's run file was written):
    exit 143, one line, --out as it was, no hidden temporary files beside it."""
    caps = [_capture(tmp_path / f"c{i}.pcap", 30) for i in range(3)]
    out = tmp_path / "out" / "flows.parquet"
    out.parent.mkdir()
    out.write_bytes(b"the previous table")
    code = textwrap.dedent(f"""
        import os, signal, sys
        from iotwatch.flowmeter import meter as M, prefetch
        from iotwatch.flowmeter.reader import read_packets
        calls = []
        def reader(paths, stats, **kw):
            calls.append(paths)
            kw["chunk_packets"] = 16
            for i, batch in enumerate(read_packets(paths, stats, **kw)):
                if len(calls) == 2 and i == 2:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch
        M.default_reader = lambda: reader
        from iotwatch.cli import main
        sys.exit(main(["flows", *sys.argv[1:], "--out", {str(out)!r}, "--quiet"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, caps)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip() == f"iotwatch flows: terminated; {out} left as it was"
    assert out.read_bytes() == b"the previous table"
    assert sorted(p.name for p in out.parent.iterdir()) == ["flows.parquet"]


# -- the clock rule ----------------------------------------------------------------------------
J = 60 * S


def _guarded(ts: np.ndarray, chunk: int) -> tuple[np.ndarray, int]:
    from iotwatch.flowmeter.clock import ClockGuard

    g = ClockGuard(J)
    out = []
    for i in range(0, len(ts), chunk):
        part = (ts[i : i + chunk].copy(),)
        for cols, idx in g.admit(part, None, np.arange(i, i + len(part[0]))):
            out.append(cols[0] if idx is None else cols[0][idx])
    out += [cols[0] for cols, _ in g.flush()]
    return np.concatenate(out), g.count


def test_clock_rule_cases() -> None:
    from iotwatch.flowmeter.clock import decide

    base = 1_700_000_000 * S + np.arange(40) * S // 10
    far = 400_000_000 * S
    t = base.copy()
    t[[10, 11, 30]] += far  # a run of two and one alone, ahead
    t[20] -= far  # behind
    n, rows, vals, _ = decide(t, 0, True, J)
    assert n == 40 and rows.tolist() == [10, 11, 20, 30]
    assert vals.tolist() == [base[9], base[9], base[19], base[29]]
    t = base.copy()
    t[0] += far  # the first packet ahead of all that follows
    assert decide(t, 0, True, J)[1].tolist() == [0]
    # a genuine jump (more than CLOCK_RUN packets at the new time) and time that only moves
    # forward, however sparse, are never outliers
    t = base.copy()
    t[20:] += far
    assert decide(t, 0, True, J)[1].tolist() == []
    sparse = 1_700_000_000 * S + np.arange(30) * 3600 * S
    assert decide(sparse, 0, True, J)[1].tolist() == []
    # a forward jump at the very end is kept (nothing after it is clamped to it)
    t = base.copy()
    t[-1] += far
    assert decide(t, 0, True, J)[1].tolist() == []


def test_clock_rule_does_not_depend_on_the_chunking() -> None:
    rng = np.random.default_rng(12)
    for _ in range(200):
        n = int(rng.integers(1, 50))
        t = 1_700_000_000 * S + np.cumsum(rng.integers(0, 3 * S, n))
        for _ in range(int(rng.integers(0, 6))):
            k = int(rng.integers(0, n))
            t[k] += int(rng.choice([-1, 1])) * int(rng.integers(61, 10**9)) * S
        whole = _guarded(t, 10**6)
        for chunk in (1, 2, 3, 7):
            got = _guarded(t, chunk)
            assert np.array_equal(got[0], whole[0]) and got[1] == whole[1]


def test_disorder_beyond_the_window_does_not_depend_on_the_chunking(tmp_path: Path) -> None:
    """Late packets (more than the reorder window behind the newest before them) are clamped by
    a rule of the packets alone: the table is the same for every chunk size (it was not)."""
    pk = []
    for i in range(30):
        pk += connection(T0 + 3 * i, sport=41000 + i % 5)
    pk.sort(key=lambda p: float(p.time))
    for i in range(0, len(pk) - 9, 9):  # 20-odd seconds of disorder: far beyond 2 s
        pk[i], pk[i + 8] = pk[i + 8], pk[i]
    path = write_pcap(tmp_path / "ooo.pcap", pk)
    whole = meter_captures([path], FlowConfig())
    assert whole.late_packets > 0
    for chunk in (1, 5, 16):
        res = meter_captures([path], FlowConfig(), chunk_packets=chunk)
        assert res.table.equals(whole.table) and res.late_packets == whole.late_packets, chunk
