"""Service profiles: which services a device type uses, learnt from its legitimate train flows.

In the spirit of a MUD profile (RFC 8520): a service is (protocol, role, port). The device is a
``client`` of the peer's port when the peer's port is the lower one, else the ``server`` of its
own port; the service port is the lower of the two. A (protocol, role) whose training flows
spread over ``spread_ports`` or more distinct ports >= 1024 (ephemeral peer ports, e.g. a camera
streaming to any high port) is learnt as a class: any port >= 1024 in that role.

A flow outside its type's profile is an anomaly of its own kind, explained in words
(``why``); flows inside it are left to the autoencoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROFILE_FORMAT = "iotwatch-services/1"
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
ROLES = ("client", "server")
HIGH_PORT = 1024  # ports at or above it may form a class (ephemeral ports)


def service_keys(svc: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(proto, role 0 = client / 1 = server, service port) of rows (proto, dev_port, peer_port)."""
    a = np.asarray(svc, dtype=np.int64).reshape(-1, 3)
    proto, dev, peer = a[:, 0], a[:, 1], a[:, 2]
    server = dev < peer
    return proto, server.astype(np.int64), np.where(server, dev, peer)


def describe(proto: int, role: int, port: int) -> str:
    """``tcp/6667 as client``."""
    return f"{PROTO_NAMES.get(int(proto), str(int(proto)))}/{int(port)} as {ROLES[int(role)]}"


def _code(proto: np.ndarray, role: np.ndarray, port: np.ndarray) -> np.ndarray:
    return (proto * 2 + role) * 65_536 + port


def _chosen(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(proto, role, port) per flow: the reading whose (proto, role, port) recurs more."""
    proto, dev, peer = a[:, 0], a[:, 1], a[:, 2]
    client = _code(proto, np.zeros_like(dev), peer)
    server = _code(proto, np.ones_like(dev), dev)
    codes, counts = np.unique(np.concatenate([client, server]), return_counts=True)

    def count(c: np.ndarray) -> np.ndarray:
        return counts[np.searchsorted(codes, c)]

    nc, ns = count(client), count(server)
    is_server = np.where(nc == ns, dev < peer, ns > nc)
    return proto, is_server.astype(np.int64), np.where(is_server, dev, peer)


@dataclass
class ServiceProfile:
    """``fit`` on a type's legitimate flows; ``contains`` says which flows stay inside it."""

    spread_ports: int = 8
    services_: dict[tuple[int, int, int], int] = field(default_factory=dict)
    spread_: set[tuple[int, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.spread_ports < 2:
            raise ValueError(f"spread_ports must be >= 2, got {self.spread_ports}")

    def fit(self, svc: Any) -> ServiceProfile:
        """Learn the services of flows (rows proto, dev_port, peer_port). A flow's service is
        whichever of its two readings (client of the peer's port, server of its own port)
        recurs more often among the flows (a service port repeats, an ephemeral one does
        not); the lower port decides a tie."""
        proto, role, port = _chosen(np.asarray(svc, dtype=np.int64).reshape(-1, 3))
        keys, counts = np.unique(np.stack([proto, role, port], axis=1), axis=0, return_counts=True)
        self.services_ = {(int(p), int(r), int(q)): int(n)
                          for (p, r, q), n in zip(keys, counts, strict=True)}  # fmt: skip
        high: dict[tuple[int, int], int] = {}
        for (p, r, q), n in self.services_.items():
            if q >= HIGH_PORT and n == 1:  # ports used once: spread, not a service
                high[(p, r)] = high.get((p, r), 0) + 1
        self.spread_ = {pr for pr, n in high.items() if n >= self.spread_ports}
        self._index()
        return self

    def _index(self) -> None:
        k = np.array(list(self.services_), dtype=np.int64).reshape(-1, 3)
        self._codes = np.sort(_code(k[:, 0], k[:, 1], k[:, 2]))
        self._spread = np.array(sorted(p * 2 + r for p, r in self.spread_), dtype=np.int64)

    def contains(self, svc: Any) -> np.ndarray:
        """Per flow (rows proto, dev_port, peer_port): inside the profile."""
        a = np.asarray(svc, dtype=np.int64).reshape(-1, 3)
        proto, dev, peer = a[:, 0], a[:, 1], a[:, 2]
        inside = np.isin(_code(proto, np.zeros_like(dev), peer), self._codes)
        inside |= np.isin(_code(proto, np.ones_like(dev), dev), self._codes)
        proto, role, port = service_keys(a)
        if len(self._spread):
            inside |= np.isin(proto * 2 + role, self._spread) & (port >= HIGH_PORT)
        return inside

    def why(self, svc_row: Any, device_type: str) -> str:
        """Why a flow outside the profile is one, in words."""
        proto, role, port = (int(v[0]) for v in service_keys(svc_row))
        used = ", ".join(self.listing()[:4]) or "none"
        return (f"new service {describe(proto, role, port)}; never seen for {device_type} in "
                f"training (its services: {used})")  # fmt: skip

    def listing(self) -> list[str]:
        """The profile in words, most used first (classes as ``tcp/>=1024 as server``)."""
        out = [(n, describe(*k)) for k, n in self.services_.items()
               if (k[0], k[1]) not in self.spread_]  # fmt: skip
        out.sort(key=lambda t: (-t[0], t[1]))
        classes = [f"{PROTO_NAMES.get(p, str(p))}/>={HIGH_PORT} as {ROLES[r]}"
                   for p, r in sorted(self.spread_)]  # fmt: skip
        return classes + [d for _, d in out]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "spread_ports": self.spread_ports,
            "services": [[p, ROLES[r], q, n] for (p, r, q), n in sorted(self.services_.items())],
            "classes": [[p, ROLES[r], f">={HIGH_PORT}"] for p, r in sorted(self.spread_)],
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "services.json") -> ServiceProfile:
        """Read ``to_dict``'s output; ValueError naming ``where`` when it is not one."""
        try:
            if data.get("format") != PROFILE_FORMAT:
                raise ValueError(f"not format {PROFILE_FORMAT}")
            prof = cls(spread_ports=int(data["spread_ports"]))
            prof.services_ = {}
            for p, r, q, n in data["services"]:
                if r not in ROLES or not 0 <= int(q) <= 65_535 or int(n) < 1:
                    raise ValueError(f"bad service {[p, r, q, n]}")
                prof.services_[(int(p), ROLES.index(r), int(q))] = int(n)
            prof.spread_ = set()
            for p, r, _ in data["classes"]:
                if r not in ROLES:
                    raise ValueError(f"bad class role {r!r}")
                prof.spread_.add((int(p), ROLES.index(r)))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a service profile ({exc})") from None
        prof._index()
        return prof
