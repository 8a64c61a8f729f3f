"""Incidents from hand-made alert timelines (``iotwatch.monitor.incidents``)."""

from __future__ import annotations

import json
from itertools import count
from typing import Any

import pytest

from iotwatch.monitor.incidents import MAX_ALERT_IDS, IncidentRule, Incidents, service_of

DAY = 86_400.0
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
BOT = "aa:aa:aa:aa:aa:01"
CAM = "aa:aa:aa:aa:aa:02"

_ids = count(1)


def alert(t: float, mac: str | None = BOT, *, reason: str = "service", peer: str = "185.244.25.235",
          peer_port: int = 6667, device_port: int = 40000, proto: int = 6,
          score: float | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    a = {"time": "", "ts": t - 0.5, "detected_ts": t, "id": next(_ids), "device_mac": mac,
         "device_ip": "192.168.1.20", "device_type": "lockly_hub", "confidence": 0.9,
         "proto": proto, "device_port": device_port, "peer_ip": peer, "peer_port": peer_port,
         "score": score if reason == "behaviour" else None, "threshold": 4.1, "reason": reason,
         "why": "test"}  # fmt: skip
    a.update(extra)
    return a


def feed(inc: Incidents, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    opened = []
    for a in alerts:
        opened += inc.add(a)
    return opened


def test_one_odd_flow_a_day_is_never_an_incident() -> None:
    inc = Incidents()
    alerts = [alert(T0 + d * DAY) for d in range(7)]
    assert feed(inc, alerts) == []
    assert inc.finish() == []
    assert all(a["incident"] is None for a in alerts)
    assert inc.device_summary(BOT) == {"incidents": 0, "isolated_alerts": 7, "compromised": False}
    s = inc.summary()
    assert s["incidents"] == 0 and s["isolated_alerts"] == 7 and s["devices_compromised"] == []
    assert s["rule"] == {"min_alerts": 3, "window_s": 600.0, "gap_s": 1800.0}


def test_a_burst_is_one_incident_with_its_opening_alerts() -> None:
    inc = Incidents()
    alerts = [alert(T0 + i * 300 / 499) for i in range(500)]  # 500 alerts over 5 min
    opened = feed(inc, alerts)
    assert len(opened) == 1
    first = opened[0]
    assert first["kind"] == "incident" and first["id"] == 1 and first["alerts"] == 3
    assert first["alert_ids"] == [a["id"] for a in alerts[:3]]
    assert first["start"] == alerts[0]["detected_ts"]
    # the opening alerts were written before the incident existed: None in the stream
    assert [a["incident"] for a in alerts[:3]] == [None, None, 1]
    assert all(a["incident"] == 1 for a in alerts[2:])
    [rec] = inc.finish()
    assert rec["alerts"] == 500
    assert rec["start"] == T0 and rec["end"] == pytest.approx(T0 + 300)
    assert rec["start_time"].startswith("2023-11-14T22:13:20") and rec["end_time"].endswith(
        "+00:00"
    )
    assert rec["alert_ids"] == [a["id"] for a in alerts[:MAX_ALERT_IDS]]
    assert rec["opened_by"] == alerts[2]["id"]
    assert rec["device"] == BOT and rec["device_type"] == "lockly_hub"
    assert inc.device_summary(BOT) == {"incidents": 1, "isolated_alerts": 0, "compromised": True}
    assert inc.summary()["devices_compromised"] == [BOT]
    assert inc.summary()["alerts_in_incidents"] == 500
    json.dumps(rec)  # a record is JSON as it is


def test_a_new_burst_after_the_gap_is_a_new_incident() -> None:
    inc = Incidents()
    first = [alert(T0 + i * 10) for i in range(20)]
    second = [alert(T0 + 2 * 3600 + i * 10) for i in range(30)]
    opened = feed(inc, first + second)
    assert [r["id"] for r in opened] == [1, 2]
    recs = inc.finish()
    assert [r["alerts"] for r in recs] == [20, 30]
    assert recs[1]["start"] == T0 + 2 * 3600
    assert inc.device_summary(BOT)["incidents"] == 2
    # the second burst's first two alerts waited in the window: isolated when written
    assert [a["incident"] for a in second[:3]] == [None, None, 2]


def test_a_slow_trickle_keeps_one_incident_open() -> None:
    """Alerts every 20 min (< gap_s) after a burst extend it: still one incident."""
    inc = Incidents()
    alerts = [alert(T0 + i) for i in range(3)] + [alert(T0 + 1200 * k) for k in range(1, 10)]
    feed(inc, alerts)
    [rec] = inc.finish()
    assert rec["alerts"] == 12 and rec["end"] == T0 + 1200 * 9


def test_devices_interleaved_are_independent() -> None:
    inc = Incidents()
    alerts = []
    for i in range(10):
        alerts.append(alert(T0 + i * 5, BOT))  # a burst
        alerts.append(alert(T0 + i * 5 + 1, CAM if i % 5 == 0 else None))  # 2 odd flows
    ip_only = [a for a in alerts if a["device_mac"] is None]
    for a in ip_only:
        a["device_ip"] = "192.168.1.30"
    opened = feed(inc, alerts)
    assert [r["device"] for r in opened] == [BOT, "ip:192.168.1.30"]
    recs = {r["device"]: r for r in inc.finish()}
    assert recs[BOT]["alerts"] == 10 and recs["ip:192.168.1.30"]["alerts"] == 8
    assert recs["ip:192.168.1.30"]["device_mac"] is None
    assert inc.device_summary(CAM) == {"incidents": 0, "isolated_alerts": 2, "compromised": False}
    assert inc.device_summary("nobody") == {"incidents": 0, "isolated_alerts": 0,
                                            "compromised": False}  # fmt: skip
    assert inc.summary()["devices_compromised"] == sorted([BOT, "ip:192.168.1.30"])


def test_the_window_is_inclusive() -> None:
    rule = IncidentRule(min_alerts=3, window_s=600.0, gap_s=1800.0)
    exactly = Incidents(rule)
    feed(exactly, [alert(T0), alert(T0 + 300), alert(T0 + 600)])  # first and last 600 s apart
    assert len(exactly.finish()) == 1
    beyond = Incidents(rule)
    feed(beyond, [alert(T0), alert(T0 + 300), alert(T0 + 600.001)])
    assert beyond.finish() == []
    # the first fell out of the window; a fourth alert 600 s after the second opens it
    assert len(feed(beyond, [alert(T0 + 900)])) == 1
    [rec] = beyond.finish()
    assert rec["alerts"] == 3 and rec["start"] == T0 + 300
    assert beyond.device_summary(BOT)["isolated_alerts"] == 1


def test_the_gap_is_inclusive() -> None:
    rule = IncidentRule(min_alerts=3, window_s=600.0, gap_s=1800.0)
    burst = [alert(T0 + i) for i in range(3)]  # ends at T0 + 2
    exactly = Incidents(rule)
    feed(exactly, [*burst, alert(T0 + 2 + 1800)])  # exactly gap_s of silence: same incident
    [rec] = exactly.finish()
    assert rec["alerts"] == 4
    beyond = Incidents(rule)
    late = alert(T0 + 2 + 1800.001)
    feed(beyond, [*[alert(T0 + i) for i in range(3)], late])
    [rec] = beyond.finish()
    assert rec["alerts"] == 3 and late["incident"] is None
    assert beyond.device_summary(BOT) == {"incidents": 1, "isolated_alerts": 1, "compromised": True}
    assert beyond.ended(T0 + 2 + 1800) == [] and beyond.ended(T0 + 2 + 1800.5) == [1]
    assert beyond.record(1)["alerts"] == 3


def test_the_record_counts_services_peers_and_reasons() -> None:
    inc = Incidents()
    alerts = (
        [alert(T0 + i, peer=f"185.244.25.{235 + i % 2}") for i in range(400)]  # irc client
        + [alert(T0 + 400 + i, reason="behaviour", score=5.0 + i, peer="10.0.0.9", peer_port=51000,
                 device_port=8080, top_features=[{"feature": "size_sent_1", "share": 0.6},
                                                 {"feature": "iat_recv_2", "share": 0.2}])
           for i in range(12)]  # served on its own port 8080
        + [alert(T0 + 420, proto=17, peer_port=53, device_port=53, peer="8.8.8.8")]
    )  # fmt: skip
    feed(inc, alerts)
    [rec] = inc.finish()
    assert rec["alerts"] == 413
    assert rec["services"] == {"tcp/6667 client": 400, "tcp/8080 server": 12,
                               "udp/53 server": 1}  # fmt: skip
    assert rec["services_other"] == 0
    assert rec["new_services"] == {"tcp/6667 client": 400, "udp/53 server": 1}
    assert rec["peers"] == {"185.244.25.235": 200, "185.244.25.236": 200, "10.0.0.9": 12,
                            "8.8.8.8": 1}  # fmt: skip
    assert rec["reasons"] == {"service": 401, "behaviour": 12}
    assert rec["peak_score"] == 16.0
    assert rec["features"] == {"size_sent_1": 12, "iat_recv_2": 12}
    why = rec["why"]
    assert why.startswith("413 alerts in 7 min: new services tcp/6667 as client (400)")
    assert "behaviour (12: size_sent_1, iat_recv_2, peak score 16)" in why
    assert "185.244.25.235 (200)" in why and "10.0.0.9 (12)" in why


def test_peers_are_capped_and_still_add_up() -> None:
    inc = Incidents()
    feed(inc, [alert(T0 + i * 0.01, peer=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
               for i in range(5_000)])  # fmt: skip
    [rec] = inc.finish()
    assert len(rec["peers"]) == 10
    assert sum(rec["peers"].values()) + rec["peers_other"] == 5_000
    assert "and 4997 alerts to others" in rec["why"]


def test_service_names() -> None:
    assert service_of({"proto": 6, "device_port": 40000, "peer_port": 23}) == "tcp/23 client"
    assert service_of({"proto": 6, "device_port": 23, "peer_port": 40000}) == "tcp/23 server"
    assert service_of({"proto": 17, "device_port": 5353, "peer_port": 5353}) == "udp/5353 server"
    assert service_of({"proto": 1, "device_port": 0, "peer_port": 0}) == "icmp"
    assert service_of({"proto": 132, "device_port": 9, "peer_port": 10}) == "proto132/9 server"


def test_score_none_means_a_service_alert_without_a_reason_field() -> None:
    inc = Incidents()
    alerts = [alert(T0 + i) for i in range(3)]
    for a in alerts:
        del a["reason"], a["id"]
    feed(inc, alerts)
    [rec] = inc.finish()
    assert rec["reasons"]["service"] == 3 and rec["alert_ids"] == []


def test_an_alert_without_a_time_is_refused() -> None:
    with pytest.raises(ValueError, match="detected_ts"):
        Incidents().add({"device_mac": BOT})


def test_a_bad_rule_is_refused_with_a_clear_message() -> None:
    for kwargs, word in [({"min_alerts": 0}, "min_alerts"), ({"min_alerts": 2.5}, "min_alerts"),
                         ({"min_alerts": True}, "min_alerts"), ({"window_s": 0}, "window_s"),
                         ({"window_s": -1.0}, "window_s"), ({"gap_s": float("nan")}, "gap_s"),
                         ({"gap_s": float("inf")}, "gap_s"), ({"gap_s": "30"}, "gap_s")]:  # fmt: skip
        with pytest.raises(ValueError, match=word):
            IncidentRule(**kwargs)
    assert IncidentRule(min_alerts=1, window_s=1, gap_s=0.5).gap_s == 0.5
