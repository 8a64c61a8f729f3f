"""Step 1 over time: a device's type is the soft vote of its recent flows, or unknown.

Each flow gets class probabilities from the recognition model and, under every known type, a
yes/no from that type's autoencoder (score <= threshold: "this profile accepts the flow"). Over
a device's last ``window`` flows, the vote is the mean probability vector: the winner is the
type, its mean probability the confidence. The device is that type when

* the confidence reaches the type's own bar (types the model confuses with each other, like the
  TP-Link bulb and plug, get lower bars than distinct ones), and
* the type's autoencoder accepts at least ``fit`` of the window's flows (a device of a type the
  models never saw may look most like some known type, but that type's profile rejects most of
  its flows);

otherwise it is an unknown device type (open set) and its flows are not scored by a wrong
profile. The bars are calibrated on the validation flows of known devices, windows of
``window`` consecutive flows per device, so that ``known_target`` of them are placed (the
quantile at (1 - known_target) / 2 of each criterion, so both together keep about
``known_target``). This follows Meidan et al. (2017), who vote over 20 TCP sessions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WINDOW = 20  # flows before a device's first vote, and of the fit test (Meidan et al.: 20)
MEMORY = 200  # flows a device's vote remembers once decided (its type is its long-run vote)
KNOWN_TARGET = 0.99  # share of known devices' validation windows the bars keep


@dataclass
class OpenSetRule:
    """The bars a device's vote must pass (``manifest.json`` ``open_set``)."""

    window: int = WINDOW
    memory: int = MEMORY
    confidence: dict[str, float] = field(default_factory=dict)  # per type
    fit: float = 0.0
    known_target: float = KNOWN_TARGET

    def decide(
        self, mean_probs: np.ndarray, fit_shares: np.ndarray, classes: list[str]
    ) -> tuple[str | None, str, float, float]:
        """(type or None for unknown, the vote's winner, confidence, fit) from the mean class
        probabilities of the voting flows and, per class, the share of them its autoencoder
        accepts."""
        j = int(np.argmax(mean_probs))
        conf = float(mean_probs[j])
        fit = float(fit_shares[j])
        best = classes[j]
        return (best if self.passes(best, conf, fit) else None), best, conf, fit

    def passes(self, best: str, conf: float, fit: float) -> bool:
        """Whether a vote for ``best`` with this confidence and fit places the device."""
        return conf >= self.confidence.get(best, 1.0) and fit >= self.fit

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "memory": self.memory, "confidence": dict(self.confidence), "fit": self.fit,
                "known_target": self.known_target}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenSetRule:
        rule = cls(
            window=int(data["window"]),
            memory=int(data["memory"]),
            confidence={str(k): float(v) for k, v in data["confidence"].items()},
            fit=float(data["fit"]),
            known_target=float(data["known_target"]),
        )
        if not 1 <= rule.window <= rule.memory:
            raise ValueError(f"need 1 <= window <= memory, got {rule.window}, {rule.memory}")
        return rule


def windows(order_groups: list[np.ndarray], window: int) -> Iterator[np.ndarray]:
    """Row positions of every window of ``window`` consecutive flows of each device (a device
    with fewer flows gives one window of all of them)."""
    for rows in order_groups:
        if len(rows) <= window:
            if len(rows):
                yield rows
            continue
        for lo in range(len(rows) - window + 1):
            yield rows[lo : lo + window]


def device_groups(device_ids: np.ndarray, times: np.ndarray) -> list[np.ndarray]:
    """Row positions per device, in time order."""
    out = []
    for dev in sorted(set(device_ids.tolist())):
        rows = np.flatnonzero(device_ids == dev)
        out.append(rows[np.argsort(times[rows], kind="stable")])
    return out


def window_votes(
    probs: np.ndarray,
    accepts: np.ndarray,
    classes: list[str],
    groups: list[np.ndarray],
    window: int,
) -> list[tuple[int, str, float, float]]:
    """(device group, winner, confidence, fit) of every window of each device."""
    rule = OpenSetRule(window=window)
    out = []
    for g, rows in enumerate(groups):
        for w in windows([rows], window):
            _, best, conf, fit = rule.decide(probs[w].mean(axis=0), accepts[w].mean(axis=0),
                                             classes)  # fmt: skip
            out.append((g, best, conf, fit))
    return out


def calibrate(
    probs: np.ndarray,
    accepts: np.ndarray,
    classes: list[str],
    labels: np.ndarray,
    device_ids: np.ndarray,
    times: np.ndarray,
    window: int = WINDOW,
    known_target: float = KNOWN_TARGET,
) -> tuple[OpenSetRule, dict[str, Any]]:
    """Bars from known devices' flows (validation): per type, the (1 - known_target) / 2
    quantile of the confidence of its correctly voted windows; the same quantile of every
    window's fit. Returns the rule and what it was fitted on."""
    q = (1.0 - known_target) / 2.0
    groups = device_groups(device_ids, times)
    votes = window_votes(probs, accepts, classes, groups, window)
    truth = [str(labels[rows[0]]) for rows in groups]
    conf: dict[str, float] = {}
    stats: dict[str, Any] = {"windows": len(votes), "per_type": {}}
    every = [c for g, b, c, _ in votes if b == truth[g]]
    for t in classes:
        mine = [c for g, b, c, _ in votes if b == truth[g] == t]
        pool = mine or every
        conf[t] = float(np.quantile(pool, q, method="lower")) if pool else 1.0
        stats["per_type"][t] = {"windows": len(mine), "confidence": conf[t]}
    fits = [f for _, _, _, f in votes]
    fit = float(np.quantile(fits, q, method="lower")) if fits else 0.0
    correct = sum(b == truth[g] for g, b, _, _ in votes)
    stats["window_accuracy"] = correct / len(votes) if votes else None
    rule = OpenSetRule(window=window, confidence=conf, fit=fit, known_target=known_target)
    placed = [rule.passes(best, c, f) and best == truth[g] for g, best, c, f in votes]
    stats["known_right"] = float(np.mean(placed)) if placed else None
    return rule, stats
