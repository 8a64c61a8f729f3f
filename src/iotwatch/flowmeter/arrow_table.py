"""Arrow building: finished flows (numpy columns in endpoint order) to the documented table.

Strings are written by kernels straight into Arrow buffers, numeric columns are wrapped
zero-copy; neither pandas nor pyarrow.compute is imported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from iotwatch.flowmeter import _meter_kernels as K
from iotwatch.flowmeter.config import FlowConfig
from iotwatch.flowmeter.orient import _device_sides
from iotwatch.flowmeter.schema import END_REASONS, feature_columns, flow_schema
from iotwatch.inventory import Inventory

_NS = 1_000_000_000


def _string_array(off: np.ndarray, data: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """An Arrow string array straight from offsets and bytes (no Python string per row)."""
    n = len(off) - 1
    bitmap = None
    if valid is not None and not valid.all():
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    null_count = -1 if bitmap is not None else 0
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(off), pa.py_buffer(data), bitmap, null_count=null_count
    )


_NP_OF = {
    pa.uint8(): np.uint8, pa.int32(): np.int32, pa.int64(): np.int64, pa.float64(): np.float64,
}  # fmt: skip


def _numpy(values: pa.Array | pa.ChunkedArray, dtype: type) -> np.ndarray:
    """A primitive Arrow column without nulls as numpy, read from its buffers (``to_numpy``
    imports pandas, like ``pa.array``: see ``_arrow``)."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    parts = [np.frombuffer(c.buffers()[1], dtype)[c.offset : c.offset + len(c)] for c in chunks]
    return np.concatenate(parts) if len(parts) != 1 else parts[0]


def _arrow(values: np.ndarray, typ: pa.DataType) -> pa.Array:
    """A numpy column as an Arrow array, zero-copy where the layout allows.

    ``pa.array`` on numpy input imports pandas (a quarter of a second of a CLI run) to check for
    pandas objects; building from buffers does not.
    """
    if pa.types.is_boolean(typ):
        bits = np.packbits(np.asarray(values, np.bool_), bitorder="little")
        return pa.Array.from_buffers(typ, len(values), [None, pa.py_buffer(bits)], null_count=0)
    arr = np.ascontiguousarray(values, _NP_OF[typ])
    return pa.Array.from_buffers(typ, len(arr), [None, pa.py_buffer(arr)], null_count=0)


def _str_take(values: Sequence[str], idx: np.ndarray) -> pa.Array:
    """``values[idx]`` as an Arrow string array, null where ``idx < 0`` (few values, many rows).

    A numba gather on the buffers: ``Array.take`` would import pyarrow.compute (70 ms a run).
    """
    data = [v.encode() for v in values]
    off = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(d) for d in data], out=off[1:])
    raw = np.frombuffer(b"".join(data), np.uint8)  # read-only, also when empty: one signature
    idx = np.asarray(idx, np.int64)
    return _string_array(*K.gather_strings(off, raw, idx), valid=idx >= 0)


