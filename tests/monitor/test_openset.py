"""The open-set vote: its bars, its calibration and a device's running vote."""

from __future__ import annotations

import numpy as np

from iotwatch.monitor.engine import DeviceState
from iotwatch.monitor.openset import OpenSetRule, calibrate

CLASSES = ["a", "b", "c"]


def test_a_vote_needs_both_confidence_and_fit() -> None:
    rule = OpenSetRule(window=3, memory=5, confidence={"a": 0.6, "b": 0.9, "c": 0.5}, fit=0.7)
    assert rule.decide(np.array([0.7, 0.2, 0.1]), np.array([0.8, 1, 1]), CLASSES)[0] == "a"
    # confident, but a's autoencoder rejects most of the flows: unknown
    assert rule.decide(np.array([0.7, 0.2, 0.1]), np.array([0.3, 1, 1]), CLASSES)[0] is None
    # b wins, below b's own (higher) bar: unknown, and the winner is still reported
    placed, best, conf, _ = rule.decide(np.array([0.1, 0.8, 0.1]), np.ones(3), CLASSES)
    assert placed is None and best == "b" and conf == 0.8


def test_calibration_keeps_known_windows() -> None:
    rng = np.random.default_rng(0)
    n = 300
    labels = np.array(["a"] * n + ["b"] * n)
    probs = np.zeros((2 * n, 3))
    probs[:n, 0] = rng.uniform(0.6, 1.0, n)
    probs[n:, 1] = rng.uniform(0.55, 0.9, n)
    probs[:, 2] = 1 - probs.sum(axis=1)
    accepts = rng.random((2 * n, 3)) < 0.97
    devices = np.array(["d1"] * n + ["d2"] * n)
    rule, stats = calibrate(probs, accepts, CLASSES, labels, devices, np.arange(2 * n, dtype=float))
    assert rule.confidence["a"] > rule.confidence["b"]  # each type its own bar
    # c has no windows of its own: the bar of every type's windows together
    assert stats["per_type"]["c"]["windows"] == 0
    assert rule.confidence["b"] <= rule.confidence["c"] <= rule.confidence["a"]
    assert stats["known_right"] >= 0.98
    assert 0.5 < rule.fit < 1


def test_running_vote_equals_the_mean_of_the_last_flows() -> None:
    rng = np.random.default_rng(1)
    st = DeviceState("k", None, "10.0.0.1", window=4, memory=6)
    rows = rng.dirichlet(np.ones(3), 50)
    accepts = rng.random((50, 3)) < 0.5
    for p, a in zip(rows, accepts, strict=True):
        st.add_vote(p.tolist(), [float(v) for v in a])
    j, conf, fit = st.vote()
    mean = rows[-6:].mean(axis=0)
    assert j == int(np.argmax(mean))
    assert np.isclose(conf, mean[j]) and np.isclose(fit, accepts[-4:, j].mean())
