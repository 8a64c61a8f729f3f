"""Feature tables for device-type recognition: flows -> train/test (+ labelled malicious) Parquet.

A flow is described by the sizes of the first N packets the device sent and received and the
N-1 inter-arrival times of each direction (the flow meter's ``size_*``/``iat_*`` columns). This
module keeps flows of known devices, drops rare classes, splits train/test (stratified at random,
or by time: train on the earlier flows, test on the later ones, which avoids the leak a random
split of a time series has), and labels the flows of malicious captures from a ground-truth CSV.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from iotwatch.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from iotwatch.context import StageContext
    from iotwatch.tracking import StageRun

log = logging.getLogger(__name__)

# Columns of a feature table that are not features (the classifier uses every other column).
LABEL = "label"
# The service a flow uses (step 2's service profiles): carried along, never a model feature.
SERVICE_COLUMNS = ("proto", "dev_port", "peer_port")
META_COLUMNS = (
    "label", "device_type", "device_id", "capture_time", "capture", "flow_id", *SERVICE_COLUMNS,
)  # fmt: skip
MALICIOUS_EXTRA = ("attack_type", "gt_device_type", "gt_device_name")
# The ground-truth CSV's columns (read here; iotwatch.synth writes them): one row per attack
# connection or time window, matched to flows by protocol, endpoints and overlapping time.
GROUND_TRUTH_COLUMNS = (
    "attack_type", "device_type", "device_name", "proto",
    "src_ip", "src_port", "dst_ip", "dst_port", "start", "end",
)  # fmt: skip
_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


@dataclass
class FeaturesConfig:
    """conf/features/*.yaml: which flows become features and how train/test are split.

    The defaults are conf/features/default.yaml's values, for library callers and tests;
    tests/test_config_source.py fails when they differ. The pipeline never uses them."""

    n_packets: int = 10
    label: str = "device_type"
    split: Literal["stratified", "time"] = "stratified"
    # Fraction of flows in the test set; with split=time the test set is the latest flows.
    test_size: float = 0.2
    # Fraction of the non-test flows carved out as validation (model choice, thresholds).
    validation_size: float = 0.2
    # Whole device units held out per device type (types with >= 2 units); 0 = none.
    holdout_devices_per_type: int = 1
    min_flows_per_class: int = 10
    # Slack (s) when matching malicious flows to ground-truth time windows (clock rounding).
    match_tolerance_s: float = 1.0
    # Step 2's per-device tables (paths.anomaly_data/<type>.parquet): the attack flows each
    # device type's detector is validated and tested on, aimed at it ("device") or all ("all"),
    # and the share of them (per attack type) in validation; the rest is test.
    anomaly_malicious: Literal["device", "all"] = "device"
    anomaly_validation_share: float = 0.5
    # Attack flows per legitimate flow in each type's validation and test sets (sampled per
    # attack type, seeded; the method's sets were 1:1); null = every attack flow.
    anomaly_attack_ratio: float | None = 1.0

    def __post_init__(self) -> None:
        if self.n_packets < 2:
            raise ValueError(f"n_packets must be >= 2, got {self.n_packets}")
        if not 0.0 < self.test_size < 1.0:
            raise ValueError(f"test_size must be in (0, 1), got {self.test_size}")
        if not 0.0 < self.validation_size < 1.0:
            raise ValueError(f"validation_size must be in (0, 1), got {self.validation_size}")
        if self.holdout_devices_per_type < 0:
            raise ValueError(
                f"holdout_devices_per_type must be >= 0, got {self.holdout_devices_per_type}"
            )
        if self.min_flows_per_class < 2:
            raise ValueError(
                f"min_flows_per_class must be >= 2 (a class needs train and test flows), "
                f"got {self.min_flows_per_class}"
            )
        if self.match_tolerance_s < 0:
            raise ValueError(f"match_tolerance_s must be >= 0, got {self.match_tolerance_s}")
        if self.anomaly_attack_ratio is not None and not self.anomaly_attack_ratio > 0:
            raise ValueError(
                f"anomaly_attack_ratio must be > 0 (or null), got {self.anomaly_attack_ratio}"
            )
        if not 0.0 < self.anomaly_validation_share < 1.0:
            raise ValueError(
                f"anomaly_validation_share must be in (0, 1), got {self.anomaly_validation_share}"
            )


def metric_key(name: Any) -> str:
    """A class/attack name usable as an MLflow metric-name part (same text in the JSON files)."""
    # MLflow accepts only [\w.\- :] between slashes; a '/' in a name would nest it wrongly.
    key = re.sub(r"[^\w.\- :]", "_", str(name)).strip()
    return key if key not in ("", ".", "..") else f"_{key}_"


def feature_columns(n: int) -> list[str]:
    """Feature names for N packets: the flow meter's columns (flowmeter.schema owns the layout)."""
    from iotwatch.flowmeter.schema import feature_columns as schema_columns

    return schema_columns(n)


def model_columns(table: pd.DataFrame) -> list[str]:
    """The feature columns of a feature table: every column that is not metadata."""
    skip = set(META_COLUMNS) | set(MALICIOUS_EXTRA)
    return [c for c in table.columns if c not in skip]


def read_table(path: Path, what: str) -> pd.DataFrame:
    """Read a Parquet table, turning missing/corrupt files into an InputError naming the file."""
    import pandas as pd

    if not Path(path).is_file():
        raise InputError(f"{path}: {what} not found (run the stage that writes it first)")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise InputError(f"{path}: cannot read {what} as Parquet ({exc})") from None


def _check_columns(flows: pd.DataFrame, needed: list[str], source: str) -> None:
    missing = [c for c in needed if c not in flows.columns]
    if missing:
        more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
        raise InputError(
            f"{source}: missing column(s) {missing[:8]}{more}; is features.n_packets equal to "
            f"the flow meter's n_packets?"
        )


def build_features(flows: pd.DataFrame, n_packets: int, label: str, source: str) -> pd.DataFrame:
    """Feature table of flows: features + label, device_type, device_id, capture_time, capture, flow_id."""

    cols = feature_columns(n_packets)
    _check_columns(
        flows, [*cols, label, "device_type", "dev_mac", "start", "capture", "flow_id"], source
    )
    out = flows[cols].copy()
    out[LABEL] = flows[label].astype("string")
    out["device_type"] = flows["device_type"].astype("string")
    name = flows["device_name"] if "device_name" in flows.columns else None
    dev_id = flows["dev_mac"].astype("string")
    if name is not None:
        dev_id = name.astype("string").fillna(dev_id)
    out["device_id"] = dev_id
    out["capture_time"] = flows["start"].astype("float64")
    out["capture"] = flows["capture"].astype("string")
    out["flow_id"] = flows["flow_id"]
    for c in SERVICE_COLUMNS:
        if c in flows.columns:
            out[c] = flows[c].astype("int32")
    return out.reset_index(drop=True)


def drop_rare_classes(table: pd.DataFrame, min_flows: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop classes with fewer than ``min_flows`` flows; return the table and {class: flows}."""
    counts = table[LABEL].value_counts()
    rare = counts[counts < min_flows]
    dropped = {metric_key(k): int(v) for k, v in sorted(rare.items())}
    if dropped:
        log.warning("dropping %d class(es) with < %d flows: %s", len(dropped), min_flows, dropped)
    return table[~table[LABEL].isin(list(dropped))].reset_index(drop=True), dropped


def _class_rng(seed: int, name: Any):  # noqa: ANN202 - numpy Generator
    """A generator seeded by (seed, class name): one class's split never depends on another's."""
    import zlib

    import numpy as np

    return np.random.default_rng([seed, zlib.crc32(str(name).encode())])


def split_stratified(
    table: pd.DataFrame, test_size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random split keeping class proportions (the method's split), class by class.

    Each class's flows are shuffled by a generator seeded with (seed, class name) and
    round(n * test_size) of them (at least one of two or more) go to test: a change in one
    device type's flows leaves every other type's split as it was, so only that type's
    step-2 detector retrains.
    """
    import numpy as np

    carved = np.zeros(len(table), dtype=bool)
    labels = table[LABEL].astype("string").fillna("").to_numpy(dtype=object)
    for name in sorted(set(labels.tolist())):
        pos = np.flatnonzero(labels == name)
        k = int(np.floor(len(pos) * test_size + 0.5))
        if len(pos) >= 2:
            k = min(max(k, 1), len(pos) - 1)
        carved[pos[_class_rng(seed, name).permutation(len(pos))[:k]]] = True
    return table[~carved].reset_index(drop=True), table[carved].reset_index(drop=True)


def split_time(table: pd.DataFrame, test_size: float) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Earlier flows train, the latest ``test_size`` fraction test; returns the cutoff (epoch s)."""
    ordered = table.sort_values(["capture_time", "capture", "flow_id"], kind="stable")
    n_test = max(1, round(len(ordered) * test_size))
    cut = len(ordered) - n_test
    cutoff = float(ordered["capture_time"].iloc[cut])
    # Flows that start exactly at the cutoff all go to test, so train is strictly earlier.
    times = ordered["capture_time"].to_numpy()
    train = ordered[times < cutoff]
    test = ordered[times >= cutoff]
    return train.reset_index(drop=True), test.reset_index(drop=True), cutoff


def split(
    table: pd.DataFrame, how: str, size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, float | None]:
    """Carve ``size`` of ``table`` out, stratified at random or the latest flows (``time``).

    The same rule makes test from all flows and validation from the rest, so validation looks
    like test. Returns (kept, carved, time cutoff or None).
    """
    if how == "stratified":
        kept, carved = split_stratified(table, size, seed)
        return kept, carved, None
    return split_time(table, size)


def hold_out_devices(
    table: pd.DataFrame, per_type: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold whole device units out (the device split): per class with >= 2 units (device_id),
    ``per_type`` units (at most all but one) chosen with ``seed``. Returns (rest, held out)."""
    import numpy as np

    if per_type <= 0 or table.empty:
        return table, table.iloc[0:0].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    held: list[str] = []
    for _, group in sorted(table.groupby(LABEL, observed=True), key=lambda kv: str(kv[0])):
        units = sorted(set(group["device_id"].astype(str)))
        if len(units) < 2:
            continue
        k = min(per_type, len(units) - 1)
        held += [units[i] for i in sorted(rng.choice(len(units), size=k, replace=False))]
    mask = table["device_id"].astype(str).isin(held).to_numpy()
    return table[~mask].reset_index(drop=True), table[mask].reset_index(drop=True)


def _norm_proto(values: pd.Series) -> pd.Series:
    """Protocols as lower-case names whether given as numbers (6) or text ('TCP')."""

    def one(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return ""
        try:
            return _PROTO_NAMES.get(int(v), str(int(v)))
        except (TypeError, ValueError):
            return str(v).strip().lower()

    return values.map(one).astype("string")


def read_ground_truth(path: Path) -> pd.DataFrame:
    """Read the attack ground-truth CSV, checking its columns and types."""
    import pandas as pd

    if not Path(path).is_file():
        raise InputError(f"{path}: ground-truth CSV not found (dataset.ground_truth)")
    try:
        gt = pd.read_csv(path, dtype={"src_ip": str, "dst_ip": str})
    except Exception as exc:
        raise InputError(f"{path}: cannot read ground-truth CSV ({exc})") from None
    missing = [c for c in GROUND_TRUTH_COLUMNS if c not in gt.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {missing}; expected {list(GROUND_TRUTH_COLUMNS)}"
        )
    for col in ("src_port", "dst_port", "start", "end"):
        try:
            gt[col] = pd.to_numeric(gt[col]).astype("float64")
        except (TypeError, ValueError):
            raise InputError(f"{path}: column '{col}' must be numeric") from None
    bad = gt["end"] < gt["start"]
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0]) + 2  # +1 header, +1 one-based
        raise InputError(f"{path}: line {row}: end is before start")
    return gt.reset_index(drop=True)


def match_ground_truth(
    flows: pd.DataFrame, gt: pd.DataFrame, tolerance_s: float = 1.0
) -> pd.Series:
    """Index into ``gt`` of the attack each flow belongs to (-1: none).

    A flow matches a ground-truth row when the protocol agrees, the unordered pair of
    endpoints ip:port is the same (either direction; an empty port in the ground truth matches
    any port, e.g. a scan) and the time windows overlap (within ``tolerance_s``). When several
    rows match, the one with the largest time overlap wins (then the earliest row).
    """
    import numpy as np
    import pandas as pd

    f = pd.DataFrame(
        {
            "fi": np.arange(len(flows)),
            "proto": _norm_proto(flows["proto"]),
            "a_ip": flows["dev_ip"].astype("string"),
            "a_port": pd.to_numeric(flows["dev_port"]).astype("float64"),
            "b_ip": flows["peer_ip"].astype("string"),
            "b_port": pd.to_numeric(flows["peer_port"]).astype("float64"),
            "f_start": flows["start"].astype("float64"),
            "f_end": flows["end"].astype("float64"),
        }
    )
    g = pd.DataFrame(
        {
            "gi": np.arange(len(gt)),
            "proto": _norm_proto(gt["proto"]),
            "s_ip": gt["src_ip"].astype("string").str.strip(),
            "s_port": gt["src_port"],
            "d_ip": gt["dst_ip"].astype("string").str.strip(),
            "d_port": gt["dst_port"],
            "g_start": gt["start"],
            "g_end": gt["end"],
        }
    )
    # Join on the unordered IP pair + protocol, then check ports and direction exactly.
    f["k1"] = np.minimum(f["a_ip"].fillna(""), f["b_ip"].fillna(""))
    f["k2"] = np.maximum(f["a_ip"].fillna(""), f["b_ip"].fillna(""))
    g["k1"] = np.minimum(g["s_ip"].fillna(""), g["d_ip"].fillna(""))
    g["k2"] = np.maximum(g["s_ip"].fillna(""), g["d_ip"].fillna(""))
    m = f.merge(g, on=["k1", "k2", "proto"], how="inner")
    result = pd.Series(-1, index=flows.index, dtype="int64")
    if m.empty:
        return result

    def port_ok(flow_port: pd.Series, gt_port: pd.Series) -> pd.Series:
        return gt_port.isna() | (flow_port == gt_port)

    fwd = (
        (m["a_ip"] == m["s_ip"]) & port_ok(m["a_port"], m["s_port"])
        & (m["b_ip"] == m["d_ip"]) & port_ok(m["b_port"], m["d_port"])
    )  # fmt: skip
    rev = (
        (m["a_ip"] == m["d_ip"]) & port_ok(m["a_port"], m["d_port"])
        & (m["b_ip"] == m["s_ip"]) & port_ok(m["b_port"], m["s_port"])
    )  # fmt: skip
    overlap = np.minimum(m["f_end"], m["g_end"]) - np.maximum(m["f_start"], m["g_start"])
    m = m.assign(overlap=overlap)[(fwd | rev).fillna(False) & (overlap >= -tolerance_s)]
    if m.empty:
        return result
    best = m.sort_values(["fi", "overlap", "gi"], ascending=[True, False, True]).drop_duplicates(
        "fi"
    )
    result.iloc[best["fi"].to_numpy()] = best["gi"].to_numpy()
    return result


def empty_malicious(n_packets: int) -> pd.DataFrame:
    """An empty malicious feature table with the full schema (DVC outs must exist)."""
    import pandas as pd

    from iotwatch.flowmeter.schema import feature_fields

    cols: dict[str, Any] = {}
    for f in feature_fields(n_packets):
        cols[f.name] = pd.Series([], dtype=f.type.to_pandas_dtype())
    for c in ("label", "device_type", "device_id"):
        cols[c] = pd.Series([], dtype="string")
    cols["capture_time"] = pd.Series([], dtype="float64")
    cols["capture"] = pd.Series([], dtype="string")
    cols["flow_id"] = pd.Series([], dtype="int64")
    for c in SERVICE_COLUMNS:
        cols[c] = pd.Series([], dtype="int32")
    for c in MALICIOUS_EXTRA:
        cols[c] = pd.Series([], dtype="string")
    return pd.DataFrame(cols)


def malicious_features(
    flows: pd.DataFrame, gt: pd.DataFrame | None, cfg: FeaturesConfig, source: str
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Feature table of the malicious captures' flows, labelled with ``attack_type`` where matched."""
    import pandas as pd

    table = build_features(flows, cfg.n_packets, "device_type", source)
    stats: dict[str, Any] = {"flows": len(table)}
    if gt is None or len(table) == 0:
        for c in MALICIOUS_EXTRA:
            table[c] = pd.Series([pd.NA] * len(table), dtype="string")
        stats.update(matched=0, unmatched=len(table), per_attack={})
        return table, stats
    idx = match_ground_truth(flows.reset_index(drop=True), gt, cfg.match_tolerance_s).to_numpy()
    hit = idx >= 0
    for c, src in zip(MALICIOUS_EXTRA, ("attack_type", "device_type", "device_name"), strict=True):
        col = pd.Series([pd.NA] * len(table), dtype="string")
        col[hit] = gt[src].astype("string").to_numpy()[idx[hit]]
        table[c] = col
    per_attack = table.loc[hit, "attack_type"].value_counts().sort_index()
    stats.update(
        matched=int(hit.sum()),
        unmatched=int((~hit).sum()),
        per_attack={metric_key(k): int(v) for k, v in per_attack.items()},
        ground_truth_rows=len(gt),
        ground_truth_rows_unmatched=int(len(set(range(len(gt))) - set(idx[hit].tolist()))),
    )
    return table, stats


MALICIOUS_HOSTS_COLUMNS = ("ip", "mac", "label")


def read_malicious_hosts(path: Path) -> pd.DataFrame:
    """The malicious-hosts CSV: ``label`` and at least one of ``ip``, ``mac`` per row."""
    import pandas as pd

    if not path.is_file():
        raise InputError(f"{path}: malicious-hosts CSV not found (dataset.malicious_hosts)")
    try:
        hosts = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"{path}: cannot read malicious-hosts CSV ({exc})") from None
    hosts.columns = [str(c).strip().lower() for c in hosts.columns]
    if "label" not in hosts.columns or not {"ip", "mac"} & set(hosts.columns):
        raise InputError(
            f"{path}: needs a 'label' column and an 'ip' and/or 'mac' column, got {list(hosts.columns)}"
        )
    for col in ("ip", "mac"):
        if col not in hosts.columns:
            hosts[col] = ""
        hosts[col] = hosts[col].str.strip().str.lower()
    hosts["label"] = hosts["label"].str.strip()
    for i, row in enumerate(hosts.itertuples(index=False), start=2):
        if not row.label or not (row.ip or row.mac):
            raise InputError(f"{path}: line {i}: needs a label and an ip or mac")
    return hosts[list(MALICIOUS_HOSTS_COLUMNS)].reset_index(drop=True)


def label_malicious(
    table: pd.DataFrame, flows: pd.DataFrame, hosts: pd.DataFrame | None, stats: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Label malicious-capture flows without a ground truth: a flow of a listed host (either
    endpoint's IP or MAC) gets that host's label; without ``hosts`` every flow is an attack,
    named after its capture file. The attacked device type is the flow's own device type from
    the inventory (empty when its device is not in it: then only ``anomaly_malicious: all``
    uses it)."""
    import numpy as np
    import pandas as pd

    flows = flows.reset_index(drop=True)
    n = len(table)
    labels = np.full(n, None, dtype=object)
    if hosts is None:
        labels[:] = [Path(str(c)).stem for c in flows["capture"]]
    else:
        cols = {
            "ip": [flows[c].astype("string").str.lower() for c in ("dev_ip", "peer_ip")],
            "mac": [flows[c].astype("string").str.lower() for c in ("dev_mac", "peer_mac")],
        }
        for row in hosts.itertuples(index=False):  # first listed host wins
            hit = np.zeros(n, dtype=bool)
            for col in ("ip", "mac"):
                value = getattr(row, col)
                if value:
                    for series in cols[col]:
                        hit |= (series == value).fillna(False).to_numpy()
            labels[hit & (labels == None)] = row.label  # noqa: E711 - elementwise
    hit = labels != None  # noqa: E711 - elementwise
    table = table.copy()
    table["attack_type"] = pd.array(labels, dtype="string")
    dev_type = table["device_type"].astype("string")
    table["gt_device_type"] = dev_type.where(hit, pd.NA)
    table["gt_device_name"] = table["device_id"].astype("string").where(hit, pd.NA)
    per_attack = table.loc[hit, "attack_type"].value_counts().sort_index()
    stats = {
        **stats, "matched": int(hit.sum()), "unmatched": int((~hit).sum()),
        "per_attack": {metric_key(k): int(v) for k, v in per_attack.items()},
    }  # fmt: skip
    return table, stats


def _write(table: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa

    from iotwatch.flowmeter.schema import write_parquet

    write_parquet(pa.Table.from_pandas(table, preserve_index=False), path)
    log.info("wrote %s (%d rows)", path, len(table))


def _counts(table: pd.DataFrame) -> dict[str, int]:
    return {metric_key(k): int(v) for k, v in table[LABEL].value_counts().sort_index().items()}


def run(cfg: FeaturesConfig, ctx: StageContext, sr: StageRun) -> dict[str, Any]:
    """Features stage: flows -> train/validation/test, held-out devices and malicious feature
    tables; records the class counts of each."""
    paths, dataset, seed = ctx.paths, ctx.dataset, ctx.seed
    flows = read_table(paths.flows, "flow table")
    log.info("read %d flows from %s", len(flows), paths.flows)
    table = build_features(flows, cfg.n_packets, cfg.label, str(paths.flows))
    known = table[table[LABEL].notna()].reset_index(drop=True)
    log.info(
        "%d flows of known devices (%d unlabelled skipped)", len(known), len(table) - len(known)
    )
    known, dropped = drop_rare_classes(known, cfg.min_flows_per_class)
    if known[LABEL].nunique() < 2:
        raise InputError(
            f"{paths.flows}: fewer than 2 device types with >= {cfg.min_flows_per_class} flows "
            f"({_counts(known) or 'none'}); nothing to classify"
        )
    metrics: dict[str, Any] = {
        "flows_total": len(flows),
        "flows_known": int(table[LABEL].notna().sum()),
        "n_features": len(feature_columns(cfg.n_packets)),
        "classes": int(known[LABEL].nunique()),
        "dropped_classes": dropped,
    }
    known, devices = hold_out_devices(known, cfg.holdout_devices_per_type, seed)
    if len(devices):
        held = sorted(set(devices["device_id"].astype(str)))
        log.info("device split: %d flows of %d held-out unit(s) %s", len(devices), len(held), held)
    trainval, test, cutoff = split(known, cfg.split, cfg.test_size, seed)
    train, validation, val_cutoff = split(trainval, cfg.split, cfg.validation_size, seed)
    if cfg.split == "time":
        metrics["time_cutoff"] = cutoff
        metrics["validation_time_cutoff"] = val_cutoff
        # A class first seen after a cutoff cannot be learnt: its later flows are dropped.
        for name, part in (("test", test), ("validation", validation)):
            unseen = sorted(set(part[LABEL]) - set(train[LABEL]))
            if unseen:
                log.warning("classes only after the %s cutoff (dropped): %s", name, unseen)
                metrics[f"{name}_only_dropped"] = {
                    metric_key(c): int((part[LABEL] == c).sum()) for c in unseen
                }
        test = test[test[LABEL].isin(set(train[LABEL]))].reset_index(drop=True)
        validation = validation[validation[LABEL].isin(set(train[LABEL]))].reset_index(drop=True)
    log.info(
        "split=%s: %d train, %d validation, %d test, %d held-out-device flows",
        cfg.split, len(train), len(validation), len(test), len(devices),
    )  # fmt: skip
    metrics["train"] = {"flows": len(train), "per_class": _counts(train)}
    metrics["validation"] = {"flows": len(validation), "per_class": _counts(validation)}
    metrics["test"] = {"flows": len(test), "per_class": _counts(test)}
    metrics["devices"] = {
        "flows": len(devices),
        "per_device": {
            metric_key(k): int(v)
            for k, v in devices["device_id"].astype(str).value_counts().sort_index().items()
        },
    }
    _write(train, paths.features_train)
    _write(validation, paths.features_validation)
    _write(test, paths.features_test)
    _write(devices, paths.features_devices)

    mal_source = Path(paths.flows_malicious)
    if mal_source.is_file():
        mal_flows = read_table(mal_source, "malicious flow table")
        if dataset.ground_truth is not None:
            how = f"ground truth {dataset.ground_truth}"
            gt = read_ground_truth(Path(dataset.ground_truth))
            mal, mstats = malicious_features(mal_flows, gt, cfg, str(mal_source))
        else:  # no per-connection ground truth: by host, or every flow
            hosts_csv = dataset.malicious_hosts
            how = (
                f"malicious hosts {hosts_csv}" if hosts_csv is not None
                else "every flow of the malicious captures (no ground_truth, no malicious_hosts)"
            )  # fmt: skip
            mal, mstats = malicious_features(mal_flows, None, cfg, str(mal_source))
            if len(mal):
                hosts = read_malicious_hosts(Path(hosts_csv)) if hosts_csv is not None else None
                mal, mstats = label_malicious(mal, mal_flows, hosts, mstats)
        mstats["labelled_by"] = how
        log.info(
            "malicious flows (labelled by %s): %d labelled, %d not",
            how, mstats["matched"], mstats["unmatched"],
        )  # fmt: skip
    else:
        log.info("no malicious flow table at %s: writing an empty one", mal_source)
        mal = empty_malicious(cfg.n_packets)
        mstats = {"flows": 0, "matched": 0, "unmatched": 0, "per_attack": {}}
    _write(mal, paths.features_malicious)
    metrics["malicious"] = mstats
    types, folder = list(dataset.device_types), Path(paths.anomaly_data)
    metrics["anomaly"] = write_anomaly_tables(
        train, validation, test, mal, cfg, types, folder, seed
    )
    sr.record(metrics)
    return metrics


def write_anomaly_tables(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    test: pd.DataFrame,
    malicious: pd.DataFrame,
    cfg: FeaturesConfig,
    device_types: list[str],
    folder: Path,
    seed: int,
) -> dict[str, Any]:
    """Step 2's data: one table per device type (``<folder>/<type>.parquet``, see
    ``iotwatch.anomaly.data``) for every type in ``device_types`` and in ``train``; counts."""
    import shutil

    from iotwatch.anomaly.data import Tables, device_data, write_slice

    tables = Tables(train, validation, test, malicious, model_columns(train))
    if folder.exists():
        shutil.rmtree(folder)  # no stale tables of types that are gone
    folder.mkdir(parents=True)
    counts: dict[str, Any] = {}
    missing = sorted(set(device_types) - set(tables.device_types()))
    if missing:
        log.warning(
            "dataset.device_types %s have no legitimate train flows (known: %s)",
            missing, tables.device_types(),
        )  # fmt: skip
    for device in sorted(set(device_types) | set(tables.device_types())):
        d = device_data(tables, device, cfg.anomaly_malicious, cfg.anomaly_validation_share,
                        seed, cfg.anomaly_attack_ratio)  # fmt: skip
        write_slice(d, folder / f"{metric_key(device)}.parquet")
        counts[metric_key(device)] = {**d.counts(), "flows_per_device_day": d.flows_per_device_day}
    return counts
