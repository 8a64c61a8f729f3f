"""Synthesizer configuration: a dataclass tree whose fields are exactly the keys of conf/synth/*.yaml.

No defaults: conf/synth/*.yaml is the one place values live, and every profile spells out every
key (a device's ``camera``/``sensor``/``tplink``/``hue`` section only where its type needs it).
Ranges are two-element lists ``[low, high]`` drawn uniformly (integers inclusive); a range with
low == high is a firmware constant (docs/synth.md says which numbers were measured where).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

DeviceType = Literal[
    "nest_camera", "dlink_motion_sensor", "tplink_bulb", "tplink_plug", "hue_bridge"
]
# which type-specific section each device type needs
SECTION = {
    "nest_camera": "camera",
    "dlink_motion_sensor": "sensor",
    "tplink_bulb": "tplink",
    "tplink_plug": "tplink",
    "hue_bridge": "hue",
}


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
    ntp_servers: list[str]
    mss: int
    wan_mss: int  # segment size of WAN servers towards the home (the captures: 1368 + 12)
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
        if not 536 <= self.mss <= 1460 or not 536 <= self.wan_mss <= 1460:
            raise ValueError(
                f"mss and wan_mss must be within 536..1460, got {self.mss}, {self.wan_mss}"
            )
        for name in ("wan_rtt_ms", "lan_rtt_ms", "ack_delay_ms", "rto_ms", "ttl_wan"):
            _check_range(name, getattr(self, name))
        if not 0 <= self.retransmit_prob < 1 or not 0 <= self.window_update_prob <= 1:
            raise ValueError("retransmit_prob / window_update_prob must be probabilities")
        if self.uplink_kbps <= 0 or self.downlink_kbps <= 0:
            raise ValueError("uplink_kbps and downlink_kbps must be > 0")


@dataclass
class CloudConfig:
    """A vendor cloud service reached over TLS (persistent session or short connections).

    Byte counts are TCP payload bytes (TLS records with their 5-byte headers). What a firmware
    keeps constant (its ClientHello, its login messages, its heartbeat) is a range with
    low == high; what varies (report sizes, timers' jitter) is a real range.
    """

    hostname: str
    ips: list[str]
    port: int
    dns_ttl_s: list[float]  # TTL the vendor's DNS answers carry (the device re-resolves after it)
    tls_version: Literal["1.0", "1.2"]  # record-layer version the firmware's TLS library sends
    keepalive_s: list[float]
    keepalive_from: Literal["device", "server"]  # who sends the heartbeat request
    keepalive_bytes_out: list[int]
    keepalive_bytes_in: list[int]
    probe_s: list[float]  # zero-payload TCP keep-alive probes from the server; [0, 0] = none
    session_h: list[float]
    rst_close_prob: float
    tls_client_hello: list[int]
    tls_server_flight: list[int]
    tls_client_finish: list[int]
    tls_server_finish: list[int]
    login: list[list[int]]  # [bytes out, bytes in] exchanges right after the handshake

    def __post_init__(self) -> None:
        if not self.ips:
            raise ValueError("ips must list at least one address")
        for ip in self.ips:
            _check_ip("ips", ip)
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        for name in (
            "dns_ttl_s", "keepalive_s", "keepalive_bytes_out", "keepalive_bytes_in", "probe_s",
            "session_h", "tls_client_hello", "tls_server_flight", "tls_client_finish",
            "tls_server_finish",
        ):  # fmt: skip
            _check_range(name, getattr(self, name))
        if self.keepalive_s[0] <= 0 or self.session_h[0] <= 0:
            raise ValueError("keepalive_s and session_h must be > 0")
        if self.probe_s[1] > 0 and self.probe_s[0] < 1:
            raise ValueError(f"probe_s must be [0, 0] (none) or at least 1 s, got {self.probe_s}")
        if self.tls_client_hello[0] < 60:
            raise ValueError("tls_client_hello must be >= 60 bytes (header, random, SNI)")
        for i, pair in enumerate(self.login):
            if len(pair) != 2 or min(pair) < 6:
                raise ValueError(f"login[{i}] must be [bytes out, bytes in], each >= 6, got {pair}")


@dataclass
class CameraConfig:
    """Security camera: continuous low-rate video upload plus motion-triggered bursts."""

    idle_kbps: list[float]
    chunk_s: list[float]
    motion_per_h: float
    motion_s: list[float]
    motion_kbps: list[float]
    record_bytes: int
    event_bytes_out: list[int]  # the motion notification that opens a burst
    event_bytes_in: list[int]

    def __post_init__(self) -> None:
        for name in ("idle_kbps", "chunk_s", "motion_s", "motion_kbps", "event_bytes_out",
                     "event_bytes_in"):  # fmt: skip
            _check_range(name, getattr(self, name))
        if self.chunk_s[0] <= 0 or self.motion_per_h < 0:
            raise ValueError("chunk_s must be > 0 and motion_per_h >= 0")


@dataclass
class SensorConfig:
    """Motion sensor: event notifications and periodic status reports on short TLS connections."""

    motion_per_h: float
    push_bytes_out: list[int]  # the push on the keep-alive session when motion starts
    push_bytes_in: list[int]
    event_cloud: CloudConfig
    event_bytes_out: list[int]
    event_bytes_in: list[int]
    status_s: list[float]
    status_bytes_out: list[int]
    status_bytes_in: list[int]

    def __post_init__(self) -> None:
        for name in (
            "push_bytes_out",
            "push_bytes_in",
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
class HueConfig:
    """Philips Hue bridge: plain-HTTP polling of its portal, a local REST API for the app.

    Sizes are TCP payload bytes; a request is sent as its two segments (the firmware writes the
    request line and the rest separately, as the captures show).
    """

    portal_hostname: str
    portal_ips: list[str]
    portal_port: int
    portal_dns_ttl_s: list[float]
    poll_s: list[float]  # the bridge's portal poll timer
    poll_request: list[list[int]]  # [first segment, second segment] ranges
    poll_response: list[int]
    app_sessions_per_h: float
    api_requests_per_session: list[int]
    api_gap_s: list[float]
    api_request: list[list[int]]
    api_response: list[int]
    local_port: int

    def __post_init__(self) -> None:
        for ip in self.portal_ips:
            _check_ip("portal_ips", ip)
        if not self.portal_ips:
            raise ValueError("portal_ips must list at least one address")
        for name in ("portal_dns_ttl_s", "poll_s", "poll_response", "api_requests_per_session",
                     "api_gap_s", "api_response"):  # fmt: skip
            _check_range(name, getattr(self, name))
        for name in ("poll_request", "api_request"):
            parts = getattr(self, name)
            if len(parts) != 2:
                raise ValueError(f"{name} must be two [low, high] ranges (two segments)")
            for r in parts:
                _check_range(name, r)
        if self.poll_s[0] <= 0 or self.app_sessions_per_h < 0:
            raise ValueError("poll_s must be > 0 and app_sessions_per_h >= 0")


@dataclass
class DeviceConfig:
    """One device of the home: addresses, type, its cloud and its type-specific behaviour."""

    name: str
    device_type: DeviceType
    mac: str
    ip: str
    ntp_s: list[float]
    cloud: CloudConfig | None = None  # every type but the Hue bridge keeps a TLS cloud session
    camera: CameraConfig | None = None
    sensor: SensorConfig | None = None
    tplink: TplinkConfig | None = None
    hue: HueConfig | None = None

    def __post_init__(self) -> None:
        _check_mac(f"{self.name}.mac", self.mac)
        _check_ip(f"{self.name}.ip", self.ip)
        _check_range("ntp_s", self.ntp_s)
        need = SECTION[self.device_type]
        if getattr(self, need) is None:
            raise ValueError(f"device '{self.name}' ({self.device_type}) needs a '{need}' section")
        if self.cloud is None and self.device_type != "hue_bridge":
            raise ValueError(f"device '{self.name}' ({self.device_type}) needs a 'cloud' section")


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
    # Devices that are not in the home unless named in extra_devices (the unseen-device-type
    # case: e.g. extra_devices: [hue_bridge]); their keys are template names.
    templates: dict[str, DeviceConfig]
    extra_devices: list[str]
    attacks: AttackConfig

    def home_devices(self) -> list[DeviceConfig]:
        """The devices generated: ``devices`` then the templates named in ``extra_devices``."""
        return [*self.devices, *(self.templates[n] for n in self.extra_devices)]

    def __post_init__(self) -> None:
        if not 0 < self.days <= 60:
            raise ValueError(f"days must be within (0, 60], got {self.days}")
        if len(self.activity_by_hour) != 24 or min(self.activity_by_hour) < 0:
            raise ValueError("activity_by_hour must list 24 non-negative multipliers")
        if not self.devices:
            raise ValueError("devices: list at least one device")
        unknown_t = sorted(set(self.extra_devices) - set(self.templates))
        if unknown_t:
            raise ValueError(
                f"extra_devices names unknown template(s) {unknown_t}; known: {sorted(self.templates)}"
            )
        if len(set(self.extra_devices)) != len(self.extra_devices):
            raise ValueError(f"extra_devices lists a template twice: {self.extra_devices}")
        home = self.home_devices()
        names = [d.name for d in home]
        if len(set(names)) != len(names):
            raise ValueError(f"device names must be unique, got {names}")
        ips = [d.ip for d in home] + [self.network.gateway.ip, self.network.phone.ip]
        if len(set(ips)) != len(ips):
            raise ValueError("device, gateway and phone IP addresses must be distinct")
        unknown = sorted(set(self.attacks.targets) - set(names))
        if unknown:
            raise ValueError(f"attacks.targets names unknown device(s) {unknown}")
