"""The watch stage's scoring on hand-made flows, alerts and ground truth."""

from __future__ import annotations

import pandas as pd
import pytest

from iotwatch.watch import DAY, score

START = 1_700_000_000.0
HUB = ("aa:00:00:00:00:01", "192.168.1.10", "hub", "hub-1")
CAM = ("aa:00:00:00:00:02", "192.168.1.11", "cam", "cam-1")


def _flows() -> pd.DataFrame:
    rows = []
    for k in range(20):  # two days of the hub's own service, and the camera's
        for mac, ip, kind, name in (HUB, CAM):
            rows.append((mac, ip, 40000 + k, "52.1.1.1", 443, START + k * 0.1 * DAY, kind, name))
    for k in range(5):  # the infection: C&C from the hub, one day in
        rows.append((HUB[0], HUB[1], 50000 + k, "185.1.1.1", 6667, START + DAY + k * 10, "hub",
                     "hub-1"))  # fmt: skip
    f = pd.DataFrame(rows, columns=["dev_mac", "dev_ip", "dev_port", "peer_ip", "peer_port",
                                    "start", "device_type", "device_name"])  # fmt: skip
    f["end"] = f["start"] + 5
    f["proto"] = 6
    f["device_known"] = True
    return f


def _alert(row: pd.Series, detected: float, incident: int | None) -> dict:
    return {"device_mac": row.dev_mac, "device_ip": row.dev_ip, "device_port": row.dev_port,
            "peer_ip": row.peer_ip, "peer_port": row.peer_port, "proto": 6,
            "flow_start": row.start, "flow_end": row.end, "detected_ts": detected,
            "incident": incident}  # fmt: skip


def test_false_alerts_recall_and_time_to_first_alert() -> None:
    flows = _flows()
    attack = flows[flows["peer_port"] == 6667]
    truth = pd.DataFrame({"attack_type": "mirai", "device_type": "hub", "device_name": "hub-1",
                          "proto": "tcp", "src_ip": attack["dev_ip"], "src_port": attack["dev_port"],
                          "dst_ip": attack["peer_ip"], "dst_port": attack["peer_port"],
                          "start": attack["start"], "end": attack["end"]}).reset_index(drop=True)  # fmt: skip
    alerts = [_alert(r, r.start + 2, 1) for r in attack.iloc[1:].itertuples()]  # 4 of 5 caught
    legit = flows[(flows["peer_port"] == 443) & (flows["dev_mac"] == HUB[0])]
    alerts.append(_alert(legit.iloc[3], legit.iloc[3].start, None))  # one false alert (hub)
    summary = {
        "devices": {HUB[0]: {"mac": HUB[0], "device_type": "hub", "modelled": True},
                    CAM[0]: {"mac": CAM[0], "device_type": "hub", "modelled": True}},
        "incidents": [{"id": 1, "device_mac": HUB[0]}],
    }  # fmt: skip
    m = score(flows, alerts, summary, truth, START)
    hub, cam = m["devices"]["hub-1"], m["devices"]["cam-1"]
    assert hub["attack_flows"] == 5 and hub["false_alerts"] == 1 and hub["placed_right"]
    assert hub["false_incidents"] == 0  # its one incident holds attack flows
    assert hub["false_alerts_per_day"] == pytest.approx(1 / m["watch_days"], rel=1e-3)
    assert not cam["placed_right"] and cam["false_alerts"] == 0  # the camera voted hub
    inf = m["infections"]["hub-1"]
    assert inf["flows"] == 5 and inf["flows_alerted"] == 4 and inf["recall"] == 0.8
    # the first alert is the second attack flow's, 10 s after the first packet, + 2 s
    assert inf["seconds_to_first_alert"] == pytest.approx(12.0)
    assert (
        not m["all_placed_right"] and m["worst_false_alerts_per_day"] == hub["false_alerts_per_day"]
    )


def test_no_ground_truth_counts_every_alert_false() -> None:
    flows = _flows()
    alerts = [_alert(flows.iloc[0], flows.iloc[0].start, 7)]
    summary = {"devices": {HUB[0]: {"mac": HUB[0], "device_type": "hub", "modelled": True}},
               "incidents": [{"id": 7, "device_mac": HUB[0]}]}  # fmt: skip
    m = score(flows, alerts, summary, None, START)
    assert m["infections"] == {}
    assert m["devices"]["hub-1"]["false_alerts"] == 1
    assert m["devices"]["hub-1"]["false_incidents"] == 1
