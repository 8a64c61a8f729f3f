"""Per-device splits for the anomaly detectors.

The features stage writes one table per device type (``paths.anomaly_data/<type>.parquet``,
``slice_frame``) so that DVC retrains a device type's detector only when its own data changed;
the autoencoder and tune stages read it back with ``read_slice``.

For device type D:
* train: D's legitimate train flows (features_train, label == D);
* validation: D's legitimate validation flows + a share (``validation_share``) of the malicious
  flows aimed at D;
* test: D's legitimate test flows + the rest of those malicious flows.

"Aimed at D" is ``gt_device_type == D`` (``malicious: device``) or every labelled malicious flow
(``malicious: all``). Malicious flows without a ground-truth match (no ``attack_type``) are not
used. The malicious flows are split per attack type (stratified), shuffled with the seed; each
attack type sends round-half-up(n * validation_share) flows to validation, the rest to test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from iotwatch.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from iotwatch.paths import PathsConfig

log = logging.getLogger(__name__)


@dataclass
class Tables:
    """The feature tables the anomaly stage reads."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    malicious: pd.DataFrame
    columns: list[str]

    def device_types(self) -> list[str]:
        """Device types with legitimate training flows, sorted."""
        from iotwatch.features import LABEL

        return sorted(set(self.train[LABEL].dropna().astype(str)))


@dataclass
class DeviceData:
    """One device type's raw (unscaled) feature arrays and labels."""

    device: str
    columns: list[str]
    train: np.ndarray
    validation: np.ndarray
    validation_attack: np.ndarray  # bool per validation flow
    validation_attack_type: np.ndarray  # str per validation flow ('' for legitimate)
    test: np.ndarray
    test_attack: np.ndarray
    test_attack_type: np.ndarray
    # per split, each flow's service (proto, dev_port, peer_port; ``SERVICE_COLUMNS``): None in
    # a table written before service profiles
    train_service: np.ndarray | None = None
    validation_service: np.ndarray | None = None
    test_service: np.ndarray | None = None
    # legitimate flows per device per day of this type's units (the alert budget's unit)
    flows_per_device_day: float | None = None

    def counts(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "validation_legit": int((~self.validation_attack).sum()),
            "validation_attack": int(self.validation_attack.sum()),
            "test_legit": int((~self.test_attack).sum()),
            "test_attack": int(self.test_attack.sum()),
        }


def load_tables(paths: PathsConfig) -> Tables:
    """Read train/validation/test and the malicious feature tables; check their columns."""
    from iotwatch.features import LABEL, MALICIOUS_EXTRA, model_columns, read_table

    named = {
        "train": (paths.features_train, "train feature table"),
        "validation": (paths.features_validation, "validation feature table"),
        "test": (paths.features_test, "test feature table"),
        "malicious": (paths.features_malicious, "malicious feature table"),
    }
    tables = {k: read_table(p, what) for k, (p, what) in named.items()}
    cols = model_columns(tables["train"])
    for key, t in tables.items():
        path = named[key][0]
        if model_columns(t) != cols:
            raise InputError(f"{path}: feature columns differ from {paths.features_train}")
        if key != "malicious" and LABEL not in t.columns:
            raise InputError(f"{path}: no '{LABEL}' column (written by the features stage?)")
    missing = [c for c in MALICIOUS_EXTRA if c not in tables["malicious"].columns]
    if missing:
        raise InputError(f"{paths.features_malicious}: missing column(s) {missing}")
    if len(tables["train"]) == 0:
        raise InputError(f"{paths.features_train}: empty train feature table")
    return Tables(**tables, columns=cols)


