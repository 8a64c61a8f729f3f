"""Per-device feature scaling: [sort] [log1p] then standardise, fitted on that device's training
flows only, saved and loaded as JSON (never pickle).

``order="sorted"`` sorts the values of each feature group (the columns that differ only in their
trailing ``_<position>``: size_sent_1..10, size_recv_1..10, iat_sent_1..9, iat_recv_1..9) from
largest to smallest before anything else, so column ``size_sent_1`` then holds the largest size
sent. The model then sees which sizes and gaps a flow has, not where its pure ACKs fell: a
connection cut by the 600 s timeout at another phase, or a delayed ACK, is the same flow to it.
``positional`` (the method's features as they are) is the default.

Sizes and inter-arrival times are >= 0; they are clipped at 0 before log1p. A column with zero
spread in training keeps its centre and a scale of 1 (so it cannot blow up unseen flows).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotwatch.errors import InputError

if TYPE_CHECKING:
    import numpy as np

FORMAT = "iotwatch-anomaly-scaler/1"
ORDERS = ("positional", "sorted")


def column_groups(columns: list[str]) -> list[list[int]]:
    """Column positions per feature group: names equal up to a trailing ``_<digits>``, in
    column order (a name without such a suffix is a group of its own)."""
    return [list(g) for g in _groups(tuple(columns))]


@functools.lru_cache(maxsize=64)
def _groups(columns: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """``column_groups``, once per column list (the monitor transforms every batch)."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(columns):
        m = re.fullmatch(r"(.+)_\d+", name)
        groups.setdefault(m.group(1) if m else name, []).append(i)
    return tuple(tuple(g) for g in groups.values())


@dataclass
class FeatureScaler:
    """x -> (log1p(max(x, 0)) - mean) / std, per column; ``fit`` on training flows only
    (``order="sorted"``: each feature group sorted, largest first, before that)."""

    log1p: bool = True
    order: str = "positional"
    columns: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def _pre(self, x: Any, columns: list[str] | None = None) -> np.ndarray:
        import numpy as np

        x = np.asarray(x, dtype="float64")
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D array of flows x features, got shape {x.shape}")
        x = self.ordered(x, columns)
        if self.log1p:
            x = np.log1p(np.clip(x, 0.0, None))
        return x

    def ordered(self, x: Any, columns: list[str] | None = None) -> np.ndarray:
        """The raw values in the model's column order: ``x`` itself (positional) or a copy with
        each feature group of ``columns`` (default: the fitted ones) sorted, largest first."""
        import numpy as np

        if self.order == "positional":
            return np.asarray(x, dtype="float64")
        if self.order != "sorted":
            raise ValueError(f"order must be one of {ORDERS}, not {self.order!r}")
        x = np.array(x, dtype="float64")
        for cols in _groups(tuple(columns if columns is not None else self.columns)):
            if len(cols) > 1:
                x[:, cols] = -np.sort(-x[:, cols], axis=1)
        return x

    def fit(self, x: Any, columns: list[str] | None = None) -> FeatureScaler:
        import numpy as np

        x = np.asarray(x, dtype="float64")
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D array of flows x features, got shape {x.shape}")
        cols = list(columns) if columns is not None else [str(i) for i in range(x.shape[1])]
        if len(cols) != x.shape[1]:
            raise ValueError(f"{len(cols)} column names for {x.shape[1]} columns")
        z = self._pre(x, cols)
        if len(z) == 0:
            raise ValueError("cannot fit a scaler on zero flows")
        std = z.std(axis=0)
        self.mean = [float(v) for v in z.mean(axis=0)]
        self.std = [float(v) for v in np.where(std > 1e-12, std, 1.0)]
        self.columns = cols
        return self

    def transform(self, x: Any) -> np.ndarray:
        import numpy as np

        if not self.mean:
            raise ValueError("scaler is not fitted")
        x = np.asarray(x, dtype="float64")
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D array of flows x features, got shape {x.shape}")
        if x.shape[1] != len(self.mean):
            raise ValueError(f"expected {len(self.mean)} features, got {x.shape[1]}")
        z = self._pre(x)
        return (z - np.asarray(self.mean)) / np.asarray(self.std)

    def fit_transform(self, x: Any, columns: list[str] | None = None) -> np.ndarray:
        return self.fit(x, columns).transform(x)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "log1p": self.log1p,
            "order": self.order,
            "columns": list(self.columns),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "scaler") -> FeatureScaler:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{source}: not an iotwatch anomaly scaler (format {FORMAT})")
        try:
            scaler = cls(
                log1p=bool(data["log1p"]),
                order=str(data.get("order", "positional")),  # files before the option: positional
                columns=[str(c) for c in data["columns"]],
                mean=[float(v) for v in data["mean"]],
                std=[float(v) for v in data["std"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: bad scaler JSON ({exc})") from None
        if scaler.order not in ORDERS:
            raise InputError(f"{source}: order must be one of {list(ORDERS)}, not {scaler.order!r}")
        if not (len(scaler.columns) == len(scaler.mean) == len(scaler.std)):
            raise InputError(f"{source}: columns, mean and std differ in length")
        return scaler

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> FeatureScaler:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: scaler not found (run the anomaly stage)")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot read scaler JSON ({exc})") from None
        return cls.from_dict(data, str(path))
