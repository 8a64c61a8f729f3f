"""The monitor's engine on hand-made flows: judging a placed device's flows of a table together
gives what judging them one by one gives, whatever the tables, also when its vote moves."""

from __future__ import annotations

import collections
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from iotwatch.monitor.engine import VOTE_UNITS, DeviceState, Monitor, _Ring
from iotwatch.monitor.openset import OpenSetRule


class _Proba:
    """Class "a" with the probability in feature column 0, "b" with the rest."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([x[:, 0], 1.0 - x[:, 0]])


class _Detector:
    """Scores a flow with feature column 1 (plus a per-type offset)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self.threshold = 0.5
        self.feature_names = ["p", "s"]

    def score(self, x: np.ndarray) -> np.ndarray:
        return x[:, 1] + self.offset

    def explain(self, x: np.ndarray, top: int) -> list[list[tuple[str, float]]]:
        return [[("s", 1.0)] for _ in x]

    def model_view(self, x: np.ndarray) -> np.ndarray:
        return x


def _bundle() -> Any:
    rule = OpenSetRule(window=5, memory=12, confidence={"a": 0.75, "b": 0.75}, fit=0.5,
                       fits={"a": 0.5, "b": 0.5})  # fmt: skip
    return SimpleNamespace(classes=["a", "b"], detectors={"a": _Detector(0.0), "b": _Detector(0.1)},
                           open_set=rule, feature_columns=["p", "s"], n_packets=10,
                           classifier=_Proba())  # fmt: skip


def _flows(seed: int) -> list[dict[str, Any]]:
    """Three devices, interleaved: one of type a whose flows drift to b and back (its vote
    leaves a, falls below the bar, returns), one steady b, one never confident (unknown)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(240):
        t = 1_700_000_000.0 + 37.0 * k
        drift = 0.95 if k < 60 or k > 170 else (0.1 if k < 120 else 0.55)
        for mac, p in (("aa:00:00:00:00:01", drift), ("aa:00:00:00:00:02", 0.1),
                       ("aa:00:00:00:00:03", 0.5)):  # fmt: skip
            if rng.random() < 0.3:
                continue
            s = 0.9 if k % 7 == 3 else rng.random() * 0.35  # some alerts
            rows.append({"dev_mac": mac, "dev_ip": f"10.0.0.{mac[-1]}", "dev_port": 80,
                         "peer_mac": None, "peer_ip": "1.2.3.4", "peer_port": 40000 + k,
                         "proto": 6, "start": t, "end": t + 5.0, "packets": 20, "bytes": 2000,
                         "end_reason": "fin", "capture": "c.pcap", "vlan": 0,
                         "p": float(np.clip(p + rng.normal(0, 0.05), 0, 1)), "s": s})  # fmt: skip
    return rows


class _Sink:
    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []

    def write(self, alerts: list[dict[str, Any]]) -> None:
        self.alerts.extend(a for a in alerts if a.get("kind") != "incident")


def _judge(rows: list[dict[str, Any]], tables: list[int], batched: bool) -> tuple[Any, ...]:
    sink = _Sink()
    mon = Monitor(_bundle(), sink)
    mon.batched = batched
    lo = 0
    for size in tables:
        part = rows[lo : lo + size]
        lo += size
        if part:
            mon.judge(pa.Table.from_pylist(part))
    mon.finish()
    summary = mon.summary()
    summary.pop("judge_seconds")
    states = {k: (st.status, st.device_type, st.confidence, st.fit, st.probs.history().tolist(),
                  st.accepts.history().tolist(), sorted(st.timeline.items()))
              for k, st in mon.devices.items()}  # fmt: skip
    return sink.alerts, summary, states


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_judging_together_equals_one_by_one_whatever_the_tables(seed: int) -> None:
    """Same alerts, summary and device states (votes, verdicts, timelines) with every flow in
    a table of its own, one table, or tables of any size; together or one by one."""
    rows = _flows(seed)
    reference = _judge(rows, [1] * len(rows), batched=False)
    alerts, summary, states = reference
    assert summary["devices"]["aa:00:00:00:00:03"]["status"] == "unknown"
    assert summary["devices"]["aa:00:00:00:00:02"]["device_type"] == "b"
    assert summary["devices"]["aa:00:00:00:00:01"]["device_type"] == "a"
    assert 10 < len(alerts) < len(rows) / 5
    rng = np.random.default_rng(seed)
    splits = [[len(rows)], [7] * (len(rows) // 7 + 1), list(rng.integers(1, 60, len(rows)))]
    for tables in splits:
        for batched in (True, False):
            assert _judge(rows, tables, batched) == reference, (tables[:3], batched)


def test_a_moving_vote_is_followed_flow_by_flow() -> None:
    """The drifting device leaves type a inside one table: the flows after that are not
    scored as a's (its confidences in the alerts follow the vote, flow by flow)."""
    rows = _flows(0)
    alerts, summary, _ = _judge(rows, [len(rows)], batched=True)
    drifting = [a for a in alerts if a["device_mac"] == "aa:00:00:00:00:01"]
    assert {a["device_type"] for a in drifting} == {"a", "b"}
    assert len({a["confidence"] for a in drifting}) > 3


def test_ring_sums_and_history_equal_a_deque() -> None:
    rng = np.random.default_rng(0)
    for cap in (1, 3, 7):
        ring, ref = _Ring(cap, 2), collections.deque(maxlen=cap)
        for _ in range(200):
            rows = rng.integers(0, 100, (int(rng.integers(0, 2 * cap + 2)), 2))
            if len(rows):
                sums, counts = ring.sums_after(rows)
                for t in range(len(rows)):
                    after = collections.deque(ref, maxlen=cap)
                    after.extend(rows[: t + 1].tolist())
                    assert sums[t].tolist() == np.sum(list(after), axis=0).tolist()
                    assert counts[t] == len(after)
            ring.push(rows)
            ref.extend(rows.tolist())
            assert ring.history().tolist() == [list(r) for r in ref]
            assert ring.sum.tolist() == (np.sum(list(ref), axis=0).tolist() if ref else [0, 0])


def test_votes_are_whole_units_of_probability() -> None:
    st = DeviceState("k", None, "10.0.0.1", window=2, memory=3, n_classes=2)
    for p in (0.1, 0.7, 0.7, 0.7):
        st.add_votes(*DeviceState.vote_rows(np.array([p, 1 - p]), np.array([1.0, np.nan])))
    j, conf, fit = st.vote()
    assert (j, fit) == (0, 1.0)
    assert conf == 3 * round(0.7 * VOTE_UNITS) / (3 * VOTE_UNITS)
    assert abs(conf - 0.7) < 1e-7