def build_table(
    flows: dict[str, np.ndarray],
    feats: dict[str, np.ndarray],
    captures: np.ndarray | list[str],
    config: FlowConfig,
    inventory: Inventory | None = None,
    first_id: int = 0,
) -> pa.Table:
    """Orient flows to the device side and build the documented table, sorted by (start, id).

    ``first_id``: the flow_id of the first row (a block of a table written in parts).

    ``flows`` and ``feats`` are consumed: reordered in place (each unsorted column is freed as
    its sorted copy is made) and emptied as the table takes their data, to keep the peak low.
    """
    n = config.n_packets
    order = np.lexsort((flows["seq0"], flows["file"], flows["start"]))
    for d in (flows, feats):
        for key in list(d):
            d[key] = d[key][order]
    del order
    fl, ft = flows, feats
    caps = _str_take(list(captures), fl["file"])
    nets = [ipaddress.ip_network(x, strict=False) for x in config.local_networks]
    (dev_ia, dev_ib), (ka, kb) = _device_sides(fl, inventory, nets)
    known = ka != kb
    dev_a = np.where(known, ka, fl["init_a"])

    def sel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.where(dev_a, x, y)

    def ips(dev: bool) -> pa.Array:
        # one text per row, written by a kernel: cheaper than texts per unique address + a take
        x, y = ("a", "b") if dev else ("b", "a")
        hi, lo = sel(fl[f"{x}_hi"], fl[f"{y}_hi"]), sel(fl[f"{x}_lo"], fl[f"{y}_lo"])
        return _string_array(*K.format_ips(hi, lo))

    def macs(dev: bool) -> pa.Array:
        m = sel(fl["mac_a"], fl["mac_b"]) if dev else sel(fl["mac_b"], fl["mac_a"])
        return _string_array(*K.format_macs(m), valid=m != 0)

    devices = list(inventory.devices) if inventory is not None else []
    dev_i = sel(dev_ia, dev_ib)

    start = fl["start"] / _NS
    end = fl["end"] / _NS
    p_s, p_r = sel(fl["pab"], fl["pba"]), sel(fl["pba"], fl["pab"])
    b_s, b_r = sel(fl["bab"], fl["bba"]), sel(fl["bba"], fl["bab"])
    cols: dict[str, Any] = {
        "capture": caps,
        "flow_id": np.arange(first_id, first_id + len(start), dtype=np.int64),
        "proto": fl["proto"].astype(np.uint8),
        "ip_version": fl["ipver"].astype(np.uint8),
        "vlan": fl["vlan"].astype(np.int32),
        "dev_mac": macs(dev=True),
        "dev_ip": ips(dev=True),
        "dev_port": sel(fl["a_port"], fl["b_port"]).astype(np.int32),
        "peer_mac": macs(dev=False),
        "peer_ip": ips(dev=False),
        "peer_port": sel(fl["b_port"], fl["a_port"]).astype(np.int32),
        "device_known": known,
        "device_type": _str_take([d.device_type for d in devices], dev_i),
        "device_name": _str_take([d.name for d in devices], dev_i),
        "start": start,
        "end": end,
        "duration": end - start,
        "packets_sent": p_s,
        "packets_recv": p_r,
        "bytes_sent": b_s,
        "bytes_recv": b_r,
        "packets": p_s + p_r,
        "bytes": b_s + b_r,
        "end_reason": _str_take(END_REASONS, fl["reason"]),
    }
    fl.clear()
    d = dev_a[:, None]
    s_ab, s_ba = ft.pop("s_ab"), ft.pop("s_ba")
    s_sent, s_recv = np.where(d, s_ab, s_ba), np.where(d, s_ba, s_ab)
    del s_ab, s_ba
    pad = config.pad_value
    pad_size = np.int64(int(pad))  # int64 like the sizes were: out-of-range pads wrap as before
    names = feature_columns(n)
    blocks = []
    for s in (s_sent, s_recv):
        blocks.append(np.where(s >= 0, s, pad_size).astype(np.int32))
    t_ab, t_ba = ft.pop("t_ab"), ft.pop("t_ba")
    for s, (x, y) in ((s_sent, (t_ab, t_ba)), (s_recv, (t_ba, t_ab))):
        ok = (s[:, 1:] >= 0) & (s[:, :-1] >= 0)
        blocks.append(np.where(ok, np.diff(np.where(d, x, y), axis=1) / _NS, float(pad)))
    del t_ab, t_ba, s_sent, s_recv
    feat_cols = [b[:, i] for b in blocks for i in range(b.shape[1])]
    for name, arr in zip(names, feat_cols, strict=True):
        cols[name] = np.ascontiguousarray(arr)
    schema = flow_schema(n)
    arrays = [
        cols[f.name] if isinstance(cols[f.name], pa.Array) else _arrow(cols[f.name], f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
