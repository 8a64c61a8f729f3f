"""Generate the synthetic smart home: benign captures per day, malicious captures per device type.

The ground truth is one row per attack connection the generator opened (its 5-tuple, first and
last packet), so it does not depend on how a flow meter cuts connections into flows: the
features stage matches flows to it by protocol, endpoints and overlapping time. Flow counts and
the stump accuracy in the metrics come from the project's flow meter (``iotwatch.flowmeter``).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from iotwatch.inventory import Device, Inventory, write_inventory_csv
from iotwatch.synth.attacks import AttackSim
from iotwatch.synth.config import SynthConfig
from iotwatch.synth.devices import SIMS
from iotwatch.synth.packets import PROTO_TCP, Emitter, FlowInfo, Net, PcapWriter, Rand

if TYPE_CHECKING:
    from iotwatch.flowmeter import FlowConfig

DEVICE_TYPES = ["nest_camera", "dlink_motion_sensor", "tplink_bulb", "tplink_plug", "hue_bridge"]


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent random stream per named actor: adding a device leaves the others unchanged."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),))
    )


# What the default home must show (issue 10; docs/synth.md): a forest that tells the devices
# apart, as on real captures, while no single feature does.
TARGETS = {"forest_accuracy_min": 0.99, "stump_accuracy_max": 0.6}


def _split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...] | None:
    """The stratified 80/20 split both checks use (None when there is too little to split)."""
    from sklearn.model_selection import train_test_split

    if len(set(y.tolist())) < 2 or len(y) < 10:
        return None
    return tuple(train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed))


def forest_accuracy(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Held-out accuracy of a 100-tree random forest on all first-N features (the same split
    as the stump): the quick check that the home is as distinguishable as a real one."""
    from sklearn.ensemble import RandomForestClassifier

    parts = _split(x, y, seed)
    if parts is None:
        return float("nan")
    xtr, xte, ytr, yte = parts
    clf = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1).fit(xtr, ytr)
    return float((clf.predict(xte) == yte).mean())


def stump_accuracy(x: np.ndarray, y: np.ndarray, names: list[str], seed: int) -> tuple[float, str]:
    """Best held-out accuracy of a one-feature depth-1 tree (stratified 80/20 split)."""
    from sklearn.tree import DecisionTreeClassifier

    parts = _split(x, y, seed)
    if parts is None:
        return float("nan"), ""
    xtr, xte, ytr, yte = parts
    best, best_name = -1.0, ""
    for j, name in enumerate(names):
        clf = DecisionTreeClassifier(max_depth=1, random_state=seed).fit(xtr[:, j : j + 1], ytr)
        acc = float((clf.predict(xte[:, j : j + 1]) == yte).mean())
        if acc > best:
            best, best_name = acc, name
    return best, best_name


