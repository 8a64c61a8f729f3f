"""Synthesizer configuration: a dataclass tree whose fields are exactly the keys of conf/synth/*.yaml.

No defaults: conf/synth/*.yaml is the one place values live, and every profile spells out every
key (a device's ``camera``/``sensor``/``tplink`` section only where its type needs it). Ranges
are two-element lists ``[low, high]`` drawn uniformly (integers inclusive).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

DeviceType = Literal["nest_camera", "dlink_motion_sensor", "tplink_bulb", "tplink_plug"]


def _check_range(name: str, r: list[float] | list[int]) -> None:
    if len(r) != 2 or r[0] > r[1] or r[0] < 0:
        raise ValueError(f"{name} must be [low, high] with 0 <= low <= high, got {list(r)}")


def _check_ip(name: str, ip: str) -> None:
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise ValueError(f"{name}: '{ip}' is not an IPv4 address") from None


def _check_mac(name: str, mac: str) -> None:
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{name}: '{mac}' is not a MAC address (aa:bb:cc:dd:ee:ff)")
    try:
        bytes.fromhex(mac.replace(":", ""))
    except ValueError:
        raise ValueError(f"{name}: '{mac}' is not a MAC address (aa:bb:cc:dd:ee:ff)") from None


@dataclass
class Endpoint:
    """A LAN host: MAC and IPv4 address."""

    mac: str
    ip: str

    def __post_init__(self) -> None:
        _check_mac("mac", self.mac)
        _check_ip("ip", self.ip)


@dataclass
class NetworkConfig:
    """The home network and the background hosts every device talks to."""

    gateway: Endpoint
    phone: Endpoint
    dns_server: str
    dns_ttl_s: list[float]
    ntp_servers: list[str]
    mss: int
    wan_rtt_ms: list[float]
    lan_rtt_ms: list[float]
    ack_delay_ms: list[float]
    uplink_kbps: float
    downlink_kbps: float
    retransmit_prob: float
    rto_ms: list[float]
    window_update_prob: float
    ttl_wan: list[int]

    def __post_init__(self) -> None:
        _check_ip("dns_server", self.dns_server)
        for ip in self.ntp_servers:
            _check_ip("ntp_servers", ip)
        if not self.ntp_servers:
            raise ValueError("ntp_servers must list at least one server")
        if not 536 <= self.mss <= 1460:
            raise ValueError(f"mss must be within 536..1460, got {self.mss}")
        for name in ("dns_ttl_s", "wan_rtt_ms", "lan_rtt_ms", "ack_delay_ms", "rto_ms", "ttl_wan"):
            _check_range(name, getattr(self, name))
        if not 0 <= self.retransmit_prob < 1 or not 0 <= self.window_update_prob <= 1:
            raise ValueError("retransmit_prob / window_update_prob must be probabilities")
        if self.uplink_kbps <= 0 or self.downlink_kbps <= 0:
            raise ValueError("uplink_kbps and downlink_kbps must be > 0")


@dataclass
class CloudConfig:
    """A vendor cloud service reached over TLS (persistent session or short connections)."""

    hostname: str
    ips: list[str]
    port: int
    keepalive_s: list[float]
    keepalive_bytes_out: list[int]
    keepalive_bytes_in: list[int]
    session_h: list[float]
    rst_close_prob: float
    tls_client_hello: list[int]
    tls_server_flight: list[int]
    tls_client_finish: list[int]
    tls_server_finish: list[int]

    def __post_init__(self) -> None:
        if not self.ips:
            raise ValueError("ips must list at least one address")
        for ip in self.ips:
            _check_ip("ips", ip)
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        for name in (
            "keepalive_s", "keepalive_bytes_out", "keepalive_bytes_in", "session_h",
            "tls_client_hello", "tls_server_flight", "tls_client_finish", "tls_server_finish",
        ):  # fmt: skip
            _check_range(name, getattr(self, name))
        if self.keepalive_s[0] <= 0 or self.session_h[0] <= 0:
            raise ValueError("keepalive_s and session_h must be > 0")


@dataclass
class CameraConfig:
    """Security camera: continuous low-rate video upload plus motion-triggered bursts."""

    idle_kbps: list[float]
    chunk_s: list[float]
    motion_per_h: float
    motion_s: list[float]
    motion_kbps: list[float]
    record_bytes: int

    def __post_init__(self) -> None:
        for name in ("idle_kbps", "chunk_s", "motion_s", "motion_kbps"):
            _check_range(name, getattr(self, name))
        if self.chunk_s[0] <= 0 or self.motion_per_h < 0:
            raise ValueError("chunk_s must be > 0 and motion_per_h >= 0")


@dataclass
class SensorConfig:
    """Motion sensor: event notifications and periodic status reports on short TLS connections."""

    motion_per_h: float
    event_cloud: CloudConfig
    event_bytes_out: list[int]
    event_bytes_in: list[int]
    status_s: list[float]
    status_bytes_out: list[int]
    status_bytes_in: list[int]

    def __post_init__(self) -> None:
        for name in (
            "event_bytes_out",
            "event_bytes_in",
            "status_s",
            "status_bytes_out",
            "status_bytes_in",
        ):
            _check_range(name, getattr(self, name))
        if self.status_s[0] <= 0 or self.motion_per_h < 0:
            raise ValueError("status_s must be > 0 and motion_per_h >= 0")


@dataclass
class TplinkConfig:
    """TP-Link Kasa device: local control on TCP 9999 from the phone app, UDP discovery."""

    kind: Literal["bulb", "plug"]
    model: str
    alias: str
    app_sessions_per_h: float
    polls_per_session: list[int]
    poll_gap_s: list[float]
    commands_per_session: list[int]
    local_port: int

    def __post_init__(self) -> None:
        for name in ("polls_per_session", "poll_gap_s", "commands_per_session"):
            _check_range(name, getattr(self, name))
        if self.app_sessions_per_h < 0:
            raise ValueError("app_sessions_per_h must be >= 0")


@dataclass
class DeviceConfig:
    """One device of the home: addresses, type, its cloud and its type-specific behaviour."""

    name: str
    device_type: DeviceType
    mac: str
    ip: str
    cloud: CloudConfig
    ntp_s: list[float]
    camera: CameraConfig | None = None
    sensor: SensorConfig | None = None
    tplink: TplinkConfig | None = None

    def __post_init__(self) -> None:
        _check_mac(f"{self.name}.mac", self.mac)
        _check_ip(f"{self.name}.ip", self.ip)
        _check_range("ntp_s", self.ntp_s)
        need = {
            "nest_camera": "camera",
            "dlink_motion_sensor": "sensor",
            "tplink_bulb": "tplink",
            "tplink_plug": "tplink",
        }[self.device_type]
        if getattr(self, need) is None:
            raise ValueError(f"device '{self.name}' ({self.device_type}) needs a '{need}' section")


@dataclass
class BruteforceConfig:
    """Mirai-style telnet dictionary attack, ending in a successful login and busybox commands."""

    attempts: list[int]
    ports: list[int]
    gap_s: list[float]
    credentials: list[list[str]]
    commands: list[str]


@dataclass
class DownloadConfig:
    """Payload download after login: wget over HTTP and/or tftp over UDP."""

    wget: bool
    tftp: bool
    binary_bytes: list[int]
    path: str


@dataclass
class CncConfig:
    """IRC-like command-and-control session with periodic PINGs."""

    port: int
    duration_s: list[float]
    ping_s: list[float]
    channel: str


@dataclass
class ScanConfig:
    """Telnet scanning of random addresses: SYN, sometimes answered with RST."""

    episodes: int
    probes: list[int]
    rate_pps: float
    rst_prob: float
    ports: list[int]


@dataclass
class FloodConfig:
    """One flood kind: episodes of packets from random source ports at a given rate."""

    episodes: int
    packets: list[int]
    rate_pps: float
    dport: int
    payload_bytes: list[int]


@dataclass
class HttpFloodConfig:
    """HTTP GET flood: full TCP connections sending GET requests to a victim web server."""

    episodes: int
    connections: list[int]
    requests_per_connection: list[int]
    response_bytes: list[int]


@dataclass
class AttackConfig:
    """Malicious traffic played to and from each compromised device."""

    enabled: bool
    targets: list[str]  # device names; empty = every device
    start_frac: list[float]  # of the capture span
    attacker_ips: list[str]
    loader_ip: str
    cnc_ip: str
    victim_ips: list[str]
    bruteforce: BruteforceConfig
    download: DownloadConfig
    cnc: CncConfig
    scan: ScanConfig
    syn_flood: FloodConfig
    ack_flood: FloodConfig
    udp_flood: FloodConfig
    http_flood: HttpFloodConfig

    def __post_init__(self) -> None:
        _check_range("start_frac", self.start_frac)
        if self.start_frac[1] >= 1.0:
            raise ValueError("start_frac must lie within [0, 1)")
        for ip in [*self.attacker_ips, self.loader_ip, self.cnc_ip, *self.victim_ips]:
            _check_ip("attacks", ip)
        if not self.attacker_ips or not self.victim_ips:
            raise ValueError("attacker_ips and victim_ips must not be empty")


@dataclass
class SynthConfig:
    """The whole synthetic smart home: time span, network, devices, day profile, attacks."""

    seed: int
    days: float
    start_epoch: int  # a fixed start (UTC epoch seconds), never the clock
    utc_offset_h: float  # local time = UTC + offset, for the day/night profile
    activity_by_hour: list[float]
    snaplen: int
    network: NetworkConfig
    devices: list[DeviceConfig]
    attacks: AttackConfig

    def __post_init__(self) -> None:
        if not 0 < self.days <= 60:
            raise ValueError(f"days must be within (0, 60], got {self.days}")
        if len(self.activity_by_hour) != 24 or min(self.activity_by_hour) < 0:
            raise ValueError("activity_by_hour must list 24 non-negative multipliers")
        if not self.devices:
            raise ValueError("devices: list at least one device")
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError(f"device names must be unique, got {names}")
        ips = [d.ip for d in self.devices] + [self.network.gateway.ip, self.network.phone.ip]
        if len(set(ips)) != len(ips):
            raise ValueError("device, gateway and phone IP addresses must be distinct")
        unknown = sorted(set(self.attacks.targets) - set(names))
        if unknown:
            raise ValueError(f"attacks.targets names unknown device(s) {unknown}")
