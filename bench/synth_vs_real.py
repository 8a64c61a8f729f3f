"""Side by side: first-packet features of each synthetic device and its IoT Sentinel counterpart.

Usage: .venv/bin/python bench/synth_vs_real.py [--write]   (--write: replace the table in
docs/synth.md between its markers; without it the table is printed only)

Both sides go through the project's flow meter (the method's flow definition, FlowConfig()):
the real captures in ../shared/data/iot-sentinel/captures/<Folder>/ labelled by their MAC file,
the synthetic ones from one day of the default profile with the Hue bridge template added.
Per device, its cloud connections (flows to the counterpart's main server port that start with
a handshake) give: how many, the server port, the first payload the device sends (the TLS
ClientHello, or Hue's first HTTP segment) and the first the server sends, as TCP payload bytes
(the first packet after the handshake that is longer than the header-only packet 2 of the same
direction, minus that one: the 12-byte TCP timestamp option the real stacks add and the
synthesizer leaves out cancels), each as its most common value and the share of flows with it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENTINEL = ROOT.parent / "shared" / "data" / "iot-sentinel" / "captures"
DOC = ROOT / "docs" / "synth.md"
BEGIN, END = "<!-- synth-vs-real:begin -->", "<!-- synth-vs-real:end -->"
# synthetic device type -> (IoT Sentinel folder, the cloud's server port on both sides)
COUNTERPARTS = {
    "nest_camera": ("D-LinkCam", 443, 443),  # no Nest in the captures: the camera kind
    "dlink_motion_sensor": ("D-LinkSensor", 443, 443),
    "tplink_bulb": ("TP-LinkPlugHS100", 50443, 50443),  # no TP-Link bulb: the same stack
    "tplink_plug": ("TP-LinkPlugHS110", 50443, 50443),
    "hue_bridge": ("HueBridge", 80, 80),
}


def cloud_flows(flows, port: int):
    """Flows the device opened to ``port`` whose first packets are SYN, ACK, data."""
    f = flows[(flows["peer_port"] == port) & (flows["dev_port"] > 1024)]
    syn = f["size_sent_1"].between(44, 64) & (f["size_recv_1"].between(44, 64))
    return f[syn & (f["size_sent_3"] > f["size_sent_2"])]


def mode(values) -> str:
    """Most common value and its share, e.g. '215 (100 %)'."""
    if len(values) == 0:
        return "-"
    vc = values.value_counts()
    return f"{int(vc.index[0])} ({100.0 * vc.iloc[0] / len(values):.0f} %)"


def first_payload(f, side: str):
    """Per flow, the payload of the first packet of ``side`` (sent/recv) after the handshake
    that carries any: its size minus that direction's header-only packet 2."""
    import numpy as np
    import pandas as pd

    head = f[f"size_{side}_2"].to_numpy()
    sizes = np.stack([f[f"size_{side}_{i}"].to_numpy() for i in range(3, 11)], axis=1)
    pay = sizes - head[:, None]
    has = pay > 0
    first = np.where(has.any(axis=1), pay[np.arange(len(f)), has.argmax(axis=1)], 0)
    return pd.Series(first[first > 0])


def row(flows, port: int) -> list[str]:
    """Flow count, port, first device payload, first server payload."""
    f = cloud_flows(flows, port)
    return [str(len(f)), str(port), mode(first_payload(f, "sent")), mode(first_payload(f, "recv"))]


def real_flows(folder: str):
    """The meter's TCP flows of one IoT Sentinel device folder, that device's only."""
    from iotwatch.flowmeter import FlowConfig, meter_captures
    from iotwatch.inventory import read_sentinel_folder

    path = SENTINEL / folder
    inv = read_sentinel_folder(path)
    df = meter_captures(sorted(path.glob("*.pcap")), FlowConfig(), inv).table.to_pandas()
    return df[df["device_known"]]


def synthetic_flows(tmp: Path):
    """The meter's TCP flows of one synthetic day (default profile + the Hue bridge)."""
    from iotwatch.flowmeter import FlowConfig, meter_captures
    from iotwatch.inventory import read_inventory_csv
    from iotwatch.synth.cli import load_config
    from iotwatch.synth.dataset import generate

    cfg = load_config("default", days=1, extra_devices=["hue_bridge"])
    cfg.attacks.enabled = False
    generate(cfg, tmp)
    inv = read_inventory_csv(tmp / "inventory.csv")
    df = meter_captures(sorted((tmp / "benign").glob("*.pcap")), FlowConfig(), inv)
    return df.table.to_pandas()


def table() -> str:
    """The markdown table."""
    head = (
        "| synthetic device | flows | port | device's 1st payload | server's 1st payload "
        "| IoT Sentinel folder | flows | port | device's 1st payload | server's 1st payload |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        syn = synthetic_flows(Path(tmp))
    lines = []
    for dtype, (folder, sport, rport) in COUNTERPARTS.items():
        s = row(syn[syn["device_type"] == dtype], sport)
        r = row(real_flows(folder), rport)
        lines.append("| " + " | ".join([dtype, *s, folder, *r]) + " |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Print the table; with --write, put it into docs/synth.md."""
    if not SENTINEL.is_dir():
        print(f"synth_vs_real: {SENTINEL} not found (the IoT Sentinel captures)", file=sys.stderr)
        return 2
    text = table()
    print(text, end="")
    if "--write" in argv:
        doc = DOC.read_text(encoding="utf-8")
        if BEGIN not in doc or END not in doc:
            print(f"synth_vs_real: {DOC}: markers {BEGIN} / {END} missing", file=sys.stderr)
            return 2
        pre, rest = doc.split(BEGIN, 1)
        post = rest.split(END, 1)[1]
        DOC.write_text(pre + BEGIN + "\n" + text + END + post, encoding="utf-8")
        print(f"synth_vs_real: wrote the table into {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
