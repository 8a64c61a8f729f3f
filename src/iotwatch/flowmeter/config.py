"""Flow definition: ``FlowConfig`` (the keys of conf/flows/*.yaml) and profile loading."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from iotwatch.config import find_profile, from_dict, read_yaml_mapping

# Protocol names accepted in ``protocols`` (numbers are accepted too, as text or int).
PROTOCOL_NUMBERS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "icmpv6": 58}
TIMESTAMP_UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


@dataclass
class FlowConfig:
    """How packets become flows; every field but ``local_networks`` is a key of conf/flows/*.yaml.

    The defaults are conf/flows/default.yaml's values, for library callers (``FlowConfig()``);
    tests/test_config_source.py fails when the two differ. The pipeline and ``load_profile``
    never use them: every key must be in the profile.
    """

    # IP protocols that make flows: names (tcp, udp, icmp, ...), numbers, or ``all``.
    protocols: list[str] = field(default_factory=lambda: ["tcp"])
    # Put the 802.1Q VLAN id in the flow key (mirror ports often tag one direction only).
    vlan_in_key: bool = False
    # A gap longer than this (seconds) ends a flow; the next packet starts a new one.
    idle_timeout: float = 600.0
    # A packet arriving more than this many seconds after its flow's first packet starts a new one.
    active_timeout: float = 600.0
    # FIN seen both ways, or an RST, closes a TCP flow: a later pure SYN starts a new flow.
    tcp_close_ends_flow: bool = True
    # Bytes counted per packet: frame (wire length), captured (bytes in the file), ip (IP header
    # length field), payload (transport payload).
    size: Literal["frame", "captured", "ip", "payload"] = "ip"
    # Features: sizes of the first N packets per direction and N-1 inter-arrival times.
    n_packets: int = 10
    # Value of the size and iat features a flow with fewer than N packets in a direction lacks.
    pad_value: float = 0.0
    # CIDRs whose addresses are devices (used with the inventory to decide the device side).
    # Not a key of conf/flows/*.yaml: a property of the monitored network, not of the flow
    # definition; its one home is dataset.local_networks (the flows stage copies it here),
    # `iotwatch flows --local-net` on the command line.
    local_networks: list[str] = field(
        default_factory=list,
        metadata={"conf": False, "home": "dataset.local_networks (or iotwatch flows --local-net)"},
    )
    # Timestamps are truncated to this unit before anything else (NFStream works in ms).
    timestamp_unit: Literal["ns", "us", "ms", "s"] = "ns"
    # Timeouts compare with ">=" (NFStream) rather than ">" (the method's "longer than").
    timeout_inclusive: bool = False
    # IP fragments after the first carry no ports: ``keep`` them (a flow with ports 0) or ``drop``.
    non_first_fragments: Literal["keep", "drop"] = "keep"
    # Seconds of timestamp disorder absorbed exactly (packets later than that are clamped).
    reorder_window: float = 2.0

    def __post_init__(self) -> None:
        if self.n_packets < 1:
            raise ValueError(f"n_packets must be >= 1, got {self.n_packets}")
        for name in ("idle_timeout", "active_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.reorder_window < 0:
            raise ValueError("reorder_window must be >= 0")
        self.protocols = [str(p).lower() for p in self.protocols]
        if not self.protocols:
            raise ValueError("protocols is empty (use [all] for every IP protocol)")
        self.protocol_numbers()  # validate names early
        for net in self.local_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"local_networks: '{net}' is not a CIDR") from None

    def protocol_numbers(self) -> list[int] | None:
        """IP protocol numbers to keep, or None for all."""
        if "all" in self.protocols:
            return None
        out = []
        for p in self.protocols:
            if p in PROTOCOL_NUMBERS:
                out.append(PROTOCOL_NUMBERS[p])
            elif p.isdigit() and 0 <= int(p) < 256:
                out.append(int(p))
            else:
                raise ValueError(
                    f"protocols: unknown protocol '{p}' (names {sorted(PROTOCOL_NUMBERS)}, "
                    "a number 0-255, or all)"
                )
        return out


def load_profile(name_or_path: str | Path = "default") -> FlowConfig:
    """Load a flow profile: a name in conf/flows/ or a path to a YAML file (every key given)."""
    path = find_profile("flows", name_or_path)
    return from_dict(FlowConfig, read_yaml_mapping(path), where=str(path), strict=True)
