"""The flow table's schema: one row per bidirectional flow (documented in docs/flows.md)."""

from __future__ import annotations

import pyarrow as pa

END_REASONS = ("idle", "active", "close", "end_of_capture")


def feature_columns(n: int) -> list[str]:
    """Feature column names for N packets: sizes sent, sizes received, iats sent, iats received."""
    return (
        [f"size_sent_{i}" for i in range(1, n + 1)]
        + [f"size_recv_{i}" for i in range(1, n + 1)]
        + [f"iat_sent_{i}" for i in range(1, n)]
        + [f"iat_recv_{i}" for i in range(1, n)]
    )


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
    fields = base_fields()
    for name in feature_columns(n):
        fields.append(pa.field(name, pa.int32() if name.startswith("size") else pa.float64()))
    return pa.schema(fields, metadata={"iotwatch.flows.n_packets": str(n)})
