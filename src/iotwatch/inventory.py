"""Device inventory: which MAC / IP belongs to which device and device type.

Two layouts are read:
- a CSV file with the header ``mac,ip,device_type,name`` (one of mac/ip may be empty), the
  format the synthesizer writes and users write for their own captures;
- an IoT-Sentinel style directory: one sub-folder per device type holding ``_iotdevice-mac.txt``.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from iotwatch.errors import InputError

_MAC_RE = re.compile(r"^([0-9a-f]{2}[:-]){5}[0-9a-f]{2}$", re.IGNORECASE)
SENTINEL_MAC_FILE = "_iotdevice-mac.txt"


def normalise_mac(mac: str) -> str:
    """Return a MAC address as lower-case, colon-separated text."""
    return mac.strip().lower().replace("-", ":")


@dataclass(frozen=True)
class Device:
    """One known device: its addresses, type and a human name."""

    device_type: str
    name: str
    mac: str | None = None
    ip: str | None = None


@dataclass
class Inventory:
    """Known devices, looked up by MAC or IP."""

    devices: list[Device] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.by_mac: dict[str, Device] = {d.mac: d for d in self.devices if d.mac}
        self.by_ip: dict[str, Device] = {d.ip: d for d in self.devices if d.ip}

    def lookup(self, mac: str | None = None, ip: str | None = None) -> Device | None:
        """Find the device with this MAC (preferred) or IP, or None."""
        if mac:
            dev = self.by_mac.get(normalise_mac(mac))
            if dev is not None:
                return dev
        if ip:
            return self.by_ip.get(ip)
        return None

    @property
    def device_types(self) -> list[str]:
        """Sorted distinct device types."""
        return sorted({d.device_type for d in self.devices})

    def __len__(self) -> int:
        return len(self.devices)


def _check_mac(mac: str, where: str) -> str:
    mac = normalise_mac(mac)
    if not _MAC_RE.match(mac):
        raise InputError(f"{where}: '{mac}' is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return mac


def _check_ip(ip: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        raise InputError(f"{where}: '{ip}' is not an IP address") from None


def read_inventory_csv(path: Path) -> Inventory:
    """Read a ``mac,ip,device_type,name`` CSV inventory."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: inventory file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read inventory ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    needed = {"mac", "ip", "device_type"}
    if reader.fieldnames is None or not needed <= set(reader.fieldnames):
        raise InputError(
            f"{path}: inventory header must contain mac, ip, device_type (and optionally name); "
            f"found {reader.fieldnames}"
        )
    devices = []
    for lineno, row in enumerate(reader, start=2):
        where = f"{path}:{lineno}"
        mac = (row.get("mac") or "").strip()
        ip = (row.get("ip") or "").strip()
        dtype = (row.get("device_type") or "").strip()
        if not dtype:
            raise InputError(f"{where}: device_type is empty")
        if not mac and not ip:
            raise InputError(f"{where}: a device needs a mac or an ip")
        devices.append(
            Device(
                device_type=dtype,
                name=(row.get("name") or "").strip() or dtype,
                mac=_check_mac(mac, where) if mac else None,
                ip=_check_ip(ip, where) if ip else None,
            )
        )
    if not devices:
        raise InputError(f"{path}: inventory lists no devices")
    return Inventory(devices)


def write_inventory_csv(inventory: Inventory, path: Path) -> None:
    """Write an inventory as ``mac,ip,device_type,name`` CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["mac", "ip", "device_type", "name"])
        for d in inventory.devices:
            w.writerow([d.mac or "", d.ip or "", d.device_type, d.name])


def read_sentinel_folder(folder: Path) -> Inventory:
    """Read one IoT-Sentinel device folder: its ``_iotdevice-mac.txt`` names the device."""
    folder = Path(folder)
    mac_file = folder / SENTINEL_MAC_FILE
    if not mac_file.is_file():
        raise InputError(f"{folder}: no {SENTINEL_MAC_FILE}, cannot label its captures")
    mac = mac_file.read_text(encoding="utf-8", errors="replace").strip().split()[0:1]
    if not mac:
        raise InputError(f"{mac_file}: empty, expected a MAC address")
    dev = Device(device_type=folder.name, name=folder.name, mac=_check_mac(mac[0], str(mac_file)))
    return Inventory([dev])


def read_sentinel_inventory(root: Path) -> Inventory:
    """Read an IoT-Sentinel layout: ``root/<DeviceType>/_iotdevice-mac.txt``.

    Two folders may share a MAC (HueSwitch and HueBridge); the merged inventory then keeps the
    last one for lookups, so label such captures per folder with ``read_sentinel_folder``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory of device folders")
    devices = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if (folder / SENTINEL_MAC_FILE).is_file():
            devices.extend(read_sentinel_folder(folder).devices)
    if not devices:
        raise InputError(f"{root}: no <device>/{SENTINEL_MAC_FILE} found")
    return Inventory(devices)


def load_inventory(path: Path | str, fmt: str = "csv") -> Inventory:
    """Load an inventory in format ``csv``, ``sentinel`` or ``sentinel-folder``."""
    if fmt == "csv":
        return read_inventory_csv(Path(path))
    if fmt == "sentinel":
        return read_sentinel_inventory(Path(path))
    if fmt == "sentinel-folder":
        return read_sentinel_folder(Path(path))
    raise InputError(f"unknown inventory format '{fmt}' (expected csv or sentinel)")
