"""Step 1 over time: a device's type is the soft vote of its recent flows, or unknown.

Each flow gets class probabilities from the recognition model and, under every known type, a
yes/no from that type's autoencoder (score <= threshold: "this profile accepts the flow"). Over
a device's last ``window`` flows, the vote is the mean probability vector: the winner is the
type, its mean probability the confidence. The device is that type when

* the confidence reaches the type's own bar (types the model confuses with each other, like the
  TP-Link bulb and plug, get lower bars than distinct ones), and
* the type's autoencoder accepts at least its ``fits`` share of the window's flows (a device of
  a type the models never saw may look most like some known type, but that type's profile
  rejects most of its flows);

otherwise it is an unknown device type (open set) and its flows are not scored by a wrong
profile. This follows Meidan et al. (2017), who vote over 20 TCP sessions.

Calibration (``calibrate``): each criterion may lose (1 - known_target) / 2 of the known
devices' windows, so that both together keep about ``known_target`` of them placed.

* Confidence bars: per type, that quantile of the type's own mean probability over many windows
  of ``window`` flows drawn at random from its flows, with their out-of-fold probabilities
  (``out_of_fold_probs``: every device's train + validation flows cut into time blocks, each
  block predicted by a copy of the model fitted without it), or the same from the model's
  validation probabilities where that bar is looser. Windows of consecutive validation flows
  alone were too few (one device per type: ~200 flows, ~10 independent windows) to hold the
  rare flow that votes elsewhere and drags a window's mean down: their lowest quantile was
  far too high, and on a new home up to 28 % of a type's windows fell below it.
* Fit bars: per type, that quantile of Binomial(window, p) / window, p the one-sided 95 % lower
  (Wilson) bound of the share of the type's validation flows its autoencoder accepts. Its
  autoencoder is fitted on the training flows, so only validation flows say how often it
  accepts a flow it never saw; the bound keeps a type whose autoencoder accepted every
  validation flow from a bar of 1 (no window may then hold a single rejected flow), and the
  bar follows the autoencoder's threshold when that moves.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WINDOW = 20  # flows before a device's first vote, and of the fit test (Meidan et al.: 20)
MEMORY = 200  # flows a device's vote remembers once decided (its type is its long-run vote)
KNOWN_TARGET = 0.99  # share of known devices' windows the bars keep
OOF_FOLDS = 5  # time blocks per device of the out-of-fold probabilities
DRAWS = 200_000  # random windows per type a confidence bar is read from: over seeds the bar
# moves by 0.0005 (20,000 draws: 0.002, which moved 2 % of a look-alike unknown type's windows)
CHUNK = 50_000  # draws at a time (memory)
ACCEPT_Z = 1.645  # one-sided 95 % lower bound of an autoencoder's acceptance rate


@dataclass
class OpenSetRule:
    """The bars a device's vote must pass (``manifest.json`` ``open_set``)."""

    window: int = WINDOW
    memory: int = MEMORY
    confidence: dict[str, float] = field(default_factory=dict)  # per type
    fit: float = 0.0  # the fit bar of a type without its own in ``fits`` (the loosest of them)
    known_target: float = KNOWN_TARGET
    fits: dict[str, float] = field(default_factory=dict)  # per type (older bundles: none)

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

    def confidence_bar(self, device_type: str) -> float:
        """The confidence a vote for ``device_type`` needs (1 for a type without a bar)."""
        return self.confidence.get(device_type, 1.0)

    def fit_bar(self, device_type: str) -> float:
        """The fit a vote for ``device_type`` needs (``fit`` for a type without its own)."""
        return self.fits.get(device_type, self.fit)

    def passes(self, best: str, conf: float, fit: float) -> bool:
        """Whether a vote for ``best`` with this confidence and fit places the device."""
        return conf >= self.confidence_bar(best) and fit >= self.fit_bar(best)

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "memory": self.memory, "confidence": dict(self.confidence), "fit": self.fit,
                "fits": dict(self.fits), "known_target": self.known_target}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenSetRule:
        rule = cls(
            window=int(data["window"]),
            memory=int(data["memory"]),
            confidence={str(k): float(v) for k, v in data["confidence"].items()},
            fit=float(data["fit"]),
            known_target=float(data["known_target"]),
            fits={str(k): float(v) for k, v in data.get("fits", {}).items()},
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


def time_blocks(device_ids: np.ndarray, times: np.ndarray, folds: int) -> np.ndarray:
    """Block (0 .. folds - 1) of every row: each device's flows in time order cut into
    ``folds`` runs of consecutive flows, of (almost) equal length."""
    block = np.zeros(len(device_ids), np.int64)
    for rows in device_groups(device_ids, times):
        block[rows] = np.arange(len(rows)) * folds // len(rows)
    return block


def out_of_fold_probs(
    model: Any,
    x: Any,
    labels: np.ndarray,
    device_ids: np.ndarray,
    times: np.ndarray,
    classes: list[str],
    folds: int = OOF_FOLDS,
) -> np.ndarray:
    """Class probabilities (columns in ``classes`` order) of every row of ``x`` (a DataFrame
    or an array) from a copy of the unfitted or fitted scikit-learn ``model`` fitted on the
    other time blocks (``time_blocks``): each flow is judged by a model that saw none of its
    device's flows of that stretch of time, as a new home's flows are."""
    from sklearn.base import clone

    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    labels = np.asarray(labels).astype(str)
    block = time_blocks(np.asarray(device_ids), np.asarray(times, np.float64), folds)
    probs = np.zeros((len(labels), len(classes)))
    index = {c: j for j, c in enumerate(classes)}
    for b in range(folds):
        test = block == b
        if not test.any() or test.all():
            continue
        part = clone(model).fit(_rows(x, ~test), labels[~test])
        cols = [index[str(c)] for c in part.classes_]
        probs[np.ix_(np.flatnonzero(test), cols)] = part.predict_proba(_rows(x, test))
    return probs


def _rows(x: Any, mask: np.ndarray) -> Any:
    return x.iloc[np.flatnonzero(mask)] if hasattr(x, "iloc") else x[mask]


def resampled_quantile(
    values: np.ndarray, window: int, q: float, draws: int, rng: np.random.Generator
) -> float:
    """The ``q`` quantile of the mean of ``window`` values drawn at random (with replacement)
    from ``values``, over ``draws`` draws."""
    means = np.concatenate([
        values[rng.integers(0, len(values), (min(CHUNK, draws - lo), window))].mean(axis=1)
        for lo in range(0, draws, CHUNK)
    ])  # fmt: skip
    return float(np.quantile(means, q, method="lower"))


def wilson_lower(accepted: float, n: int, z: float = ACCEPT_Z) -> float:
    """One-sided lower (Wilson score) bound of a rate seen as ``accepted`` of ``n``."""
    p, z2 = accepted / n, z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z2 / n))