def generate(
    config: SynthConfig,
    out_dir: Path,
    progress: bool = False,
    flow_config: FlowConfig | None = None,
) -> dict:
    """Write the synthetic captures, inventory, ground truth and metrics; return the metrics.

    ``flow_config`` is the flow definition the metrics' flow counts and stump use (default: the
    flow meter's, ``FlowConfig()``); the captures and the ground truth do not depend on it.
    """
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
    home = config.home_devices()  # devices + the templates named in extra_devices
    for dc in home:
        net = Net(em, Rand(stream(config.seed, "device:" + dc.name)), config.network)
        sim = SIMS[dc.device_type](dc, config, net)
        sim.start(t0)
        sims.append(sim)
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

    # -- malicious traffic, one capture per device type --------------------------------------------
    truth: list[list] = []
    malicious_paths = []
    a = config.attacks
    if a.enabled:
        targets = [dc for dc in home if not a.targets or dc.name in a.targets]
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
            truth += connection_rows(recs, mem.flows)
            path = out_dir / "malicious" / f"{dtype}.pcap"
            w = PcapWriter(path, config.snaplen)
            w.write_records(recs)
            w.close()
            malicious_paths.append(path)
            packets += w.packets
            nbytes += w.bytes

    # -- inventory, ground truth ---------------------------------------------------------------
    inventory = Inventory([Device(dc.device_type, dc.name, dc.mac.lower(), dc.ip) for dc in home])
    write_inventory_csv(inventory, out_dir / "inventory.csv")
    _write_ground_truth(out_dir / "ground_truth.csv", truth)
    seconds_gen = time.perf_counter() - clock

    # -- metrics, on the flow meter's flows ------------------------------------------------------
    configured = {dc.device_type for dc in home}
    metrics = {
        "packets": packets,
        "bytes": nbytes,
        "seconds": round(seconds_gen, 3),
        "packets_per_s": round(packets / seconds_gen, 1) if seconds_gen > 0 else 0.0,
        **flow_metrics(
            benign_paths,
            malicious_paths,
            out_dir / "ground_truth.csv",
            inventory,
            [t for t in DEVICE_TYPES if t in configured],
            config.seed,
            flow_config,
        ),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def connection_rows(recs: list, infos: list[FlowInfo]) -> list[list]:
    """Ground-truth rows of one malicious capture's records (ts_us, serial, frame, fid, from_dev,
    ...), in time order: one per connection the generator opened, from its first to its last
    packet (src = the sender of the first packet), ordered by start then endpoints."""
    first: dict[int, tuple[int, bool]] = {}
    last: dict[int, int] = {}
    for ts, _, _, fid, from_dev, _, _ in recs:
        if fid not in first:
            first[fid] = (ts, from_dev)
        last[fid] = ts
    rows = []
    for fid, (start, src_is_dev) in first.items():
        i = infos[fid]
        dev, peer = (i.dev.ip, i.dev_port), (i.peer.ip, i.peer_port)
        src, dst = (dev, peer) if src_is_dev else (peer, dev)
        proto = "tcp" if i.proto == PROTO_TCP else "udp"
        row = [i.label, i.device_type, i.device_name, proto, *src, *dst,
               f"{start / 1e6:.6f}", f"{last[fid] / 1e6:.6f}"]  # fmt: skip
        rows.append(((start, *dev, *peer), row))
    rows.sort(key=lambda kr: kr[0])
    return [row for _, row in rows]


def _write_ground_truth(path: Path, rows: list[list]) -> None:
    from iotwatch.features import GROUND_TRUTH_COLUMNS

    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(GROUND_TRUTH_COLUMNS)
        w.writerows(rows)


def flow_metrics(
    benign_paths: list[Path],
    malicious_paths: list[Path],
    ground_truth: Path,
    inventory: Inventory,
    device_types: list[str],
    seed: int,
    flow_config: FlowConfig | None = None,
) -> dict:
    """Benign TCP flows per device type, the malicious TCP flows per attack and per device (the
    flows matched to the ground truth as the features stage matches them) and the one-feature
    stump accuracy on the benign TCP flows, all from the flow meter's flows."""
    from iotwatch.features import match_ground_truth, read_ground_truth
    from iotwatch.flowmeter import FlowConfig, meter_captures
    from iotwatch.flowmeter.schema import feature_columns

    cfg = flow_config if flow_config is not None else FlowConfig()
    flows = meter_captures(benign_paths, cfg, inventory).table.to_pandas()
    flows = flows[(flows["proto"] == PROTO_TCP) & flows["device_type"].isin(device_types)]
    per_dev = dict.fromkeys(device_types, 0)
    for t, n in flows["device_type"].value_counts().items():
        per_dev[t] = int(n)
    cols = feature_columns(cfg.n_packets)
    x = flows[cols].to_numpy(dtype=float)
    stump, feature = stump_accuracy(x, flows["device_type"].to_numpy(), cols, seed)
    forest = forest_accuracy(x, flows["device_type"].to_numpy(), seed)

    per_attack: dict[str, int] = {}
    per_mal_dev: dict[str, int] = {}
    unmatched = 0
    if malicious_paths:
        gt = read_ground_truth(ground_truth)
        mal = meter_captures(malicious_paths, cfg, inventory).table.to_pandas()
        idx = match_ground_truth(mal, gt).to_numpy()
        unmatched = int((idx < 0).sum())
        per_attack = dict.fromkeys(sorted(set(gt["attack_type"])), 0)
        tcp = (mal["proto"] == PROTO_TCP).to_numpy() & (idx >= 0)
        for attack, dtype in zip(
            gt["attack_type"].to_numpy()[idx[tcp]],
            gt["device_type"].to_numpy()[idx[tcp]],
            strict=True,
        ):
            per_attack[attack] += 1
            per_mal_dev[dtype] = per_mal_dev.get(dtype, 0) + 1
    return {
        "flows_per_device": per_dev,
        "malicious_flows_per_attack": per_attack,
        "malicious_flows_per_device": dict(sorted(per_mal_dev.items())),
        "malicious_flows_unmatched": unmatched,
        "stump_accuracy": None if math.isnan(stump) else round(stump, 4),
        "stump_feature": feature,
        "forest_accuracy": None if math.isnan(forest) else round(forest, 4),
        "targets": dict(TARGETS),
    }
