"""Per-device splits: which flows go to train, validation and test."""

from __future__ import annotations

import numpy as np
import pytest
from tests.ml.conftest import make_paths

from iotwatch.anomaly.data import (
    device_data,
    load_tables,
    read_slice,
    skip_reason,
    split_malicious,
)
from iotwatch.errors import InputError

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


def test_per_device_tables_round_trip(tmp_path) -> None:
    # what the features stage writes per device type reads back as the same splits
    paths = make_paths(tmp_path)
    write_tables(paths, split_seed=3)
    tables = load_tables(paths)
    assert sorted(p.stem for p in paths.anomaly_data.glob("*.parquet")) == [
        "bulb", "camera", "plug", "rare",
    ]  # fmt: skip
    want = device_data(tables, "camera", "device", 0.5, seed=3)
    got = read_slice(paths.anomaly_data / "camera.parquet", "camera")
    assert got.columns == want.columns and got.device == "camera"
    for name in ("train", "validation", "validation_attack", "test", "test_attack"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert list(got.test_attack_type) == list(want.test_attack_type)


def test_all_malicious_mode_gives_every_type_every_attack(tmp_path) -> None:
    paths = make_paths(tmp_path)
    write_tables(paths, malicious="all")
    bulb = read_slice(paths.anomaly_data / "bulb.parquet", "bulb").counts()
    assert bulb["validation_attack"] + bulb["test_attack"] == 80


def test_bad_per_device_table_is_input_error(tmp_path) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(InputError, match="x.parquet: cannot read"):
        read_slice(path, "x")


def test_missing_table_is_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="train feature table not found"):
        load_tables(make_paths(tmp_path))


def test_attack_ratio_keeps_one_attack_per_legitimate_flow_per_attack_type(tmp_path) -> None:
    paths = make_paths(tmp_path)
    write_tables(paths, malicious="all", attack_ratio=1.0)
    full = device_data(load_tables(paths), "bulb", "all", 0.5, seed=7)
    got = read_slice(paths.anomaly_data / "bulb.parquet", "bulb")
    for split in ("validation", "test"):
        attack = getattr(got, f"{split}_attack")
        assert attack.sum() == min((~attack).sum(), getattr(full, f"{split}_attack").sum())
        kinds = set(getattr(got, f"{split}_attack_type")[attack])
        assert kinds == set(getattr(full, f"{split}_attack_type")[getattr(full, f"{split}_attack")])
    # the service columns travel with the flows (never model features)
    assert got.train_service is not None and got.train_service.shape == (len(got.train), 3)
    assert "proto" not in got.columns and got.flows_per_device_day is not None


def test_cap_per_type_is_proportional_and_exact() -> None:
    from iotwatch.anomaly.data import cap_per_type

    types = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10, dtype=object)
    idx = np.arange(100)
    got = cap_per_type(idx, types, 10, np.random.default_rng(0))
    assert len(got) == 10 and list(np.sort(got)) == list(got)
    assert [int((types[got] == k).sum()) for k in "abc"] == [6, 3, 1]
    assert len(cap_per_type(idx, types, 200, np.random.default_rng(0))) == 100
