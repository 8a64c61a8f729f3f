"""Which end of a flow is the monitored device, without an inventory.

The flow meter puts a known side first (an inventory device, or an address in the local
networks) and, when both or neither side is known, the initiator. On a home network both ends
of a phone-to-bulb connection are local, and the initiator is the app on the phone: the device
is the side that listens. ``responder_first`` swaps those flows (local to local) so that the
responder is the device, as it was in training, where the inventory named the device.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The monitored network when neither the command nor the bundle names one: private IPv4
# ranges, IPv6 unique local and link-local addresses.
PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fe80::/10")


def bool_array(mask: np.ndarray) -> pa.Array:
    """A numpy bool mask as an Arrow array, built from its bits: ``pa.array`` imports pandas
    (a quarter of a second of the monitor's start) to check what it was given."""
    bits = np.packbits(np.asarray(mask, bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


def _pairs(n_packets: int) -> list[tuple[str, str]]:
    pairs = [("dev_mac", "peer_mac"), ("dev_ip", "peer_ip"), ("dev_port", "peer_port"),
             ("packets_sent", "packets_recv"), ("bytes_sent", "bytes_recv")]  # fmt: skip
    pairs += [(f"size_sent_{i}", f"size_recv_{i}") for i in range(1, n_packets + 1)]
    pairs += [(f"iat_sent_{i}", f"iat_recv_{i}") for i in range(1, n_packets)]
    return pairs


class LocalNetworks:
    """Membership test of addresses (text, as the flow table writes them) in CIDRs."""

    def __init__(self, cidrs: list[str]) -> None:
        self.cidrs = list(cidrs)
        self.nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._contains = lru_cache(maxsize=65_536)(self._lookup)

    def _lookup(self, text: str) -> bool:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return False
        return any(addr.version == n.version and addr in n for n in self.nets)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self._contains(text)


def responder_first(table: pa.Table, local: LocalNetworks, n_packets: int) -> pa.Table:
    """``table`` with every local-to-local flow turned round (the responder as the device)."""
    if table.num_rows == 0 or not local.nets:
        return table
    dev = table.column("dev_ip").to_pylist()
    peer = table.column("peer_ip").to_pylist()
    mask = np.fromiter((d in local and p in local for d, p in zip(dev, peer, strict=True)),
                       bool, count=len(dev))  # fmt: skip
    if not mask.any():
        return table
    m = bool_array(mask)
    cols = {name: table.column(name) for name in table.column_names}
    for a, b in _pairs(n_packets):
        cols[a], cols[b] = pc.if_else(m, cols[b], cols[a]), pc.if_else(m, cols[a], cols[b])
    return pa.Table.from_arrays([cols[f.name].cast(f.type) for f in table.schema],
                                schema=table.schema)  # fmt: skip
