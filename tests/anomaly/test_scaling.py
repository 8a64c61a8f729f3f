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


def test_sorted_order_sorts_each_group_largest_first() -> None:
    from iotwatch.anomaly.scaling import column_groups

    cols = ["size_sent_1", "size_sent_2", "size_sent_3", "size_recv_1", "size_recv_2", "iat_sent_1"]
    assert column_groups(cols) == [[0, 1, 2], [3, 4], [5]]
    # the same flow with its pure ACK (40) at another position, and its received sizes swapped
    a = np.array([[40.0, 930.0, 0.0, 237.0, 40.0, 1.5]])
    b = np.array([[930.0, 40.0, 0.0, 40.0, 237.0, 1.5]])
    train = np.vstack([a, b, [[60.0, 40.0, 215.0, 60.0, 40.0, 0.1]]])
    s = FeatureScaler(log1p=False, order="sorted").fit(train, cols)
    assert np.array_equal(s.transform(a), s.transform(b))
    assert s.mean[:3] == pytest.approx(
        [(930 + 930 + 215) / 3, (40 + 40 + 60) / 3, (0 + 0 + 40) / 3]
    )
    p = FeatureScaler(log1p=False).fit(train, cols)  # positional: the two differ
    assert not np.array_equal(p.transform(a), p.transform(b))
    assert np.array_equal(a, np.array([[40.0, 930.0, 0.0, 237.0, 40.0, 1.5]]))  # input untouched


def test_order_round_trips_and_old_files_are_positional(tmp_path) -> None:
    x = np.random.default_rng(1).exponential(size=(10, 4))
    cols = ["v_1", "v_2", "w_1", "w_2"]
    s = FeatureScaler(order="sorted").fit(x, cols)
    s.save(tmp_path / "scaler.json")
    back = FeatureScaler.load(tmp_path / "scaler.json")
    assert back.order == "sorted" and np.array_equal(back.transform(x), s.transform(x))
    data = json.loads((tmp_path / "scaler.json").read_text())
    del data["order"]
    assert FeatureScaler.from_dict(data).order == "positional"
    data["order"] = "shuffled"
    with pytest.raises(InputError, match="order must be one of"):
        FeatureScaler.from_dict(data)