def split_malicious(
    attack_types: np.ndarray, validation_share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (validation, test) of malicious flows, stratified by attack type."""
    types = np.asarray(attack_types, dtype=object)
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for t in sorted(set(types.tolist())):
        pos = np.flatnonzero(types == t)
        pos = pos[rng.permutation(len(pos))]
        k = int(np.floor(len(pos) * validation_share + 0.5))
        val.append(pos[:k])
        test.append(pos[k:])
    empty = np.zeros(0, dtype=int)
    return (
        np.sort(np.concatenate(val)) if val else empty,
        np.sort(np.concatenate(test)) if test else empty,
    )


def cap_per_type(
    idx: np.ndarray, types: np.ndarray, n_max: int, rng: np.random.Generator
) -> np.ndarray:
    """At most ``n_max`` of the positions ``idx``, drawn per attack type in proportion to its
    share (largest remainders; seeded), sorted: every attack type keeps its place."""
    if len(idx) <= n_max:
        return idx
    kinds, counts = np.unique(types[idx].astype(str), return_counts=True)
    exact = counts * n_max / len(idx)
    take = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - take), kind="stable")[: n_max - int(take.sum())]:
        take[k] += 1
    out = [rng.choice(idx[types[idx].astype(str) == kind], t, replace=False)
           for kind, t in zip(kinds, take, strict=True) if t]  # fmt: skip
    return np.sort(np.concatenate(out)) if out else idx[:0]


def flows_per_device_day(frames: list[pd.DataFrame]) -> float | None:
    """Legitimate flows per device per day: the flows over the sum of each unit's span (first
    to last flow start; at least one day per unit)."""
    import pandas as pd

    if "capture_time" not in frames[0].columns:
        return None
    f = pd.concat([x[["device_id", "capture_time"]] for x in frames], ignore_index=True)
    if f.empty:
        return None
    span = f.groupby(f["device_id"].astype(str))["capture_time"].agg(lambda t: t.max() - t.min())
    days = float(np.maximum(span.to_numpy(dtype=float) / 86_400.0, 1.0).sum())
    return round(len(f) / days, 3)


def _service(frame: pd.DataFrame) -> np.ndarray | None:
    from iotwatch.features import SERVICE_COLUMNS

    if not all(c in frame.columns for c in SERVICE_COLUMNS):
        return None
    return frame[list(SERVICE_COLUMNS)].to_numpy(dtype=np.int64)


def _types(frame: pd.DataFrame) -> np.ndarray:
    return frame["attack_type"].astype("string").fillna("").astype(str).to_numpy(dtype=object)


def device_data(
    tables: Tables,
    device: str,
    malicious: Literal["device", "all"],
    validation_share: float,
    seed: int,
    attack_ratio: float | None = None,
) -> DeviceData:
    """The per-device splits of ``device`` (see the module docstring); with ``attack_ratio``
    each of validation and test keeps at most that many attack flows per legitimate flow."""
    from iotwatch.features import LABEL

    cols = tables.columns

    def legit(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame[LABEL].astype("string") == device]

    mal = tables.malicious
    mal = mal[mal["attack_type"].notna()]
    if malicious == "device":
        mal = mal[mal["gt_device_type"].astype("string") == device]
    mal = mal.reset_index(drop=True)
    mal_types = _types(mal)
    vi, ti = split_malicious(mal_types, validation_share, seed)
    if attack_ratio is not None:
        rng = np.random.default_rng([seed, 7])
        vi = cap_per_type(
            vi, mal_types, int(round(attack_ratio * len(legit(tables.validation)))), rng
        )
        ti = cap_per_type(ti, mal_types, int(round(attack_ratio * len(legit(tables.test)))), rng)

    def join(legit_part: pd.DataFrame, idx: np.ndarray) -> tuple[Any, Any, Any, Any]:
        x = np.concatenate(
            [
                legit_part[cols].to_numpy(dtype="float64"),
                mal.iloc[idx][cols].to_numpy(dtype="float64"),
            ]
        )
        attack = np.concatenate([np.zeros(len(legit_part), bool), np.ones(len(idx), bool)])
        types = np.concatenate([np.full(len(legit_part), "", dtype=object), mal_types[idx]])
        a, b = _service(legit_part), _service(mal.iloc[idx])
        svc = None if a is None or b is None else np.concatenate([a, b]).reshape(-1, 3)
        return x, attack, types, svc

    va, va_att, va_types, va_svc = join(legit(tables.validation), vi)
    te, te_att, te_types, te_svc = join(legit(tables.test), ti)
    train = legit(tables.train)
    parts = [legit(tables.train), legit(tables.validation), legit(tables.test)]
    return DeviceData(
        device=device,
        columns=list(cols),
        train=train[cols].to_numpy(dtype="float64"),
        validation=va,
        validation_attack=va_att,
        validation_attack_type=va_types,
        test=te,
        test_attack=te_att,
        test_attack_type=te_types,
        train_service=_service(train),
        validation_service=va_svc,
        test_service=te_svc,
        flows_per_device_day=flows_per_device_day(parts),
    )


SPLIT = "split"  # train | validation | test
ATTACK = "attack"  # bool
ATTACK_TYPE = "attack_type"  # '' for legitimate flows
DEVICE_TYPE = "device_type"


FLOWS_PER_DAY_KEY = b"iotwatch.flows_per_device_day"  # the table's metadata


def slice_frame(d: DeviceData) -> pd.DataFrame:
    """One device type's data as a table: features, split, attack, attack_type, device_type
    and (when known) each flow's service columns."""
    import pandas as pd

    from iotwatch.features import SERVICE_COLUMNS

    parts = [
        ("train", d.train, np.zeros(len(d.train), bool), np.full(len(d.train), "", object),
         d.train_service),
        ("validation", d.validation, d.validation_attack, d.validation_attack_type,
         d.validation_service),
        ("test", d.test, d.test_attack, d.test_attack_type, d.test_service),
    ]  # fmt: skip
    with_service = all(p[4] is not None for p in parts)
    frames = []
    for name, x, attack, types, svc in parts:
        f = pd.DataFrame(np.asarray(x, dtype="float64").reshape(len(x), len(d.columns)),
                         columns=d.columns)  # fmt: skip
        f[SPLIT] = pd.array([name] * len(x), dtype="string")
        f[ATTACK] = np.asarray(attack, dtype=bool)
        f[ATTACK_TYPE] = pd.array([str(t) for t in types], dtype="string")
        if with_service:
            for k, c in enumerate(SERVICE_COLUMNS):
                f[c] = np.asarray(svc, dtype=np.int64).reshape(-1, 3)[:, k].astype(np.int32)
        frames.append(f)
    out = pd.concat(frames, ignore_index=True)
    out[DEVICE_TYPE] = pd.array([d.device] * len(out), dtype="string")
    return out


