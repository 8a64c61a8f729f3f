"""Feature extraction, splits and ground-truth matching on hand-made flow tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iotwatch.config import from_dict
from iotwatch.context import StageContext
from iotwatch.errors import ConfigError, InputError
from iotwatch.features import (
    META_COLUMNS,
    FeaturesConfig,
    build_features,
    drop_rare_classes,
    empty_malicious,
    feature_columns,
    match_ground_truth,
    model_columns,
    run,
    split_stratified,
    split_time,
)
from iotwatch.paths import DatasetConfig
from iotwatch.tracking import StageRun


def test_feature_columns_order() -> None:
    cols = feature_columns(3)
    assert cols == [
        "size_sent_1", "size_sent_2", "size_sent_3", "size_recv_1", "size_recv_2", "size_recv_3",
        "iat_sent_1", "iat_sent_2", "iat_recv_1", "iat_recv_2",
    ]  # fmt: skip
    assert len(feature_columns(10)) == 2 * 10 + 2 * 9


def test_build_features_exact_columns_and_values(flows_factory) -> None:
    flows = flows_factory(per_class=2, unknown=1)
    table = build_features(flows, 10, "device_type", "x.parquet")
    assert list(table.columns) == feature_columns(10) + list(META_COLUMNS)
    assert model_columns(table) == feature_columns(10)
    row = flows.iloc[0]
    assert table.loc[0, "size_sent_1"] == row["size_sent_1"]
    assert table.loc[0, "iat_recv_9"] == row["iat_recv_9"]
    assert table.loc[0, "label"] == row["device_type"] == table.loc[0, "device_type"]
    assert table.loc[0, "device_id"] == row["device_name"]
    assert table.loc[0, "capture_time"] == row["start"]
    assert table.loc[0, "flow_id"] == row["flow_id"]
    # unknown device: label null, device_id falls back to the MAC
    last = table.iloc[-1]
    assert pd.isna(last["label"])
    assert last["device_id"] == flows.iloc[-1]["dev_mac"]


def test_build_features_missing_column_names_file(flows_factory) -> None:
    flows = flows_factory(per_class=2).drop(columns=["iat_recv_9"])
    with pytest.raises(InputError, match=r"flows\.parquet.*iat_recv_9"):
        build_features(flows, 10, "device_type", "flows.parquet")


def test_drop_rare_classes(flows_factory) -> None:
    table = build_features(flows_factory(per_class=5), 10, "device_type", "x")
    table = pd.concat([table, table.iloc[:3].assign(label="rare")], ignore_index=True)
    kept, dropped = drop_rare_classes(table, 4)
    assert dropped == {"rare": 3}
    assert "rare" not in set(kept["label"])


def test_stratified_split_keeps_proportions(flows_factory) -> None:
    table = build_features(flows_factory(per_class=50), 10, "device_type", "x")
    train, test = split_stratified(table, 0.2, seed=1)
    assert len(test) == 30 and len(train) == 120
    assert test["label"].value_counts().to_dict() == {"camera": 10, "plug": 10, "bulb": 10}
    assert set(train["flow_id"]).isdisjoint(test["flow_id"])
    again = split_stratified(table, 0.2, seed=1)[1]
    assert again["flow_id"].tolist() == test["flow_id"].tolist()


def test_time_split_trains_on_earlier_flows(flows_factory) -> None:
    table = build_features(flows_factory(per_class=50), 10, "device_type", "x")
    train, test, cutoff = split_time(table, 0.25)
    assert train["capture_time"].max() < cutoff <= test["capture_time"].min()
    assert len(train) + len(test) == len(table)
    assert abs(len(test) - 0.25 * len(table)) <= 1


def _gt_row(**kw):
    base = dict(attack_type="scan", device_type="camera", device_name="camera-1", proto="tcp",
                src_ip="10.0.0.66", src_port=5555, dst_ip="192.168.1.10", dst_port=80,
                start=100.0, end=200.0)  # fmt: skip
    base.update(kw)
    return base


def _flow(**kw):
    base = dict(proto=6, dev_ip="192.168.1.10", dev_port=80, peer_ip="10.0.0.66",
                peer_port=5555, start=150.0, end=160.0)  # fmt: skip
    base.update(kw)
    return base


def test_match_ground_truth_directions_ports_and_time() -> None:
    gt = pd.DataFrame(
        [_gt_row(), _gt_row(attack_type="flood", src_port=np.nan, start=500.0, end=600.0)]
    )
    flows = pd.DataFrame(
        [
            _flow(),  # device is the destination: reversed endpoints still match
            _flow(
                dev_ip="10.0.0.66", dev_port=5555, peer_ip="192.168.1.10", peer_port=80
            ),  # same order
            _flow(start=300.0, end=310.0),  # no time overlap
            _flow(dev_port=81),  # other port
            _flow(proto=17),  # other protocol
            _flow(peer_port=1234, start=550.0, end=551.0),  # wildcard source port, second window
            _flow(start=200.5, end=210.0),  # within the 1 s tolerance
        ]
    )
    assert match_ground_truth(flows, gt, tolerance_s=1.0).tolist() == [0, 0, -1, -1, -1, 1, 0]
    assert match_ground_truth(flows, gt, tolerance_s=0.0).tolist()[-1] == -1


def test_match_prefers_largest_overlap() -> None:
    gt = pd.DataFrame(
        [_gt_row(start=0.0, end=151.0), _gt_row(attack_type="b", start=152.0, end=400.0)]
    )
    assert match_ground_truth(pd.DataFrame([_flow()]), gt).tolist() == [1]


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"split": "random"}, r"split.*not one of"),
        ({"test_size": 1.5}, r"test_size"),
        ({"min_flows_per_class": 1}, r"min_flows_per_class"),
        ({"n_packet": 10}, r"unknown key"),
        ({"n_packets": "ten"}, r"n_packets.*integer"),
    ],
)
def test_config_errors_are_clean(data, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern):
        from_dict(FeaturesConfig, data, "features")


def _dataset(ground_truth: Path | None = None, hosts: Path | None = None) -> DatasetConfig:
    """The dataset section the features stage reads (only ground_truth matters here)."""
    return DatasetConfig(
        name="test", generate=[], captures=Path("captures"), malicious=None,
        inventory=Path("inventory.csv"), inventory_format="csv", ground_truth=ground_truth,
        malicious_hosts=hosts, local_networks=[], device_types=[], train_days=None, watch=None,
    )  # fmt: skip


def test_run_writes_tables_and_malicious(tmp_path, paths, flows_factory) -> None:
    flows = flows_factory(per_class=30, unknown=5)
    flows = pd.concat([flows, flows_factory(per_class=3, classes={"rare": (50.0, 50.0, 1.0)})])
    flows["flow_id"] = range(len(flows))
    paths.flows.parent.mkdir(parents=True)
    flows.to_parquet(paths.flows)
    mal = flows_factory(per_class=4, seed=5).iloc[:6].reset_index(drop=True)
    mal.to_parquet(paths.flows_malicious)
    gt_path = tmp_path / "gt.csv"
    r = mal.iloc[0]
    pd.DataFrame(
        [
            _gt_row(
                src_ip=r["peer_ip"],
                src_port=r["peer_port"],
                dst_ip=r["dev_ip"],
                dst_port=r["dev_port"],
                start=r["start"] - 1,
                end=r["end"] + 1,
            )
        ]  # fmt: skip
    ).to_csv(gt_path, index=False)
    sr = StageRun("features", paths.metrics_dir, None)
    m = run(FeaturesConfig(), StageContext(paths, _dataset(gt_path), 0), sr)
    assert m["dropped_classes"] == {"rare": 3}
    parts = ("train", "validation", "test", "devices")
    assert sum(m[p]["flows"] for p in parts) == 90
    assert m["test"]["per_class"] == {"bulb": 6, "camera": 6, "plug": 6}
    assert m["malicious"]["matched"] == 1 and m["malicious"]["unmatched"] == 5
    assert m["malicious"]["per_attack"] == {"scan": 1}
    table = pd.read_parquet(paths.features_malicious)
    assert table["attack_type"].notna().sum() == 1
    assert (paths.metrics_dir / "features.json").is_file()


def test_run_without_malicious_writes_empty_schema(paths, flows_factory) -> None:
    paths.flows.parent.mkdir(parents=True)
    flows_factory(per_class=20).to_parquet(paths.flows)
    run(FeaturesConfig(), StageContext(paths, _dataset(), 0), StageRun("features", None, None))
    mal = pd.read_parquet(paths.features_malicious)
    assert len(mal) == 0
    assert list(mal.columns) == list(empty_malicious(10).columns)
    assert model_columns(mal) == feature_columns(10)


def test_run_missing_flows_is_input_error(paths) -> None:
    with pytest.raises(InputError, match="flows.parquet"):
        run(
            FeaturesConfig(),
            StageContext(paths, _dataset(), 0),
            StageRun("features", None, None),
        )


def test_tables_are_written_whole_or_not_at_all(tmp_path, flows_factory) -> None:
    from iotwatch.features import _write
    from iotwatch.flowmeter.schema import replacing

    table = build_features(flows_factory(per_class=5), 10, "device_type", "flows")
    path = tmp_path / "sub" / "train.parquet"
    _write(table, path)
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, table)
    assert [p.name for p in path.parent.iterdir()] == ["train.parquet"]  # no temporary left
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("writer failed")
    pd.testing.assert_frame_equal(pd.read_parquet(path), table)  # the old file is untouched
    assert [p.name for p in path.parent.iterdir()] == ["train.parquet"]


def _malicious_run(tmp_path, paths, flows_factory, hosts_csv: str | None):
    flows = flows_factory(per_class=30)
    flows["flow_id"] = range(len(flows))
    paths.flows.parent.mkdir(parents=True)
    flows.to_parquet(paths.flows)
    mal = flows_factory(per_class=4, seed=5).reset_index(drop=True)
    mal["capture"] = "mirai-lab.pcap"
    mal.to_parquet(paths.flows_malicious)
    hosts = None
    if hosts_csv is not None:
        hosts = tmp_path / "hosts.csv"
        hosts.write_text(hosts_csv)
    ds = _dataset(hosts=hosts)
    ds = DatasetConfig(**{**ds.__dict__, "device_types": ["camera", "toaster"]})
    m = run(FeaturesConfig(), StageContext(paths, ds, 0), StageRun("features", None, None))
    return mal, m, pd.read_parquet(paths.features_malicious)


def test_malicious_hosts_label_every_flow_of_a_listed_host(tmp_path, paths, flows_factory):
    from iotwatch.anomaly.data import read_slice

    mal0 = flows_factory(per_class=4, seed=5).reset_index(drop=True)
    cam = mal0[mal0["device_type"] == "camera"]
    ip, mac = cam["dev_ip"].iloc[0], mal0[mal0["device_type"] == "plug"]["dev_mac"].iloc[0]
    mal, m, table = _malicious_run(
        tmp_path, paths, flows_factory, f"ip,mac,label\n{ip},,mirai\n,{mac.upper()},scan\n"
    )
    want_cam = int((mal["dev_ip"] == ip).sum())
    want_plug = int((mal["dev_mac"] == mac).sum())
    assert m["malicious"]["per_attack"] == {"mirai": want_cam, "scan": want_plug}
    assert m["malicious"]["matched"] == want_cam + want_plug > 0
    assert "malicious hosts" in m["malicious"]["labelled_by"]
    # the attacked type is the flow's own device type; those flows feed that type's table
    assert set(table.loc[table["attack_type"] == "mirai", "gt_device_type"]) == {"camera"}
    cam_slice = read_slice(paths.anomaly_data / "camera.parquet", "camera").counts()
    assert cam_slice["validation_attack"] + cam_slice["test_attack"] == want_cam
    # a listed type without flows still gets a (empty) table, so its stages can say why
    toaster = read_slice(paths.anomaly_data / "toaster.parquet", "toaster").counts()
    assert toaster["train"] == 0
    assert m["anomaly"]["toaster"]["train"] == 0


def test_without_labels_every_malicious_flow_is_an_attack(tmp_path, paths, flows_factory):
    mal, m, table = _malicious_run(tmp_path, paths, flows_factory, None)
    assert m["malicious"]["matched"] == len(mal) and m["malicious"]["unmatched"] == 0
    assert m["malicious"]["per_attack"] == {"mirai-lab": len(mal)}
    assert set(table["attack_type"]) == {"mirai-lab"}


@pytest.mark.parametrize(
    ("csv", "pattern"),
    [
        ("host,label\n1.2.3.4,x\n", r"hosts.csv: needs a 'label' column and an 'ip' and/or"),
        ("ip,label\n1.2.3.4,\n", r"hosts.csv: line 2: needs a label"),
    ],
)
def test_bad_malicious_hosts_csv(tmp_path, paths, flows_factory, csv, pattern) -> None:
    with pytest.raises(InputError, match=pattern):
        _malicious_run(tmp_path, paths, flows_factory, csv)


def test_stratified_split_of_one_class_ignores_the_others(flows_factory) -> None:
    # per-class generators: adding flows of one type leaves every other type's split as it
    # was, so DVC retrains only that type's step-2 detector
    table = build_features(flows_factory(per_class=40), 10, "device_type", "flows")
    more = build_features(
        flows_factory(per_class=15, seed=9, classes={"camera": (900.0, 120.0, 0.02)}),
        10, "device_type", "more",
    )  # fmt: skip
    bigger = pd.concat([table, more], ignore_index=True)
    _, test_a = split_stratified(table, 0.25, seed=3)
    _, test_b = split_stratified(bigger, 0.25, seed=3)
    for cls in ("bulb", "plug"):
        a = test_a[test_a["label"] == cls].reset_index(drop=True)
        b = test_b[test_b["label"] == cls].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
    assert (test_b["label"] == "camera").sum() == round(55 * 0.25)
