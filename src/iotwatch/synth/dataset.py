"""Generate the synthetic smart home: benign captures per day, malicious captures per device type."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iotwatch.inventory import Device, Inventory, write_inventory_csv
from iotwatch.synth.attacks import AttackSim
from iotwatch.synth.config import SynthConfig
from iotwatch.synth.devices import SIMS
from iotwatch.synth.packets import (
    ACK,
    FIN,
    PROTO_TCP,
    RST,
    SYN,
    Emitter,
    FlowInfo,
    Net,
    PcapWriter,
    Rand,
)

N_FIRST = 10
TIMEOUT_US = 600_000_000  # the method's idle AND active timeout
DEVICE_TYPES = ["nest_camera", "dlink_motion_sensor", "tplink_bulb", "tplink_plug"]


@dataclass
class Flow:
    """One flow under the method's definition, as the generator's own bookkeeping sees it."""

    info: FlowInfo
    src_is_dev: bool  # who sent the first packet
    start: int  # microseconds
    last: int
    packets: int = 0
    fin_dev: bool = False
    fin_peer: bool = False
    closed: bool = False
    sizes: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))  # (sent, recv)
    times: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))


class FlowBook:
    """Bidirectional 5-tuple flows, 600 s idle and active timeout, FIN-both or RST closes.

    As in iotwatch.flowmeter: each capture file's flows are its own, and after a close only a pure SYN opens a new flow; later packets of
    the closed connection (the last ACK of the FIN handshake) stay in the closed flow.
    """

    def __init__(self, flows: list[FlowInfo]) -> None:
        self.infos = flows
        self.table: dict[tuple, Flow] = {}
        self.done: list[Flow] = []

    def feed(self, recs: list) -> None:
        """Account records (ts_us, serial, frame, fid, from_dev, flags, ip_len) in time order."""
        infos = self.infos
        table = self.table
        for ts, _, _, fid, from_dev, flags, ip_len in recs:
            info = infos[fid]
            key = (info.proto, info.dev.ip, info.dev_port, info.peer.ip, info.peer_port)
            f = table.get(key)
            if f is not None:
                expired = ts - f.start > TIMEOUT_US or ts - f.last > TIMEOUT_US
                if expired or (f.closed and flags & (SYN | ACK) == SYN):
                    self.done.append(f)
                    f = None
            if f is None:
                f = Flow(info, from_dev, ts, ts)
                table[key] = f
            f.packets += 1
            f.last = ts
            d = 0 if from_dev else 1
            if len(f.sizes[d]) < N_FIRST:
                f.sizes[d].append(ip_len)
                f.times[d].append(ts)
            if info.proto == PROTO_TCP:
                if flags & RST:
                    f.closed = True
                if flags & FIN:
                    if from_dev:
                        f.fin_dev = True
                    else:
                        f.fin_peer = True
                    if f.fin_dev and f.fin_peer:
                        f.closed = True

    def end_capture(self) -> None:
        """End every open flow: flows never span two capture files (as in iotwatch.flowmeter)."""
        self.done.extend(self.table.values())
        self.table.clear()

    def finish(self) -> list[Flow]:
        """All flows, in start order."""
        self.done.extend(self.table.values())
        self.table.clear()
        self.done.sort(
            key=lambda f: (
                f.start,
                f.info.dev.ip,
                f.info.dev_port,
                f.info.peer.ip,
                f.info.peer_port,
            )
        )
        return self.done


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent random stream per named actor: adding a device leaves the others unchanged."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),))
    )


def flow_features(f: Flow) -> list[float]:
    """First-N sizes per direction and N-1 inter-arrival times per direction (0 when missing)."""
    row: list[float] = []
    for d in (0, 1):
        s = f.sizes[d]
        row += [float(x) for x in s] + [0.0] * (N_FIRST - len(s))
    for d in (0, 1):
        ts = f.times[d]
        iat = [(b - a) / 1e6 for a, b in zip(ts, ts[1:], strict=False)]
        row += iat + [0.0] * (N_FIRST - 1 - len(iat))
    return row


FEATURE_NAMES = (
    [f"size_sent_{i}" for i in range(1, N_FIRST + 1)]
    + [f"size_recv_{i}" for i in range(1, N_FIRST + 1)]
    + [f"iat_sent_{i}" for i in range(1, N_FIRST)]
    + [f"iat_recv_{i}" for i in range(1, N_FIRST)]
)


def stump_accuracy(x: np.ndarray, y: np.ndarray, names: list[str], seed: int) -> tuple[float, str]:
    """Best held-out accuracy of a one-feature depth-1 tree (stratified 80/20 split)."""
    from sklearn.model_selection import train_test_split
    from sklearn.tree import DecisionTreeClassifier

    if len(set(y.tolist())) < 2 or len(y) < 10:
        return float("nan"), ""
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    best, best_name = -1.0, ""
    for j, name in enumerate(names):
        clf = DecisionTreeClassifier(max_depth=1, random_state=seed).fit(xtr[:, j : j + 1], ytr)
        acc = float((clf.predict(xte[:, j : j + 1]) == yte).mean())
        if acc > best:
            best, best_name = acc, name
    return best, best_name


def _meter_stump(paths: list[Path], inventory: Inventory, seed: int) -> tuple[float, str] | None:
    """Stump accuracy from the project's flow meter, when it exists; None otherwise."""
    try:
        from iotwatch.flowmeter import meter_captures  # type: ignore[attr-defined]
        from iotwatch.flowmeter.meter import FlowConfig  # type: ignore[import-not-found]
    except ImportError:
        return None
    table = meter_captures(paths, FlowConfig(), inventory).table
    df = table.to_pandas()
    if "proto" in df.columns:
        df = df[df["proto"] == PROTO_TCP]
    df = df[df["device_type"].isin(DEVICE_TYPES)]
    cols = [c for c in FEATURE_NAMES if c in df.columns]
    x = df[cols].fillna(0).to_numpy(dtype=float)
    return stump_accuracy(x, df["device_type"].to_numpy(), cols, seed)


