"""The flow table's schema (one row per bidirectional flow, documented in docs/flows.md) and
the one way tables reach disk: Parquet written to a temporary file renamed into place."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from iotwatch.errors import OutputError

END_REASONS = ("idle", "active", "close", "end_of_capture")


def feature_columns(n: int) -> list[str]:
    """Feature column names for N packets: sizes sent, sizes received, iats sent, iats received."""
    return (
        [f"size_sent_{i}" for i in range(1, n + 1)]
        + [f"size_recv_{i}" for i in range(1, n + 1)]
        + [f"iat_sent_{i}" for i in range(1, n)]
        + [f"iat_recv_{i}" for i in range(1, n)]
    )


def feature_fields(n: int) -> list[pa.Field]:
    """The feature columns with their types: sizes are int32, inter-arrival times float64."""
    return [
        pa.field(name, pa.int32() if name.startswith("size_") else pa.float64())
        for name in feature_columns(n)
    ]


def base_fields() -> list[pa.Field]:
    """The columns before the features."""
    return [
        pa.field("capture", pa.string(), nullable=False),
        pa.field("flow_id", pa.int64(), nullable=False),
        pa.field("proto", pa.uint8(), nullable=False),
        pa.field("ip_version", pa.uint8(), nullable=False),
        pa.field("vlan", pa.int32(), nullable=False),
        pa.field("dev_mac", pa.string()),
        pa.field("dev_ip", pa.string(), nullable=False),
        pa.field("dev_port", pa.int32(), nullable=False),
        pa.field("peer_mac", pa.string()),
        pa.field("peer_ip", pa.string(), nullable=False),
        pa.field("peer_port", pa.int32(), nullable=False),
        pa.field("device_known", pa.bool_(), nullable=False),
        pa.field("device_type", pa.string()),
        pa.field("device_name", pa.string()),
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("duration", pa.float64(), nullable=False),
        pa.field("packets_sent", pa.int64(), nullable=False),
        pa.field("packets_recv", pa.int64(), nullable=False),
        pa.field("bytes_sent", pa.int64(), nullable=False),
        pa.field("bytes_recv", pa.int64(), nullable=False),
        pa.field("packets", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("end_reason", pa.string(), nullable=False),
    ]


def flow_schema(n: int) -> pa.Schema:
    """The full flow table schema for N feature packets per direction."""
    return pa.schema(
        base_fields() + feature_fields(n), metadata={"iotwatch.flows.n_packets": str(n)}
    )


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed onto ``path`` when the block exits normally
    and left a file there. An error, or a block that removed the file, leaves ``path`` as it
    was and no temporary file behind.

    Writing is where the disk says no (read-only, full, a folder where the file should be, a
    file where a folder should be): the writers raise ``OutputError`` for the file they write,
    and one for the temporary file (or a file named after it, like the run files) is raised
    again naming ``path``, as is a failed rename; the clean-up never raises over it (on a
    read-only file system even removing a missing file fails). Other errors pass unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError.from_os(path, exc) from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            yield tmp
        except OutputError as exc:
            if exc.path == tmp or exc.path.name.startswith(f".{tmp.name}."):
                raise OutputError(path, exc.reason) from None  # the user's name for it
            raise
        if tmp.exists():
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise OutputError.from_os(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode only the string columns: on numeric and feature columns (mostly
    distinct values) it costs half the write time and makes the file larger, not smaller."""
    return [
        f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Write a table (flows or features) as Parquet: parent folders created, string columns
    dictionary-encoded, written whole to a temporary file and then renamed into place."""
    import pyarrow.parquet as pq

    with replacing(path) as tmp:
        try:
            pq.write_table(table, tmp, use_dictionary=dictionary_columns(table.schema))
        except OSError as exc:
            raise OutputError.from_os(tmp, exc) from None
