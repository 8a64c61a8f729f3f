"""Synthesizer configuration: a dataclass tree whose fields are exactly the keys of conf/synth/*.yaml.

Defaults here are only fallbacks; conf/synth/default.yaml is the file people edit. Ranges are
two-element lists ``[low, high]`` drawn uniformly (integers inclusive).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
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

    gateway: Endpoint = field(default_factory=lambda: Endpoint("c4:e9:84:10:20:01", "192.168.1.1"))
    phone: Endpoint = field(default_factory=lambda: Endpoint("3c:28:6d:5a:11:42", "192.168.1.23"))
    dns_server: str = "192.168.1.1"
    dns_ttl_s: list[float] = field(default_factory=lambda: [300.0, 3600.0])
    ntp_servers: list[str] = field(default_factory=lambda: ["216.239.35.0", "129.6.15.28"])
    mss: int = 1460
    wan_rtt_ms: list[float] = field(default_factory=lambda: [18.0, 70.0])
    lan_rtt_ms: list[float] = field(default_factory=lambda: [1.0, 6.0])
    ack_delay_ms: list[float] = field(default_factory=lambda: [0.1, 40.0])
    uplink_kbps: float = 4000.0
    downlink_kbps: float = 30000.0
    retransmit_prob: float = 0.003
    rto_ms: list[float] = field(default_factory=lambda: [200.0, 1200.0])
    window_update_prob: float = 0.05
    ttl_wan: list[int] = field(default_factory=lambda: [44, 58])

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

    hostname: str = "cloud.example.com"
    ips: list[str] = field(default_factory=lambda: ["52.1.2.3"])
    port: int = 443
    keepalive_s: list[float] = field(default_factory=lambda: [25.0, 35.0])
    keepalive_bytes_out: list[int] = field(default_factory=lambda: [40, 90])
    keepalive_bytes_in: list[int] = field(default_factory=lambda: [40, 90])
    session_h: list[float] = field(default_factory=lambda: [2.0, 12.0])
    rst_close_prob: float = 0.3
    tls_client_hello: list[int] = field(default_factory=lambda: [180, 320])
    tls_server_flight: list[int] = field(default_factory=lambda: [2800, 4800])
    tls_client_finish: list[int] = field(default_factory=lambda: [90, 140])
    tls_server_finish: list[int] = field(default_factory=lambda: [50, 280])

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

    idle_kbps: list[float] = field(default_factory=lambda: [6.0, 10.0])
    chunk_s: list[float] = field(default_factory=lambda: [3.0, 5.0])
    motion_per_h: float = 1.0
    motion_s: list[float] = field(default_factory=lambda: [20.0, 90.0])
    motion_kbps: list[float] = field(default_factory=lambda: [200.0, 400.0])
    record_bytes: int = 16384

    def __post_init__(self) -> None:
        for name in ("idle_kbps", "chunk_s", "motion_s", "motion_kbps"):
            _check_range(name, getattr(self, name))
        if self.chunk_s[0] <= 0 or self.motion_per_h < 0:
            raise ValueError("chunk_s must be > 0 and motion_per_h >= 0")


@dataclass
class SensorConfig:
    """Motion sensor: event notifications and periodic status reports on short TLS connections."""

    motion_per_h: float = 1.5
    event_cloud: CloudConfig = field(default_factory=CloudConfig)
    event_bytes_out: list[int] = field(default_factory=lambda: [300, 700])
    event_bytes_in: list[int] = field(default_factory=lambda: [150, 400])
    status_s: list[float] = field(default_factory=lambda: [3000.0, 4200.0])
    status_bytes_out: list[int] = field(default_factory=lambda: [500, 1200])
    status_bytes_in: list[int] = field(default_factory=lambda: [100, 300])

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

    kind: Literal["bulb", "plug"] = "plug"
    model: str = "HS110(EU)"
    alias: str = "Kasa device"
    app_sessions_per_h: float = 0.4
    polls_per_session: list[int] = field(default_factory=lambda: [2, 12])
    poll_gap_s: list[float] = field(default_factory=lambda: [1.0, 5.0])
    commands_per_session: list[int] = field(default_factory=lambda: [0, 3])
    local_port: int = 9999

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
    cloud: CloudConfig = field(default_factory=CloudConfig)
    ntp_s: list[float] = field(default_factory=lambda: [3000.0, 4000.0])
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

    attempts: list[int] = field(default_factory=lambda: [8, 20])
    ports: list[int] = field(default_factory=lambda: [23, 2323])
    gap_s: list[float] = field(default_factory=lambda: [0.5, 6.0])
    credentials: list[list[str]] = field(
        default_factory=lambda: [["root", "xc3511"], ["admin", "admin"], ["root", "vizxv"]]
    )
    commands: list[str] = field(
        default_factory=lambda: ["enable", "system", "shell", "sh", "/bin/busybox MIRAI"]
    )


@dataclass
class DownloadConfig:
    """Payload download after login: wget over HTTP and/or tftp over UDP."""

    wget: bool = True
    tftp: bool = True
    binary_bytes: list[int] = field(default_factory=lambda: [40000, 120000])
    path: str = "/bins/mirai.arm7"


@dataclass
class CncConfig:
    """IRC-like command-and-control session with periodic PINGs."""

    port: int = 6667
    duration_s: list[float] = field(default_factory=lambda: [3600.0, 10800.0])
    ping_s: list[float] = field(default_factory=lambda: [60.0, 180.0])
    channel: str = "#bots"


@dataclass
class ScanConfig:
    """Telnet scanning of random addresses: SYN, sometimes answered with RST."""

    episodes: int = 2
    probes: list[int] = field(default_factory=lambda: [50, 90])
    rate_pps: float = 20.0
    rst_prob: float = 0.3
    ports: list[int] = field(default_factory=lambda: [23, 2323])


@dataclass
class FloodConfig:
    """One flood kind: episodes of packets from random source ports at a given rate."""

    episodes: int = 1
    packets: list[int] = field(default_factory=lambda: [40, 80])
    rate_pps: float = 100.0
    dport: int = 80
    payload_bytes: list[int] = field(default_factory=lambda: [0, 0])


@dataclass
class HttpFloodConfig:
    """HTTP GET flood: full TCP connections sending GET requests to a victim web server."""

    episodes: int = 1
    connections: list[int] = field(default_factory=lambda: [15, 35])
    requests_per_connection: list[int] = field(default_factory=lambda: [1, 4])
    response_bytes: list[int] = field(default_factory=lambda: [300, 5000])


@dataclass
class AttackConfig:
    """Malicious traffic played to and from each compromised device."""

    enabled: bool = True
    targets: list[str] = field(default_factory=list)  # device names; empty = every device
    start_frac: list[float] = field(default_factory=lambda: [0.55, 0.9])  # of the capture span
    attacker_ips: list[str] = field(default_factory=lambda: ["185.220.101.7", "45.95.147.33"])
    loader_ip: str = "198.51.100.66"
    cnc_ip: str = "203.0.113.77"
    victim_ips: list[str] = field(default_factory=lambda: ["93.184.216.34", "104.16.3.9"])
    bruteforce: BruteforceConfig = field(default_factory=BruteforceConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    cnc: CncConfig = field(default_factory=CncConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    syn_flood: FloodConfig = field(default_factory=FloodConfig)
    ack_flood: FloodConfig = field(default_factory=lambda: FloodConfig(payload_bytes=[512, 512]))
    udp_flood: FloodConfig = field(default_factory=lambda: FloodConfig(payload_bytes=[512, 512]))
    http_flood: HttpFloodConfig = field(default_factory=HttpFloodConfig)

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

    seed: int = 42
    days: float = 7.0
    start_epoch: int = 1709251200  # 2024-03-01 00:00:00 UTC: a fixed start, never the clock
    utc_offset_h: float = 0.0  # local time = UTC + offset, for the day/night profile
    activity_by_hour: list[float] = field(default_factory=lambda: [1.0] * 24)
    snaplen: int = 65535
    network: NetworkConfig = field(default_factory=NetworkConfig)
    devices: list[DeviceConfig] = field(default_factory=list)
    attacks: AttackConfig = field(default_factory=AttackConfig)

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
