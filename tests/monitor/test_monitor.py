"""`iotwatch monitor` offline: the two-step detector on a home it has never seen."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.monitor.conftest import LOCAL_NET, flow_key, read_alerts

from iotwatch.cli import main as cli

ALERT_FIELDS = {"time", "ts", "device_mac", "device_ip", "device_type", "confidence", "proto",
                "device_port", "peer_ip", "peer_port", "flow_start", "flow_end", "score",
                "threshold", "top_features", "judged", "capture", "id", "detected_ts",
                "reason", "why", "incident"}  # fmt: skip


def _monitor(source: Path, bundle: Path, tmp: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    tmp.mkdir(parents=True, exist_ok=True)
    rc = cli(["monitor", str(source), "--model", str(bundle), "--out", str(tmp / "alerts.jsonl"),
              "--summary", str(tmp / "summary.json"), "--local-net", LOCAL_NET, *extra])  # fmt: skip
    summary = json.loads((tmp / "summary.json").read_text()) if (tmp / "summary.json").exists() \
        else {}  # fmt: skip
    return rc, summary


@pytest.fixture(scope="module")
def unseen(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("unseen")
    rc, summary = _monitor(trained.other_home, trained.bundle, out, "--report",
                           str(out / "report.html"))  # fmt: skip
    assert rc == 0
    return out, summary


def _truth(home: Path) -> dict[str, str]:
    from iotwatch.inventory import read_inventory_csv

    return {d.mac: d.device_type for d in read_inventory_csv(home / "inventory.csv").devices}


def test_every_device_gets_its_type_on_an_unseen_home(trained, unseen) -> None:
    _, summary = unseen
    for mac, device_type in _truth(trained.other_home).items():
        assert summary["devices"][mac]["device_type"] == device_type, str(summary["devices"][mac])
    assert summary["unknown_devices"] == []


def test_alerts_are_the_attacks(trained, unseen) -> None:
    import pandas as pd

    from iotwatch.features import match_ground_truth, read_ground_truth

    out, summary = unseen
    alerts = read_alerts(out / "alerts.jsonl")
    assert alerts and all(set(a) >= ALERT_FIELDS for a in alerts)
    behaviour = [a for a in alerts if a["reason"] == "behaviour"]
    service = [a for a in alerts if a["reason"] == "service"]
    assert len(behaviour) + len(service) == len(alerts) and service  # attacks use new services
    assert all(a["score"] > a["threshold"] for a in behaviour)
    assert all(len(a["top_features"]) == 3 for a in behaviour)
    assert all(a["score"] is None and a["why"].startswith("new service ") for a in service)
    assert all(a["top_features"] == [] for a in service)
    mal = {p.name for p in (trained.other_home / "malicious").glob("*.pcap")}
    attack_flows = sum(v for k, v in summary["flows_per_capture"].items() if k in mal)
    benign_flows = summary["flows_seen"] - attack_flows
    on_attacks = [a for a in alerts if a["capture"] in mal]
    frame = pd.DataFrame({"proto": [a["proto"] for a in on_attacks],
                          "dev_ip": [a["device_ip"] for a in on_attacks],
                          "dev_port": [a["device_port"] for a in on_attacks],
                          "peer_ip": [a["peer_ip"] for a in on_attacks],
                          "peer_port": [a["peer_port"] for a in on_attacks],
                          "start": [a["flow_start"] for a in on_attacks],
                          "end": [a["flow_end"] for a in on_attacks]})  # fmt: skip
    matched = match_ground_truth(frame, read_ground_truth(trained.other_home / "ground_truth.csv"))
    recall = int((matched >= 0).sum()) / attack_flows
    fpr = (len(alerts) - len(on_attacks)) / benign_flows
    assert recall >= 0.8, recall  # tiny models; the benchmark measures the real ones
    assert fpr <= 0.1, fpr


def test_each_flow_is_judged_once(trained, unseen) -> None:
    """Flows reaching N packets each way are judged early and skipped when they end."""
    import dataclasses

    from iotwatch.bundle import load_bundle
    from iotwatch.flowmeter import meter_captures
    from iotwatch.ingest import list_captures

    out, summary = unseen
    cfg = dataclasses.replace(load_bundle(trained.bundle).flow_config, local_networks=[LOCAL_NET])
    n = 0
    for f in list_captures(trained.other_home):
        n += meter_captures([f], cfg).table.num_rows
    assert summary["flows_seen"] == n
    alerts = read_alerts(out / "alerts.jsonl")
    keys = [(*flow_key(a), a["flow_start"]) for a in alerts]
    assert len(keys) == len(set(keys))
    # judged at N packets each way, or (a new service) at its first packets
    assert any(a["judged"] in ("early", "new") for a in alerts)


def test_every_flow_is_counted_under_a_type(trained, unseen) -> None:
    """A device's first window of flows waits for its vote, then is scored (or counted unknown)
    too: once lost when the vote was decided before the waiting flows were released."""
    _, summary = unseen
    assert sum(summary["flows_per_device_type"].values()) == summary["flows_seen"]
    assert sum(d["flows"] for d in summary["devices"].values()) <= summary["flows_seen"]


def test_same_capture_same_alerts(trained, unseen, tmp_path: Path) -> None:
    out, _ = unseen
    rc, _ = _monitor(trained.other_home, trained.bundle, tmp_path)
    assert rc == 0
    assert (tmp_path / "alerts.jsonl").read_bytes() == (out / "alerts.jsonl").read_bytes()


def test_a_type_the_models_never_saw_is_unknown_and_not_scored(trained, tmp_path: Path) -> None:
    held = "nest_camera"
    rc, summary = _monitor(trained.other_home, trained.make(held), tmp_path)
    assert rc == 0
    truth = _truth(trained.other_home)
    cam = next(mac for mac, t in truth.items() if t == held)
    assert summary["unknown_devices"] == [cam]
    assert summary["devices"][cam]["alerts"] == 0
    assert summary["flows_per_device_type"]["unknown"] >= summary["devices"][cam]["flows"]
    for mac, t in truth.items():
        if t != held:
            assert summary["devices"][mac]["device_type"] == t
    assert all(a["device_mac"] != cam for a in read_alerts(tmp_path / "alerts.jsonl"))


def test_report_has_a_timeline_per_device(trained, unseen) -> None:
    out, _ = unseen
    text = (out / "report.html").read_text()
    assert text.count("<svg") == len(_truth(trained.other_home))
    for mac in _truth(trained.other_home):
        assert mac in text
    assert "<script" not in text


def test_a_damaged_capture_is_one_line_and_keeps_the_alerts(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    day = next((trained.other_home / "benign").glob("*.pcap"))
    attack = trained.other_home / "malicious" / "nest_camera.pcap"
    shutil.copy(day, src / "a-day.pcap")  # the camera's identity first, then its attack
    shutil.copy(attack, src / "b-attack.pcap")
    (src / "c-bad.pcap").write_bytes(attack.read_bytes()[:24] + b"\x7f" * 64)
    rc, summary = _monitor(src, trained.bundle, tmp_path / "both")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("iotwatch monitor: error: ") and "c-bad.pcap" in err[-1]
    assert sum("error" in line for line in err) == 1
    (src / "c-bad.pcap").unlink()
    rc_good, _ = _monitor(src, trained.bundle, tmp_path / "good")
    assert rc_good == 0
    kept = (tmp_path / "both" / "alerts.jsonl").read_bytes()
    assert kept and kept == (tmp_path / "good" / "alerts.jsonl").read_bytes()
    assert summary["error"] and summary["flows_seen"] > 0


def test_interrupt_prints_the_summary_and_keeps_the_alerts(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from iotwatch.monitor.run import Run

    real = Run.captures

    def two_then_interrupt(self: Run, files: list[Path]) -> None:
        real(self, files[:2])  # a benign day, then the first device's attacks
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "captures", two_then_interrupt)
    from iotwatch.ingest import list_captures

    files = list_captures(trained.other_home)
    rc, summary = _monitor(trained.other_home, trained.bundle, tmp_path)
    err = capsys.readouterr().err
    assert rc == 130
    assert "[interrupted]" in err and "flows per device type" in err
    assert summary["interrupted"] and summary["files"] == [str(f) for f in files[:2]]
    assert read_alerts(tmp_path / "alerts.jsonl")  # kept, and whole lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interface", "nosuch-if0"], "nosuch-if0: no such network interface"),
        (["SRC", "--interface", "lo"], "either a capture SOURCE or --interface"),
        (["EMPTY"], "no capture files found"),
        (["NOWHERE"], "no such capture file or directory"),
    ],
)
def test_bad_arguments_are_one_line(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    subs = {"SRC": str(trained.other_home), "EMPTY": str(tmp_path / "empty"),
            "NOWHERE": str(tmp_path / "nowhere")}  # fmt: skip
    argv = [subs.get(a, a) for a in args]
    rc = cli(["monitor", *argv, "--model", str(trained.bundle), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err


def test_the_fifth_device_type_is_unknown_and_the_others_are_not(hue_home, trained, tmp_path):
    rc, summary = _monitor(hue_home, trained.bundle, tmp_path)
    assert rc == 0
    truth = _truth(hue_home)
    hue = [mac for mac, t in truth.items() if t == "hue_bridge"]
    assert len(hue) == 1
    assert summary["unknown_devices"] == hue
    for mac, t in truth.items():
        if t != "hue_bridge":
            assert summary["devices"][mac]["device_type"] == t, summary["devices"][mac]
    assert all(a["device_mac"] != hue[0] for a in read_alerts(tmp_path / "alerts.jsonl"))
