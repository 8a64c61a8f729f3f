"""Per-device splits: which flows go to train, validation and test."""

from __future__ import annotations

import numpy as np
import pytest
from tests.ml.conftest import make_paths

from iotwatch.anomaly.data import (
    device_data,
    load_tables,
    select_devices,
    skip_reason,
    split_malicious,
)
from iotwatch.errors import ConfigError, InputError

from .conftest import write_tables


def test_split_malicious_stratified_and_seeded() -> None:
    types = np.array(["a"] * 10 + ["b"] * 5 + ["c"], dtype=object)
    val, test = split_malicious(types, 0.5, seed=0)
    assert sorted(np.r_[val, test].tolist()) == list(range(16))  # a partition
    assert [int((types[val] == t).sum()) for t in "abc"] == [5, 3, 1]  # round half up
    again, _ = split_malicious(types, 0.5, seed=0)
    other, _ = split_malicious(types, 0.5, seed=1)
    assert np.array_equal(val, again) and not np.array_equal(val, other)
    v, t = split_malicious(np.array([], dtype=object), 0.5, 0)
    assert len(v) == len(t) == 0


def test_device_data(tmp_path) -> None:
    paths = make_paths(tmp_path)
    raw = write_tables(paths)
    tables = load_tables(paths)
    assert tables.device_types() == ["bulb", "camera", "plug", "rare"]
    cam = device_data(tables, "camera", "device", 0.5, seed=0)
    c = cam.counts()
    assert c["train"] == int((raw["train"]["label"] == "camera").sum()) == 60
    assert (c["validation_legit"], c["test_legit"]) == (20, 20)
    assert c["validation_attack"] + c["test_attack"] == 60  # 30 flood + 30 scan at the camera
    assert c["validation_attack"] == 30
    assert sorted(set(cam.validation_attack_type[cam.validation_attack])) == ["flood", "scan"]
    assert set(cam.test_attack_type[~cam.test_attack]) == {""}
    assert cam.train.shape[1] == len(tables.columns) == 38
    every = device_data(tables, "camera", "all", 0.5, seed=0)
    assert every.counts()["validation_attack"] + every.counts()["test_attack"] == 80
    bulb = device_data(tables, "bulb", "device", 0.5, seed=0)
    assert bulb.counts()["validation_attack"] == bulb.counts()["test_attack"] == 0
    rare = device_data(tables, "rare", "device", 0.5, seed=0)
    assert "min_train_flows=20" in skip_reason(rare, 20)
    assert skip_reason(cam, 20) is None


def test_select_devices(tmp_path) -> None:
    paths = make_paths(tmp_path)
    write_tables(paths)
    tables = load_tables(paths)
    assert select_devices(tables, [], None) == ["bulb", "camera", "plug", "rare"]
    assert select_devices(tables, ["plug", "bulb"], None) == ["plug", "bulb"]
    assert select_devices(tables, ["plug"], "camera") == ["camera"]
    with pytest.raises(ConfigError, match="unknown device type"):
        select_devices(tables, ["toaster"], None)


def test_missing_table_is_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="train feature table not found"):
        load_tables(make_paths(tmp_path))