def binomial_bar(p: float, window: int, q: float) -> float:
    """The ``q`` quantile of Binomial(window, p) / window: the fit share a window of flows
    each accepted with probability ``p`` falls short of with probability below ``q``."""
    if p >= 1.0:
        return 1.0
    if p <= 0.0:
        return 0.0
    cdf = 0.0
    for k in range(window + 1):
        cdf += math.exp(math.lgamma(window + 1) - math.lgamma(k + 1) - math.lgamma(window - k + 1)
                        + k * math.log(p) + (window - k) * math.log1p(-p))  # fmt: skip
        if cdf >= q:
            return k / window
    return 1.0


def calibrate(
    probs: np.ndarray,
    accepts: np.ndarray,
    classes: list[str],
    labels: np.ndarray,
    device_ids: np.ndarray,
    times: np.ndarray,
    window: int = WINDOW,
    known_target: float = KNOWN_TARGET,
    *,
    pool_probs: np.ndarray | None = None,
    pool_labels: np.ndarray | None = None,
    draws: int = DRAWS,
    seed: int = 0,
) -> tuple[OpenSetRule, dict[str, Any]]:
    """Bars from known devices' flows (see the module docstring): ``probs``, ``accepts``,
    ``labels``, ``device_ids``, ``times`` are the validation flows'. A type's confidence bar
    is the looser of the bars its validation probabilities and, when given, its out-of-fold
    probabilities ``pool_probs`` / ``pool_labels`` (train + validation) give. A type with no
    flows of its own gets the bars of every type's flows together. Returns the rule and what
    it was fitted on (``known_right``: the share of the validation devices' windows of
    consecutive flows it places right, an in-sample check)."""
    q = (1.0 - known_target) / 2.0
    labels = np.asarray(labels).astype(str)

    def own(values: np.ndarray, of: np.ndarray) -> list[np.ndarray]:
        """Per class, its column over the flows of that type (all types' when it has none)."""
        mine = [values[of == t, j] for j, t in enumerate(classes)]
        every = np.concatenate(mine) if mine else np.zeros(0)
        return [m if len(m) else every for m in mine]

    sources = {"validation": own(probs, labels)}
    if pool_probs is not None:
        sources["out_of_fold"] = own(pool_probs, np.asarray(pool_labels).astype(str))
    accepted = own(accepts.astype(np.float64), labels)
    conf: dict[str, float] = {}
    fits: dict[str, float] = {}
    stats: dict[str, Any] = {"confidence_from": sorted(sources), "draws": draws, "per_type": {}}
    for j, t in enumerate(classes):
        # the looser of the bars each held-out estimate of the type's confidence gives
        # (each type and source its own random stream: one bar does not move another)
        bars = {k: resampled_quantile(v[j], window, q, draws,
                                      np.random.default_rng([seed, j, i])) if len(v[j]) else 1.0
                for i, (k, v) in enumerate(sources.items())}  # fmt: skip
        conf[t] = min(bars.values())
        ac = accepted[j]
        fits[t] = (
            binomial_bar(wilson_lower(float(ac.sum()), len(ac)), window, q) if len(ac) else 1.0
        )
        stats["per_type"][t] = {"confidence": conf[t], "bars": bars,
                                "flows": {k: int(len(v[j])) for k, v in sources.items()},
                                "accepted": float(ac.mean()) if len(ac) else None,
                                "fit": fits[t]}  # fmt: skip
    rule = OpenSetRule(window=window, confidence=conf, fit=min(fits.values(), default=0.0),
                       known_target=known_target, fits=fits)  # fmt: skip
    # the rule on the validation devices' windows of consecutive flows (an in-sample check)
    groups = device_groups(np.asarray(device_ids), np.asarray(times, np.float64))
    votes = window_votes(probs, accepts, classes, groups, window)
    truth = [str(labels[rows[0]]) for rows in groups]
    stats["windows"] = len(votes)
    correct = sum(b == truth[g] for g, b, _, _ in votes)
    stats["window_accuracy"] = correct / len(votes) if votes else None
    placed = [rule.passes(best, c, f) and best == truth[g] for g, best, c, f in votes]
    stats["known_right"] = float(np.mean(placed)) if placed else None
    return rule, stats
