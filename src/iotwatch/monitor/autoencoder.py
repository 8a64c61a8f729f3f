"""One device type's autoencoder detector, evaluated with numpy (no torch at run time).

The anomaly stage's ``SparseAutoencoder`` is n -> hidden (sigmoid) -> n (linear or sigmoid);
its score is the mean squared reconstruction error of the scaled features (float32, like
``anomaly.model.reconstruction_errors``; the export checks both agree), or with two members
(``anomaly.order: both``) the geometric mean of each one's error over its ref
(``iotwatch.anomaly.members``). The per-feature squared
errors are the monitor's first explanation of an alert: the features the model could not
reconstruct.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iotwatch.anomaly.members import MemberSpec, combine
from iotwatch.anomaly.scaling import FeatureScaler
from iotwatch.anomaly.services import ServiceProfile

WEIGHT_NAMES = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) in float32, in one buffer (the hidden layer is the largest array)."""
    h = np.negative(z, dtype=np.float32)
    np.exp(h, out=h)
    h += np.float32(1.0)
    return np.reciprocal(h, out=h)


@dataclass
class Net:
    """One member: scaler + autoencoder weights."""

    scaler: FeatureScaler
    w1: np.ndarray  # float32 (hidden, n)
    b1: np.ndarray  # float32 (hidden,)
    w2: np.ndarray  # float32 (n, hidden)
    b2: np.ndarray  # float32 (n,)
    output: str  # linear | sigmoid

    @property
    def feature_names(self) -> list[str]:
        if self.scaler.order == "sorted":
            return [f"{c} (sorted)" for c in self.scaler.columns]
        return list(self.scaler.columns)

    def squared_errors(self, x: np.ndarray) -> np.ndarray:
        """Per flow and feature: (reconstruction - scaled input)^2, float32."""
        z = self.scaler.transform(x).astype(np.float32)
        with np.errstate(over="ignore"):
            h = _sigmoid(z @ self.w1.T + self.b1)
            r = h @ self.w2.T + self.b2
            if self.output == "sigmoid":
                r = _sigmoid(r)
        return np.square(r - z, dtype=np.float32)

    @classmethod
    def from_weights(
        cls, scaler: FeatureScaler, weights: dict[str, np.ndarray], output: str
    ) -> Net:
        missing = [k for k in WEIGHT_NAMES if k not in weights]
        if missing:
            raise ValueError(f"missing weights {missing}")
        w1, b1, w2, b2 = (np.asarray(weights[k], np.float32) for k in WEIGHT_NAMES)
        n = len(scaler.columns)
        if w1.ndim != 2 or w1.shape[1] != n or w2.shape != (n, w1.shape[0]):
            raise ValueError(f"weights do not fit {n} features")
        if b1.shape != (w1.shape[0],) or b2.shape != (n,):
            raise ValueError("bias shapes do not fit the weights")
        if output not in ("linear", "sigmoid"):
            raise ValueError(f"output must be linear or sigmoid, not {output!r}")
        return cls(scaler, w1, b1, w2, b2, output)


@dataclass
class Detector:
    """A device type's members (``iotwatch.anomaly.members``: one autoencoder, or one per
    feature order) and its thresholds (attack: score > threshold)."""

    device_type: str
    nets: list[Net]
    specs: list[MemberSpec]
    threshold: float
    fpr_threshold: float
    profile: ServiceProfile | None = None  # flows outside it are alerts (None: no profile)

    @property
    def scaler(self) -> FeatureScaler:
        return self.nets[0].scaler

    def inside(self, svc: np.ndarray) -> np.ndarray:
        """Per flow (rows proto, dev_port, peer_port): inside the type's service profile."""
        if self.profile is None:
            return np.ones(len(svc), bool)
        return self.profile.contains(svc)

    @property
    def columns(self) -> list[str]:
        """The raw feature columns the detector reads."""
        return list(self.nets[0].scaler.columns)

    @property
    def feature_names(self) -> list[str]:
        """The members' input columns as ``explain`` names them, member after member (sorted
        order: column k of a group holds the group's k-th largest value, named
        "size_sent_k (sorted)")."""
        return [name for net in self.nets for name in net.feature_names]

    def model_view(self, x: np.ndarray) -> np.ndarray:
        """The raw feature values in the members' column order (each group sorted where the
        scaler sorts), the values ``explain``'s names refer to."""
        return np.hstack([net.scaler.ordered(x) for net in self.nets])

    def squared_errors(self, x: np.ndarray) -> np.ndarray:
        """Per flow and member feature: squared reconstruction error / the member's ref."""
        parts = [net.squared_errors(x) for net in self.nets]
        if len(parts) == 1 and self.specs[0].ref == 1.0:
            return parts[0]
        return np.hstack([p / np.float32(s.ref) for p, s in zip(parts, self.specs, strict=True)])

    def score(self, x: np.ndarray) -> np.ndarray:
        """Each member's mean squared reconstruction error (float64 of the float32 mean),
        combined by ``members.combine``."""
        if len(x) == 0:
            return np.zeros(0, np.float64)
        errors = [net.squared_errors(x).mean(axis=1, dtype=np.float32).astype(np.float64)
                  for net in self.nets]  # fmt: skip
        return combine(errors, self.specs)

    def explain(self, x: np.ndarray, top: int = 3) -> list[list[tuple[str, float]]]:
        """For each flow, the ``top`` features with the largest share of its squared error."""
        if len(x) == 0:
            return []
        err = self.squared_errors(x).astype(np.float64)
        total = err.sum(axis=1, keepdims=True)
        share = np.divide(err, total, out=np.zeros_like(err), where=total > 0)
        order = np.argsort(-share, axis=1, kind="stable")[:, :top]
        cols = self.feature_names
        return [[(cols[j], float(share[i, j])) for j in row] for i, row in enumerate(order)]

    @classmethod
    def from_parts(
        cls,
        device_type: str,
        scaler: FeatureScaler,
        weights: dict[str, np.ndarray],
        output: str,
        threshold: float,
        fpr_threshold: float,
    ) -> Detector:
        """A one-member detector."""
        return cls.from_members(device_type, [(scaler, weights)],
                                [MemberSpec(scaler.order, 1.0, "")], output, threshold,
                                fpr_threshold)  # fmt: skip

    @classmethod
    def from_members(
        cls,
        device_type: str,
        parts: list[tuple[FeatureScaler, dict[str, np.ndarray]]],
        specs: list[MemberSpec],
        output: str,
        threshold: float,
        fpr_threshold: float,
    ) -> Detector:
        if len(parts) != len(specs) or not parts:
            raise ValueError("one spec per member, at least one member")
        nets = [Net.from_weights(sc, w, output) for sc, w in parts]
        if any(net.scaler.columns != nets[0].scaler.columns for net in nets):
            raise ValueError("the members read different feature columns")
        return cls(device_type, nets, list(specs), float(threshold), float(fpr_threshold))
