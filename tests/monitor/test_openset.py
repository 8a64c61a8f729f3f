"""The open-set vote: its bars, its calibration and a device's running vote."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iotwatch.monitor.engine import DeviceState
from iotwatch.monitor.openset import (
    OpenSetRule,
    binomial_bar,
    calibrate,
    out_of_fold_probs,
    time_blocks,
    wilson_lower,
)

CLASSES = ["a", "b", "c"]


def test_a_vote_needs_both_confidence_and_fit() -> None:
    rule = OpenSetRule(window=3, memory=5, confidence={"a": 0.6, "b": 0.9, "c": 0.5}, fit=0.7)
    assert rule.decide(np.array([0.7, 0.2, 0.1]), np.array([0.8, 1, 1]), CLASSES)[0] == "a"
    # confident, but a's autoencoder rejects most of the flows: unknown
    assert rule.decide(np.array([0.7, 0.2, 0.1]), np.array([0.3, 1, 1]), CLASSES)[0] is None
    # b wins, below b's own (higher) bar: unknown, and the winner is still reported
    placed, best, conf, _ = rule.decide(np.array([0.1, 0.8, 0.1]), np.ones(3), CLASSES)
    assert placed is None and best == "b" and conf == 0.8


def test_each_type_has_its_own_fit_bar() -> None:
    rule = OpenSetRule(
        confidence={"a": 0.5, "b": 0.5, "c": 0.5}, fit=0.6, fits={"a": 0.9, "b": 0.7}
    )
    assert not rule.passes("a", 0.9, 0.85)  # a's own bar
    assert rule.passes("b", 0.9, 0.75)
    assert rule.passes("c", 0.9, 0.65)  # no bar of its own: the rule's fit


def test_the_rule_round_trips_and_older_manifests_load() -> None:
    rule = OpenSetRule(confidence={"a": 0.9}, fit=0.8, fits={"a": 0.85})
    assert OpenSetRule.from_dict(rule.to_dict()) == rule
    old = {"window": 20, "memory": 200, "confidence": {"a": 0.9}, "fit": 0.8, "known_target": 0.99}
    loaded = OpenSetRule.from_dict(old)
    assert (
        loaded.fits == {} and loaded.passes("a", 0.95, 0.8) and not loaded.passes("a", 0.95, 0.75)
    )


def _validation(rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, ...]:
    labels = np.array(["a"] * n + ["b"] * n)
    probs = np.zeros((2 * n, 3))
    probs[:n, 0] = rng.uniform(0.6, 1.0, n)
    probs[n:, 1] = rng.uniform(0.55, 0.9, n)
    probs[:, 2] = 1 - probs.sum(axis=1)
    accepts = rng.random((2 * n, 3)) < 0.97
    devices = np.array(["d1"] * n + ["d2"] * n)
    return probs, accepts, labels, devices, np.arange(2 * n, dtype=float)


def test_calibration_keeps_known_windows() -> None:
    probs, accepts, labels, devices, times = _validation(np.random.default_rng(0))
    rule, stats = calibrate(probs, accepts, CLASSES, labels, devices, times)
    assert rule.confidence["a"] > rule.confidence["b"]  # each type its own bar
    # c has no flows of its own: the bars of every type's flows together
    assert rule.confidence["b"] <= rule.confidence["c"] <= rule.confidence["a"]
    assert stats["known_right"] >= 0.98
    assert all(0.5 < f < 1 for f in rule.fits.values()) and rule.fit == min(rule.fits.values())
    assert stats["confidence_from"] == ["validation"]
    again, _ = calibrate(probs, accepts, CLASSES, labels, devices, times)
    assert again == rule  # the random windows are drawn from a fixed seed
    # an autoencoder that accepted every validation flow: a window may still hold a rejection
    accepts[labels == "a", 0] = True
    strict, _ = calibrate(probs, accepts, CLASSES, labels, devices, times)
    assert 0.85 <= strict.fits["a"] < 1 and strict.passes("a", 1.0, 19 / 20)


def test_confidence_bar_is_the_quantile_of_random_windows() -> None:
    """A rare flow that votes elsewhere: the few windows of consecutive flows may all miss it,
    the bar must not (about 1 window in 10 holds one, more than the 0.5 % it may lose)."""
    n, window = 400, 20
    probs = np.zeros((n, 3))
    probs[:, 0] = 1.0
    stray = np.arange(0, n, 200)[:2]  # 2 flows in 400 vote c
    probs[stray] = [0.0, 0.0, 1.0]
    labels = np.array(["a"] * n)
    rule, _ = calibrate(probs, np.ones((n, 3), bool), CLASSES, labels, np.array(["d"] * n),
                        np.arange(n, dtype=float), window)  # fmt: skip
    assert math.isclose(rule.confidence["a"], (window - 1) / window)
    assert rule.passes("a", 1 - 1 / window, 1.0) and not rule.passes("a", 1 - 2 / window, 1.0)


def test_out_of_fold_pool_loosens_but_never_tightens_the_bars() -> None:
    probs, accepts, labels, devices, times = _validation(np.random.default_rng(1))
    alone, _ = calibrate(probs, accepts, CLASSES, labels, devices, times)
    lower = probs.copy()
    lower[:, :2] *= 0.8  # a new home's flows are voted less surely
    lower[:, 2] = 1 - lower[:, :2].sum(axis=1)
    looser, stats = calibrate(probs, accepts, CLASSES, labels, devices, times,
                              pool_probs=lower, pool_labels=labels)  # fmt: skip
    assert looser.confidence["a"] < alone.confidence["a"] - 0.05
    assert looser.confidence["b"] < alone.confidence["b"] - 0.05
    assert stats["confidence_from"] == ["out_of_fold", "validation"]
    surer = np.zeros_like(probs)
    surer[labels == "a", 0] = surer[labels == "b", 1] = 1.0
    same, _ = calibrate(probs, accepts, CLASSES, labels, devices, times,
                        pool_probs=surer, pool_labels=labels)  # fmt: skip
    assert same.confidence == alone.confidence
    assert looser.fits == alone.fits  # the fit bars come from validation only


def test_fit_bar_follows_the_autoencoders_acceptance() -> None:
    window, q = 20, 0.005
    # an autoencoder that accepted every validation flow still lets a window hold a rejection
    assert binomial_bar(wilson_lower(236, 236), window, q) == 0.9
    # the bar follows the acceptance rate (a threshold moved), not a fixed value
    bars = [binomial_bar(p, window, q) for p in (0.99, 0.97, 0.9, 0.8)]
    assert bars == sorted(bars, reverse=True) and bars[0] > bars[-1]
    # the bar is the q quantile of Binomial(window, p) / window
    for p in (0.99, 0.95, 0.8):
        k = round(binomial_bar(p, window, q) * window)
        cdf = [sum(math.comb(window, i) * p**i * (1 - p) ** (window - i) for i in range(j + 1))
               for j in (k - 1, k)]  # fmt: skip
        assert cdf[0] < q <= cdf[1]
    assert wilson_lower(100, 100) < 1 and wilson_lower(0, 100) == 0
    assert wilson_lower(90, 100) < 0.9 < wilson_lower(900, 1000) + 0.02


def test_time_blocks_are_runs_of_consecutive_flows_per_device() -> None:
    devices = np.array(["x", "y"] * 10)
    times = np.arange(20, dtype=float)[::-1].copy()  # rows in reverse time order
    block = time_blocks(devices, times, 5)
    for dev in ("x", "y"):
        rows = np.flatnonzero(devices == dev)
        in_time = block[rows[np.argsort(times[rows])]]
        assert in_time.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_out_of_fold_probs_judge_each_flow_with_a_model_that_never_saw_it() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(2)
    n = 400
    x = rng.normal(size=(n, 2))
    labels = rng.choice(["a", "b"], n)  # labels unrelated to x: nothing to learn
    model = KNeighborsClassifier(n_neighbors=1)
    in_sample = model.fit(x, labels).predict_proba(x)
    assert (in_sample.argmax(axis=1) == (labels == "b")).all()  # it remembers every flow
    oof = out_of_fold_probs(model, x, labels, np.array(["d"] * n), np.arange(n, dtype=float),
                            ["a", "b"])  # fmt: skip
    right = (oof.argmax(axis=1) == (labels == "b")).mean()
    assert 0.4 < right < 0.6
    # columns follow the classes given, whatever order the model keeps
    flipped = out_of_fold_probs(model, x, labels, np.array(["d"] * n), np.arange(n, dtype=float),
                                ["b", "a"])  # fmt: skip
    np.testing.assert_array_equal(flipped, oof[:, ::-1])
    with pytest.raises(ValueError):
        out_of_fold_probs(model, x, labels, np.array(["d"] * n), np.arange(n, dtype=float),
                          ["a", "b"], folds=1)  # fmt: skip


def test_export_calibrates_on_out_of_fold_probabilities(trained) -> None:
    from iotwatch.bundle import load_bundle, read_manifest

    m = read_manifest(trained.bundle)["open_set"]
    assert m["calibration"]["confidence_from"] == ["out_of_fold", "validation"]
    rule = load_bundle(trained.bundle).open_set
    assert set(rule.fits) == set(rule.confidence) and rule.fit == min(rule.fits.values())
    for t, p in m["calibration"]["per_type"].items():
        assert rule.confidence[t] == min(p["bars"].values())
        assert p["flows"]["out_of_fold"] > p["flows"]["validation"]  # train + validation


def test_running_vote_equals_the_mean_of_the_last_flows() -> None:
    rng = np.random.default_rng(1)
    st = DeviceState("k", None, "10.0.0.1", window=4, memory=6, n_classes=3)
    rows = rng.dirichlet(np.ones(3), 50)
    accepts = rng.random((50, 3)) < 0.5
    for p, a in zip(rows, accepts, strict=True):
        st.add_votes(*DeviceState.vote_rows(p, a.astype(float)))
    j, conf, fit = st.vote()
    mean = rows[-6:].mean(axis=0)
    assert j == int(np.argmax(mean))
    assert np.isclose(conf, mean[j]) and np.isclose(fit, accepts[-4:, j].mean())