def write_slice(d: DeviceData, path: Path) -> None:
    """``slice_frame(d)`` as Parquet, its flows per device-day in the file's metadata."""
    import pyarrow as pa

    from iotwatch.flowmeter.schema import write_parquet

    table = pa.Table.from_pandas(slice_frame(d), preserve_index=False)
    if d.flows_per_device_day is not None:
        meta = {**(table.schema.metadata or {}),
                FLOWS_PER_DAY_KEY: str(d.flows_per_device_day).encode()}  # fmt: skip
        table = table.replace_schema_metadata(meta)
    write_parquet(table, path)
    log.info("wrote %s (%d rows)", path, table.num_rows)


def read_slice(path: Path | str, device: str) -> DeviceData:
    """Read a table written from ``slice_frame`` (InputError naming the file when wrong)."""
    from iotwatch.features import read_table

    path = Path(path)
    frame = read_table(path, f"anomaly table of device type {device!r} (features stage)")
    from iotwatch.features import SERVICE_COLUMNS

    meta = (SPLIT, ATTACK, ATTACK_TYPE, DEVICE_TYPE)
    missing = [c for c in meta if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing} (written by the features stage?)")
    cols = [c for c in frame.columns if c not in (*meta, *SERVICE_COLUMNS)]
    svc = _service(frame)
    try:
        import pyarrow.parquet as pq

        raw = (pq.read_schema(path).metadata or {}).get(FLOWS_PER_DAY_KEY)
        per_day = float(raw) if raw is not None else None
    except (OSError, ValueError):
        per_day = None
    split = frame[SPLIT].astype(str).to_numpy()
    attack = frame[ATTACK].to_numpy(dtype=bool)
    types = frame[ATTACK_TYPE].astype("string").fillna("").astype(str).to_numpy(dtype=object)
    x = frame[cols].to_numpy(dtype="float64")

    def part(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        m = split == name
        return x[m], attack[m], types[m], (None if svc is None else svc[m])

    tr, tr_att, _, tr_svc = part("train")
    if tr_att.any():
        raise InputError(f"{path}: attack flows in the train split (train is legitimate only)")
    va, va_att, va_types, va_svc = part("validation")
    te, te_att, te_types, te_svc = part("test")
    return DeviceData(device, cols, tr, va, va_att, va_types, te, te_att, te_types,
                      tr_svc, va_svc, te_svc, per_day)  # fmt: skip


def skip_reason(data: DeviceData, min_train_flows: int) -> str | None:
    """Why ``data`` cannot be used (None when it can)."""
    c = data.counts()
    if c["train"] < min_train_flows:
        return f"{c['train']} legitimate train flows < min_train_flows={min_train_flows}"
    if c["validation_legit"] == 0:
        return "no legitimate validation flows (early stopping and thresholds need them)"
    if c["test_legit"] + c["test_attack"] == 0:
        return "no test flows"
    return None