def generate(config: SynthConfig, out_dir: Path, progress: bool = False) -> dict:
    """Write the synthetic captures, inventory, ground truth and metrics; return the metrics."""
    clock = time.perf_counter()  # measures speed only; never reaches the captures
    out_dir = Path(out_dir)
    (out_dir / "benign").mkdir(parents=True, exist_ok=True)
    (out_dir / "malicious").mkdir(parents=True, exist_ok=True)
    for old in [*(out_dir / "benign").glob("*.pcap"), *(out_dir / "malicious").glob("*.pcap")]:
        old.unlink()  # a rerun with fewer days must not leave stale captures behind
    t0 = float(config.start_epoch)
    t_end = t0 + config.days * 86400.0

    # -- legitimate traffic, one day at a time ---------------------------------------------------
    em = Emitter(t0)
    sims = []
    for dc in config.devices:
        net = Net(em, Rand(stream(config.seed, "device:" + dc.name)), config.network)
        sim = SIMS[dc.device_type](dc, config, net)
        sim.start(t0)
        sims.append(sim)
    book = FlowBook(em.flows)
    n_days = math.ceil(config.days)
    packets = 0
    nbytes = 0
    benign_paths = []
    for d in range(n_days):
        t1 = min(t0 + (d + 1) * 86400.0, t_end)
        for sim in sims:
            sim.run(t0 + d * 86400.0, t1)
        days = [d] if d < n_days - 1 else sorted(em.buckets)  # the last file takes the tail
        recs = em.pop_sorted(days)
        book.feed(recs)
        book.end_capture()
        path = out_dir / "benign" / f"day-{d:02d}.pcap"
        w = PcapWriter(path, config.snaplen)
        w.write_records(recs)
        w.close()
        benign_paths.append(path)
        packets += w.packets
        nbytes += w.bytes
        if progress:
            el = time.perf_counter() - clock
            print(f"synth: day {d + 1}/{n_days}: {w.packets} packets ({el:.1f} s)", file=sys.stderr)
        del recs
    benign_flows = book.finish()

    # -- malicious traffic, one capture per device type --------------------------------------------
    mal_flows = []
    a = config.attacks
    if a.enabled:
        targets = [dc for dc in config.devices if not a.targets or dc.name in a.targets]
        by_type: dict[str, Emitter] = {}
        for dc in targets:
            mem = by_type.setdefault(dc.device_type, Emitter(t0))
            rnd = Rand(stream(config.seed, "attack:" + dc.name))
            sim = AttackSim(dc, config, Net(mem, rnd, config.network))
            start = t0 + rnd.span(a.start_frac) * config.days * 86400.0
            sim.play(start)
        for dtype in sorted(by_type):
            mem = by_type[dtype]
            recs = mem.pop_sorted(sorted(mem.buckets))
            mbook = FlowBook(mem.flows)
            mbook.feed(recs)
            mal_flows += mbook.finish()
            w = PcapWriter(out_dir / "malicious" / f"{dtype}.pcap", config.snaplen)
            w.write_records(recs)
            w.close()
            packets += w.packets
            nbytes += w.bytes

    # -- inventory, ground truth ---------------------------------------------------------------
    inventory = Inventory(
        [Device(dc.device_type, dc.name, dc.mac.lower(), dc.ip) for dc in config.devices]
    )
    write_inventory_csv(inventory, out_dir / "inventory.csv")
    _write_ground_truth(out_dir / "ground_truth.csv", mal_flows)

    # -- metrics ---------------------------------------------------------------------------------
    tcp_benign = [f for f in benign_flows if f.info.proto == PROTO_TCP and f.info.device_type]
    per_dev = {t: 0 for t in DEVICE_TYPES if any(dc.device_type == t for dc in config.devices)}
    for f in tcp_benign:
        per_dev[f.info.device_type] += 1
    per_attack: dict[str, int] = {}
    per_mal_dev: dict[str, int] = {}
    for f in mal_flows:
        per_attack.setdefault(f.info.label, 0)
        if f.info.proto == PROTO_TCP:
            per_attack[f.info.label] += 1
            per_mal_dev[f.info.device_type] = per_mal_dev.get(f.info.device_type, 0) + 1
    seconds_gen = time.perf_counter() - clock
    stump = _meter_stump(benign_paths, inventory, config.seed)
    source = "flowmeter"
    if stump is None:
        source = "synth"
        x = np.array([flow_features(f) for f in tcp_benign], dtype=float).reshape(
            -1, len(FEATURE_NAMES)
        )
        y = np.array([f.info.device_type for f in tcp_benign])
        stump = stump_accuracy(x, y, FEATURE_NAMES, config.seed)
    metrics = {
        "packets": packets,
        "bytes": nbytes,
        "seconds": round(seconds_gen, 3),
        "packets_per_s": round(packets / seconds_gen, 1) if seconds_gen > 0 else 0.0,
        "flows_per_device": per_dev,
        "malicious_flows_per_attack": dict(sorted(per_attack.items())),
        "malicious_flows_per_device": dict(sorted(per_mal_dev.items())),
        "stump_accuracy": None if math.isnan(stump[0]) else round(stump[0], 4),
        "stump_feature": stump[1],
        "stump_source": source,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


GROUND_TRUTH_HEADER = [
    "attack_type", "device_type", "device_name", "proto",
    "src_ip", "src_port", "dst_ip", "dst_port", "start", "end",
]  # fmt: skip


def _write_ground_truth(path: Path, flows: list[Flow]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(GROUND_TRUTH_HEADER)
        for f in flows:
            i = f.info
            src = (i.dev.ip, i.dev_port) if f.src_is_dev else (i.peer.ip, i.peer_port)
            dst = (i.peer.ip, i.peer_port) if f.src_is_dev else (i.dev.ip, i.dev_port)
            proto = "tcp" if i.proto == PROTO_TCP else "udp"
            w.writerow([i.label, i.device_type, i.device_name, proto, src[0], src[1], dst[0], dst[1],
                        f"{f.start / 1e6:.6f}", f"{f.last / 1e6:.6f}"])  # fmt: skip
