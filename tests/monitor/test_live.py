"""`iotwatch monitor --interface`: live traffic through a veth pair gives the offline alerts.

A network namespace of the test's own holds a veth pair; a synthetic capture is replayed into
one end at its own pace and the monitor reads the other end (AF_PACKET). Its alerts must be
those of `iotwatch monitor` on the same capture file. Needs root (namespaces, packet sockets):
skipped with the reason otherwise.

The bundle's open-set rule is opened up for this test (every flow's device placed by that
flow's own vote): the test is about live packets becoming the flows a file gives, and a ~10 s
capture holds too few flows per device for votes of 20.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from tests.monitor.conftest import LOCAL_NET, flow_key, read_alerts

WINDOW_S = 8.0  # seconds of traffic replayed
NEAR = 0.25  # alerts within this relative distance of the threshold may flip with jitter

REPLAY = r"""
import socket, struct, sys, time
iface, path = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
frames, pos = [], 24
while pos + 16 <= len(data):
    sec, frac, incl, _ = struct.unpack_from("<IIII", data, pos)
    frames.append((sec * 1_000_000_000 + frac, data[pos + 16 : pos + 16 + incl]))
    pos += 16 + incl
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
t0, c0 = time.perf_counter_ns(), frames[0][0]
for ts, frame in frames:
    due = t0 + (ts - c0)
    while True:
        left = due - time.perf_counter_ns()
        if left <= 0:
            break
        if left > 2_000_000:
            time.sleep((left - 1_000_000) / 1e9)
    s.send(frame)
print(len(frames))
"""


def _root_or_skip() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("live capture test needs Linux (AF_PACKET, network namespaces)")
    if os.geteuid() != 0:
        pytest.skip("live capture test needs root (network namespace, veth pair, packet socket)")
    if shutil.which("ip") is None:
        pytest.skip("live capture test needs iproute2's `ip` command")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def netns() -> str:
    _root_or_skip()
    name = f"iotw-{uuid.uuid4().hex[:8]}"
    made = _ip("netns", "add", name)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        for cmd in (["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                    ["link", "set", "lo", "up"], ["link", "set", "v0", "up"],
                    ["link", "set", "v1", "up"]):  # fmt: skip
            r = _ip("-n", name, *cmd)
            if r.returncode != 0:
                pytest.skip(f"cannot set up a veth pair: {r.stderr.strip()}")
        # no IPv6 autoconfiguration chatter on the link
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1"], capture_output=True)  # fmt: skip
        yield name
    finally:
        _ip("netns", "del", name)


def _records(path: Path) -> list[tuple[int, bytes]]:
    """A classic pcap's records as (ts_ns, frame)."""
    import struct

    data = path.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    scale = 1 if magic == 0xA1B23C4D else 1000
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack_from("<IIII", data, pos)
        out.append((sec * 1_000_000_000 + frac * scale, data[pos + 16 : pos + 16 + incl]))
        pos += 16 + incl
    return out


def _densest(records: list[tuple[int, bytes]], span_ns: int) -> list[tuple[int, bytes]]:
    """The ``span_ns`` of traffic holding the most packets, timestamps from 0."""
    import numpy as np

    ts = np.array([t for t, _ in records], np.int64)
    ends = np.searchsorted(ts, ts + span_ns)
    i = int(np.argmax(ends - np.arange(len(ts))))
    return [(t - int(ts[i]), f) for t, f in records[i : int(ends[i])]]


def _test_capture(home: Path, out: Path) -> Path:
    """A few seconds of a benign day and of each device's attacks, overlaid."""
    from iotwatch.flowmeter.frames import frames_to_pcap

    span = int(WINDOW_S * 1e9)
    parts = _densest(_records(next((home / "benign").glob("*.pcap"))), span)
    for attack in sorted((home / "malicious").glob("*.pcap")):
        parts += _densest(_records(attack), span)
    t0 = 1_709_300_000_000_000_000
    merged = sorted(((t + t0, f) for t, f in parts), key=lambda r: r[0])
    out.write_bytes(frames_to_pcap(merged))
    return out


def _open_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["open_set"].update(window=1, memory=1, fit=0.0, fits={},
                         confidence={t: 0.0 for t in m["classifier"]["classes"]})  # fmt: skip
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_live_interface_gives_the_offline_alerts(trained, netns: str, tmp_path: Path) -> None:
    from iotwatch.cli import main as cli

    cap = _test_capture(trained.other_home, tmp_path / "replay.pcap")
    bundle = _open_bundle(trained.bundle, tmp_path / "bundle")
    rc = cli(["monitor", str(cap), "--model", str(bundle), "--out", str(tmp_path / "off.jsonl"),
              "--local-net", LOCAL_NET, "--quiet"])  # fmt: skip
    assert rc == 0
    offline = {flow_key(a): a for a in read_alerts(tmp_path / "off.jsonl")}
    assert len(offline) >= 5, "the replayed capture must raise alerts offline"

    exe = [sys.executable, "-m", "iotwatch"]
    mon = subprocess.Popen(
        ["ip", "netns", "exec", netns, *exe, "monitor", "--interface", "v1", "--model",
         str(bundle), "--out", str(tmp_path / "live.jsonl"), "--summary",
         str(tmp_path / "live.json"), "--local-net", LOCAL_NET, "--idle-exit", "3"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert mon.stderr is not None
        deadline = time.monotonic() + 120
        for line in mon.stderr:  # wait until the socket is open
            if "listening on v1" in line:
                break
            assert time.monotonic() < deadline, "monitor did not start"
        (tmp_path / "replay.py").write_text(REPLAY)
        sent = subprocess.run(["ip", "netns", "exec", netns, sys.executable,
                               str(tmp_path / "replay.py"), "v0", str(cap)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        rest = mon.communicate(timeout=120)[1]
    finally:
        if mon.poll() is None:
            mon.kill()
    assert mon.returncode == 0, rest
    summary = json.loads((tmp_path / "live.json").read_text())
    assert summary["frames"] >= int(sent.stdout) and summary["kernel_drops"] == 0
    live = {flow_key(a): a for a in read_alerts(tmp_path / "live.jsonl")}

    def firm(a: dict) -> bool:  # far enough from its threshold not to flip with timing jitter
        return abs(a["score"] - a["threshold"]) > NEAR * a["threshold"]

    missing = [k for k, a in offline.items() if k not in live and firm(a)]
    extra = [k for k, a in live.items() if k not in offline and firm(a)]
    assert not missing and not extra, (missing, extra)
    assert len(set(offline) & set(live)) >= 0.8 * len(offline)
