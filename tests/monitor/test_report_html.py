"""The HTML report from a hand-made monitor (the attributes ``render`` reads), a day with one
infected device, one device with a few odd flows and one of a type without a model."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from iotwatch.monitor.engine import DeviceState
from iotwatch.monitor.incidents import Incidents
from iotwatch.monitor.report import MAX_ALERT_ROWS, axis_ticks, render, write_report

T0 = 1_700_006_400.0  # 2023-11-15 00:00:00 UTC
BOT, CAM, PLUG = "aa:00:00:00:00:01", "aa:00:00:00:00:02", "aa:00:00:00:00:03"
BUCKET = 60.0


def _device(key: str, ip: str, device_type: str | None, flows: list[float], alerts: list[float],
            status: str = "known") -> DeviceState:  # fmt: skip
    st = DeviceState(key, key, ip, 20, status=status, device_type=device_type,
                     vote_type=device_type or "lockly_hub", confidence=0.93, fit=0.97,
                     memory=20, n_classes=2)  # fmt: skip
    for t in flows:
        st.timeline.setdefault(int(t // BUCKET), [0, 0])[0] += 1
    for t in alerts:
        st.timeline.setdefault(int(t // BUCKET), [0, 0])[1] += 1
    st.flows, st.alerts = len(flows), len(alerts)
    return st


def _alert(i: int, t: float, mac: str, **kw: Any) -> dict[str, Any]:
    a = {"id": i, "ts": t - 1, "detected_ts": t, "device_mac": mac, "device_ip": "192.168.1.20",
         "device_type": "lockly_hub", "proto": 6, "device_port": 41000 + i % 7,
         "peer_ip": "185.244.25.235", "peer_port": 6667, "score": None, "threshold": 4.1,
         "reason": "service",
         "why": "new service tcp/6667 as client; never seen for lockly_hub in training"}  # fmt: skip
    a.update(kw)
    return a


def _scene() -> tuple[SimpleNamespace, dict[str, Any], list[dict[str, Any]], list[dict]]:
    burst = [T0 + 13 * 3600 + i * 0.5 for i in range(300)]  # 13:00, 150 s
    odd = [T0 + 3 * 3600, T0 + 17 * 3600 + 120]
    alerts = [_alert(i, t, BOT) for i, t in enumerate(burst, 1)]
    alerts += [_alert(1000 + k, t, CAM, reason="behaviour", score=12.3, peer_ip="2001:db8::7",
                      peer_port=443, device_port=52000, device_ip="192.168.1.30",
                      device_type="nest_camera",
                      why="reconstruction error 12.3 > threshold 4.1 (size_sent_1, iat_recv_2)")
               for k, t in enumerate(odd)]  # fmt: skip
    alerts.sort(key=lambda a: a["detected_ts"])
    inc = Incidents()
    for a in alerts:
        inc.add(a)
    day = [T0 + k * 300 for k in range(288)]
    devices = {
        BOT: _device(BOT, "192.168.1.20", "lockly_hub", day, burst),
        CAM: _device(CAM, "192.168.1.30", "nest_camera", day, odd),
        PLUG: _device(PLUG, "192.168.1.40", "tplink_plug", day[:40], []),
    }
    monitor = SimpleNamespace(devices=devices, bucket_s=BUCKET,
                              bundle=SimpleNamespace(path=Path("models/bundle"),
                                                     manifest={"classifier": {"name": "forest"}}))  # fmt: skip
    summary = {
        "packets": 123456, "flows_seen": 616, "seconds": 2.5, "alerts": 302,
        "alerts_per_device_type": {"lockly_hub": 300, "nest_camera": 2},
        "unknown_devices": [], "files": ["day.pcap"],
        "devices": {BOT: {"modelled": True}, CAM: {"modelled": True},
                    PLUG: {"modelled": False, "device_type": "tplink_plug"}},
        "not_modelled": {"tplink_plug": "32 training flows < 50"},
        "incidents": inc.summary(),
    }  # fmt: skip
    return monitor, summary, inc.finish(), alerts


def test_the_report_shows_incidents_axis_alerts_and_why(tmp_path: Path) -> None:
    monitor, summary, incidents, alerts = _scene()
    assert len(incidents) == 1
    path = tmp_path / "r" / "report.html"
    write_report(path, monitor, summary, incidents, alerts)
    text = path.read_text()
    assert "<script" not in text and "http" not in text.replace("http://www.w3.org", "")
    # the incident row: number, device, span, alerts, service, peer, why
    row = re.search(r"<tr><td>#1</td>.*?</tr>", text, re.S)
    assert row is not None
    row_text = row.group(0)
    for part in (BOT, "2023-11-15 13:00:00 – 13:02:29", "300", "tcp/6667 client (300)",
                 "185.244.25.235 (300)", "300 alerts in 2 min: new service tcp/6667 as client"):  # fmt: skip
        assert part in row_text, part
    # the time axis: round UTC times under each timeline, the date on the first label
    assert "2023-11-15 00:00</text>" in text and ">06:00</text>" in text
    assert text.count("<svg") == 3
    assert 'fill="#f6c343"' in text  # the incident, shaded
    # devices: compromised / ok / not modelled with its reason, never "0 alerts"
    assert "compromised</span> (1 incident)" in text
    assert "not modelled: 32 training flows &lt; 50" in text
    plug_row = re.search(rf"<tr><td><a href=\"#dev-\d\">{PLUG}</a>.*?</tr>", text, re.S)
    assert plug_row is not None and "n/a" in plug_row.group(0)
    assert not re.search(r"\b0 alerts", text)
    # alert rows: isolated ones, IPv6 peers bracketed, reasons, scores, the why
    assert "[2001:db8::7]:443" in text and "isolated" in text
    assert "reconstruction error 12.3 &gt; threshold 4.1 (size_sent_1, iat_recv_2)" in text
    cam_rows = re.findall(r"<tr><td class=nowrap>2023-11-15 (?:03:00:00|17:02:00)</td>", text)
    assert len(cam_rows) == 2
    # the burst: the opening alerts are shown in the incident too; 200 rows and a note
    assert text.count("<td>#1</td>") >= MAX_ALERT_ROWS
    assert f"{300 - MAX_ALERT_ROWS} more in the alerts file" in text
    # the summary as a table, nested keys flattened
    assert "<th>alerts_per_device_type.lockly_hub</th><td>300</td>" in text
    assert "<th>incidents.devices_compromised</th>" in text
    assert "<pre>" not in text


def test_the_old_call_has_no_incident_or_alert_sections() -> None:
    monitor, summary, _, _ = _scene()
    text = render(monitor, summary)
    assert "<h2>Incidents</h2>" not in text and "<h2>Alerts</h2>" not in text
    assert text.count("<svg") == 3 and "not modelled: 32 training flows" in text


def test_no_incidents_says_so() -> None:
    monitor, summary, _, _ = _scene()
    text = render(monitor, summary, [], [])
    assert "No incidents." in text


def test_traffic_text_is_escaped() -> None:
    monitor, summary, incidents, alerts = _scene()
    alerts[0]["why"] = "<img src=x onerror=alert(1)>"
    incidents[0]["why"] = "<b>bold</b>"
    summary["not_modelled"]["tplink_plug"] = "<i>x</i>"
    text = render(monitor, summary, incidents, alerts)
    assert "<img" not in text and "<b>bold</b>" not in text and "<i>x</i>" not in text


def test_axis_ticks_are_round_and_few() -> None:
    day = axis_ticks(T0, T0 + 86400)
    assert [label for _, label in day[:2]] == ["2023-11-15 00:00", "06:00"]
    assert 3 <= len(day) <= 8
    week = axis_ticks(T0 + 100, T0 + 7 * 86400)
    assert week[0][1] == "2023-11-16" and all(t % 86400 == 0 for t, _ in week)
    short = axis_ticks(T0 + 5, T0 + 65)
    assert short[0][1] == "2023-11-15 00:00:10" and short[1][1] == "00:00:20"
