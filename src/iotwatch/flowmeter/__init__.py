"""Flow meter: packet captures to bidirectional flows with first-N-packet features.

Public names are imported lazily (``from iotwatch.flowmeter import meter_captures``), so
importing the package costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iotwatch.flowmeter.config import FlowConfig, load_profile
    from iotwatch.flowmeter.frames import batch_from_frames
    from iotwatch.flowmeter.meter import FlowResult, meter_captures
    from iotwatch.flowmeter.packets import PacketBatch, ReadStats
    from iotwatch.flowmeter.schema import feature_columns
    from iotwatch.flowmeter.stream import FlowStream, iter_flows

__all__ = ["FlowConfig", "FlowResult", "FlowStream", "PacketBatch", "ReadStats",
           "batch_from_frames", "feature_columns", "iter_flows", "load_profile",
           "meter_captures"]  # fmt: skip

_WHERE = {
    "FlowConfig": "iotwatch.flowmeter.config",
    "load_profile": "iotwatch.flowmeter.config",
    "FlowResult": "iotwatch.flowmeter.meter",
    "meter_captures": "iotwatch.flowmeter.meter",
    "feature_columns": "iotwatch.flowmeter.schema",
    "FlowStream": "iotwatch.flowmeter.stream",
    "iter_flows": "iotwatch.flowmeter.stream",
    "batch_from_frames": "iotwatch.flowmeter.frames",
    "PacketBatch": "iotwatch.flowmeter.packets",
    "ReadStats": "iotwatch.flowmeter.packets",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'iotwatch.flowmeter' has no attribute {name!r}")
