"""Per-device scaler: log1p + standardise, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iotwatch.anomaly.scaling import FeatureScaler
from iotwatch.errors import InputError


def test_log1p_standardise_by_hand() -> None:
    x = np.array([[0.0, 5.0], [np.e - 1, 5.0], [np.e**2 - 1, 5.0]])
    s = FeatureScaler(log1p=True).fit(x, ["a", "b"])
    assert s.mean == pytest.approx([1.0, np.log(6.0)])
    assert s.std[0] == pytest.approx(np.sqrt(2 / 3))
    assert s.std[1] == 1.0  # constant column: scale 1, not a division by zero
    z = s.transform(x)
    assert z[:, 0] == pytest.approx(np.array([-1.0, 0.0, 1.0]) / np.sqrt(2 / 3))
    assert z[:, 1] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    # negative values are clipped to 0 before log1p
    assert s.transform(np.array([[-3.0, 5.0]]))[0, 0] == pytest.approx(z[0, 0])


def test_without_log1p_is_plain_standardisation() -> None:
    x = np.array([[1.0], [3.0]])
    s = FeatureScaler(log1p=False).fit(x)
    assert s.transform(x)[:, 0] == pytest.approx([-1.0, 1.0])


def test_json_round_trip(tmp_path) -> None:
    x = np.random.default_rng(0).exponential(size=(20, 3))
    s = FeatureScaler(log1p=True).fit(x, ["p", "q", "r"])
    s.save(tmp_path / "s" / "scaler.json")
    data = json.loads((tmp_path / "s" / "scaler.json").read_text())
    assert data["columns"] == ["p", "q", "r"] and data["log1p"] is True
    back = FeatureScaler.load(tmp_path / "s" / "scaler.json")
    assert np.array_equal(back.transform(x), s.transform(x))


def test_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="not fitted"):
        FeatureScaler().transform(np.zeros((1, 2)))
    s = FeatureScaler().fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match="expected 2 features"):
        s.transform(np.ones((1, 3)))
    (tmp_path / "bad.json").write_text('{"format": "pickle"}')
    with pytest.raises(InputError, match="not an iotwatch anomaly scaler"):
        FeatureScaler.load(tmp_path / "bad.json")
    with pytest.raises(InputError, match="not found"):
        FeatureScaler.load(tmp_path / "missing.json")
