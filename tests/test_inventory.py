"""Inventory files: CSV and IoT-Sentinel layouts, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotwatch.errors import InputError
from iotwatch.inventory import (
    Device,
    Inventory,
    load_inventory,
    read_inventory_csv,
    write_inventory_csv,
)


def test_csv_round_trip_and_lookup(tmp_path: Path) -> None:
    inv = Inventory(
        [
            Device("camera", "cam-1", mac="AA:BB:CC:00:11:22", ip=None),
            Device("plug", "plug-1", mac=None, ip="192.168.1.20"),
        ]
    )
    path = tmp_path / "inv.csv"
    write_inventory_csv(inv, path)
    back = read_inventory_csv(path)
    assert back.lookup(mac="aa-bb-cc-00-11-22").name == "cam-1"  # normalised
    assert back.lookup(ip="192.168.1.20").device_type == "plug"
    assert back.lookup(mac="00:00:00:00:00:01", ip="10.0.0.1") is None
    assert back.device_types == ["camera", "plug"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("mac,ip\n", "header must contain"),
        ("mac,ip,device_type,name\n", "lists no devices"),
        ("mac,ip,device_type,name\nzz:bb,,cam,c\n", "inv.csv:2: 'zz:bb' is not a MAC"),
        ("mac,ip,device_type,name\n,300.1.1.1,cam,c\n", "is not an IP address"),
        ("mac,ip,device_type,name\n,,cam,c\n", "needs a mac or an ip"),
        ("mac,ip,device_type,name\naa:bb:cc:dd:ee:ff,,,c\n", "device_type is empty"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "inv.csv"
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        read_inventory_csv(path)
    assert needle in str(exc.value)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_inventory(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="unknown inventory format"):
        load_inventory(tmp_path, "xml")


def test_sentinel_layout(tmp_path: Path) -> None:
    (tmp_path / "Cam").mkdir()
    (tmp_path / "Cam" / "_iotdevice-mac.txt").write_text("00:11:22:33:44:55\n")
    (tmp_path / "Empty").mkdir()
    inv = load_inventory(tmp_path, "sentinel")
    assert [d.device_type for d in inv.devices] == ["Cam"]
    with pytest.raises(InputError, match="no _iotdevice-mac.txt"):
        load_inventory(tmp_path / "Empty", "sentinel-folder")


def test_real_sentinel_inventory(shared_data) -> None:  # noqa: ANN001
    root = shared_data("iot-sentinel", "captures")
    inv = load_inventory(root, "sentinel")
    assert len(inv) == 31
    assert "TP-LinkPlugHS110" in inv.device_types
