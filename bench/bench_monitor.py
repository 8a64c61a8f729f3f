"""Benchmark of `iotwatch monitor`: speed of the whole process, detection on an unseen home,
and the open set (a device type the models never saw). Prints figures; asserts nothing.

    .venv/bin/python bench/bench_monitor.py [--bundle models/bundle] [--home DIR]
        [--seed 4242] [--days 13] [--work bench/out/monitor] [--runs 3] [--skip-open-set]

Run after `make run` (or `dvc repro` + `iotwatch export`): it reads the bundle, and for the
open-set part params.yaml's train/validation feature tables and classifier settings.

1. Speed: `iotwatch monitor` as its own process on a synthetic home generated with another
   seed than the training data (13 days: about 2.3 M packets), wall time from start to exit:
   packets/s, flows/s, peak memory (median of ``--runs``); before each run the flow meter alone
   (``iotwatch flows``, its own process) on the same captures, the baseline: its packets/s and
   the monitor / meter ratio of wall times (both under the same load).
2. Detection on that home, against the synthesizer's ground truth: every device's type,
   attack recall (flows of the malicious captures alerted) and the flow-level false positive
   rate (flows of the benign captures alerted), per attack type too.
3. The synthesizer's fifth device type (a Hue bridge, never trained on) in a home of its own
   (same seed, ``--fifth-days``): reported unknown, the four known devices not.
4. Open set, measured like Meidan et al. (windows of 20 consecutive TCP flows per device): for
   each device type in turn, a classifier trained without it (same settings, same training
   flows otherwise) and the bundle's other autoencoders, the bars calibrated as the export
   does (``openset.calibrate`` on the validation flows and the out-of-fold probabilities of
   train + validation, all without that type); share of the held-out device's windows
   reported unknown, share of the known devices' windows given their right type (per type
   too, with why the others missed: wrong winner, confidence or fit below its bar).
5. With ``--live-frames N`` (root): N frames blasted into a veth pair as fast as Python sends
   them, monitored on the other end: frames received and the kernel's drops.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCAL_NET = "192.168.1.0/24"  # the synthetic home's LAN


def _generate(work: Path, seed: int, days: float, *extra: str) -> Path:
    home = work / f"home-seed{seed}-days{days:g}{''.join('-' + e for e in extra)}"
    if not (home / "ground_truth.csv").is_file():
        print(f"generating {home} ...", flush=True)
        more = [a for e in extra for a in ("--extra-device", e)]
        subprocess.run([str(BIN / "iotwatch"), "synth", "--out", str(home), "--seed", str(seed),
                        "--days", str(days), "--quiet", *more], check=True)  # fmt: skip
    return home


def _home(args: argparse.Namespace) -> Path:
    return args.home if args.home is not None else _generate(args.work, args.seed, args.days)


def fifth_kind(args: argparse.Namespace) -> dict:
    """A home with the synthesizer's fifth device type (never in training): is it unknown?"""
    from iotwatch.inventory import read_inventory_csv

    home = _generate(args.work, args.seed, args.fifth_days, "hue_bridge")
    out = args.work / "fifth"
    out.mkdir(exist_ok=True)
    subprocess.run([str(BIN / "iotwatch"), "monitor", str(home), "--model", str(args.bundle),
                    "--out", str(out / "alerts.jsonl"), "--summary", str(out / "summary.json"),
                    "--local-net", LOCAL_NET, "--quiet"], check=True)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    devices = {}
    for d in read_inventory_csv(home / "inventory.csv").devices:
        got = summary["devices"].get(d.mac or f"ip:{d.ip}", {})
        devices[d.name] = {"true": d.device_type, "status": got.get("status"),
                           "reported": got.get("device_type"), "vote": got.get("vote"),
                           "confidence": got.get("confidence"), "fit": got.get("fit"),
                           "alerts": got.get("alerts")}  # fmt: skip
    return {"home": str(home), "devices": devices, "unknown_devices": summary["unknown_devices"]}


def _meter_alone(home: Path, work: Path) -> float:
    """Wall time of ``iotwatch flows`` (the flow meter alone, its own process) on the captures
    the monitor reads: the baseline the monitor's speed is compared with."""
    caps = [str(p) for p in sorted(home.rglob("*.pcap"))]
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "iotwatch"), "flows", *caps, "--out", str(work / "flows.parquet"),
                           "--local-net", LOCAL_NET, "--quiet"], capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"iotwatch flows failed:\n{proc.stderr[-3000:]}")
    return wall


def speed(home: Path, bundle: Path, work: Path, runs: int) -> dict:
    """Run the monitor process ``runs`` times, each after a run of the flow meter alone on the
    same captures (the baseline, so both see the same load); wall time around each process."""
    walls, meter_walls, summary = [], [], {}
    for k in range(runs):
        meter_walls.append(_meter_alone(home, work))
        out, summ = work / "alerts.jsonl", work / "summary.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(BIN / "iotwatch"), "monitor", str(home), "--model", str(bundle), "--out",
             str(out), "--summary", str(summ), "--local-net", LOCAL_NET, "--quiet"],
            capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"monitor failed:\n{proc.stderr[-3000:]}")
        walls.append(wall)
        summary = json.loads(summ.read_text())
        peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
        print(f"  run {k + 1}: {wall:.2f} s wall, {summary['packets'] / wall / 1e6:.2f} M "
              f"packets/s, {summary['flows_seen'] / wall:.0f} flows/s; meter alone "
              f"{meter_walls[-1]:.2f} s, {summary['packets'] / meter_walls[-1] / 1e6:.2f} M "
              f"packets/s", flush=True)  # fmt: skip
    wall, meter = statistics.median(walls), statistics.median(meter_walls)
    return {"packets": summary["packets"], "flows": summary["flows_seen"], "wall_s": wall,
            "meter_wall_s": meter, "meter_packets_per_s": summary["packets"] / meter,
            "monitor_over_meter": wall / meter,
            "packets_per_s": summary["packets"] / wall, "flows_per_s": summary["flows_seen"] / wall,
            "peak_memory_mb": summary["peak_memory_mb"], "peak_rss_children_mb": peak,
            "alerts": summary["alerts"], "summary": summary}  # fmt: skip


def detection(home: Path, work: Path, summary: dict, bundle_path: Path) -> dict:
    """Recall, FPR and device types of the speed run's alerts against the ground truth."""
    import pandas as pd

    from iotwatch.features import match_ground_truth, read_ground_truth
    from iotwatch.inventory import read_inventory_csv

    alerts = pd.read_json(work / "alerts.jsonl", lines=True)
    gt = read_ground_truth(home / "ground_truth.csv")
    per_capture = summary["flows_per_capture"]
    mal_caps = {p.name for p in (home / "malicious").glob("*.pcap")}
    attack_flows = sum(v for k, v in per_capture.items() if k in mal_caps)
    benign_flows = sum(v for k, v in per_capture.items() if k not in mal_caps)
    on_mal = alerts[alerts["capture"].isin(mal_caps)] if len(alerts) else alerts
    on_benign = alerts[~alerts["capture"].isin(mal_caps)] if len(alerts) else alerts
    flows = pd.DataFrame({"proto": on_mal["proto"], "dev_ip": on_mal["device_ip"],
                          "dev_port": on_mal["device_port"], "peer_ip": on_mal["peer_ip"],
                          "peer_port": on_mal["peer_port"], "start": on_mal["flow_start"],
                          "end": on_mal["flow_end"]}).reset_index(drop=True)  # fmt: skip
    idx = match_ground_truth(flows, gt).to_numpy() if len(flows) else np.zeros(0, int)
    tp = int((idx >= 0).sum())
    # attack flows per type: the malicious captures metered the monitor's way, matched
    from iotwatch.bundle import load_bundle

    per_type = _attack_flows_per_type(home, gt, load_bundle(bundle_path))
    hit_types = gt["attack_type"].to_numpy()[idx[idx >= 0]]
    recall_per_attack = {t: float((hit_types == t).sum() / n) for t, n in per_type.items() if n}
    # per device type: false alarms on its benign flows (the monitor's flows of that type minus
    # those of the malicious captures aimed at it), so a miss of the 1 % shows whose it is
    mal_per_type: dict[str, int] = {}
    for name in mal_caps:
        kind = Path(name).stem
        mal_per_type[kind] = mal_per_type.get(kind, 0) + int(per_capture.get(name, 0))
    fp_per_type = on_benign.groupby("device_type").size().to_dict() if len(on_benign) else {}
    fpr_per_type = {}
    for kind, n in sorted(summary.get("flows_per_device_type", {}).items()):
        benign = n - mal_per_type.get(kind, 0)
        fp = int(fp_per_type.get(kind, 0))
        fpr_per_type[kind] = {"false_positives": fp, "benign_flows": benign,
                              "fpr": fp / benign if benign > 0 else None}  # fmt: skip
    inv = read_inventory_csv(home / "inventory.csv")
    types = {}
    for d in inv.devices:
        got = summary["devices"].get(d.mac or f"ip:{d.ip}", {})
        types[d.name] = {"true": d.device_type, "reported": got.get("device_type"),
                         "confidence": got.get("confidence")}  # fmt: skip
    return {
        "attack_flows": attack_flows, "alerts_on_attacks": len(on_mal),
        "alerts_matching_ground_truth": tp, "recall": tp / attack_flows if attack_flows else None,
        "benign_flows": benign_flows, "false_positives": len(on_benign),
        "fpr": len(on_benign) / benign_flows if benign_flows else None,
        "recall_per_attack": recall_per_attack, "attack_flows_per_type": per_type,
        "fpr_per_device_type": fpr_per_type,
        "device_types": types,
        "all_types_right": all(v["true"] == v["reported"] for v in types.values()),
    }  # fmt: skip


def _attack_flows_per_type(home: Path, gt, bundle) -> dict:  # noqa: ANN001
    import dataclasses

    from iotwatch.features import match_ground_truth
    from iotwatch.flowmeter import meter_captures

    cfg = dataclasses.replace(bundle.flow_config, local_networks=[LOCAL_NET])
    files = sorted((home / "malicious").glob("*.pcap"))
    table = meter_captures(files, cfg).table.to_pandas()
    idx = match_ground_truth(table, gt).to_numpy()
    types = gt["attack_type"].to_numpy()[idx[idx >= 0]]
    out = {str(t): int((types == t).sum()) for t in sorted(set(types.tolist()))}
    out["_unmatched"] = int((idx < 0).sum())
    return out


def open_set(home: Path, bundle_path: Path, params_path: Path) -> dict:
    """Leave one device type out of the classifier, vote over windows of 20 flows."""
    import dataclasses

    import pandas as pd

    from iotwatch.bundle import load_bundle
    from iotwatch.classify import ClassifyConfig, make_pipeline
    from iotwatch.config import read_params
    from iotwatch.features import LABEL, read_table
    from iotwatch.flowmeter import meter_captures
    from iotwatch.inventory import read_inventory_csv
    from iotwatch.monitor.forest import compile_pipeline
    from iotwatch.monitor.openset import calibrate, device_groups, out_of_fold_probs, window_votes
    from iotwatch.monitor.orient import LocalNetworks, responder_first
    from iotwatch.pipeline.stages import params_from_dict

    params = params_from_dict(read_params(params_path), str(params_path))
    ccfg = params.typed("classify", ClassifyConfig)
    bundle = load_bundle(bundle_path)
    name = bundle.manifest["classifier"]["name"]
    train = read_table(params.paths.features_train, "train")
    val = read_table(params.paths.features_validation, "validation")
    both = pd.concat([train, val], ignore_index=True)  # the export's calibration pool
    cols = bundle.feature_columns
    cfg = dataclasses.replace(bundle.flow_config, local_networks=[LOCAL_NET])
    files = sorted((home / "benign").glob("*.pcap"))
    flows = meter_captures(files, cfg).table
    flows = responder_first(flows, LocalNetworks([LOCAL_NET]), bundle.n_packets).to_pandas()
    inv = read_inventory_csv(home / "inventory.csv")
    truth = {d.mac: d.device_type for d in inv.devices}
    flows = flows[flows["dev_mac"].isin(list(truth))].reset_index(drop=True)
    x_eval = flows[cols].to_numpy(np.float64)
    macs = flows["dev_mac"].to_numpy()
    groups = device_groups(macs, flows["start"].to_numpy())
    group_type = [truth[macs[g[0]]] for g in groups]
    out: dict = {"folds": {}}
    unknown_hits = unknown_total = known_hits = known_total = 0
    for held in bundle.classes:
        keep = train[LABEL].astype(str) != held
        pipe = make_pipeline(name, ccfg.models[name], params.seed)
        pipe.fit(train.loc[keep, cols], train.loc[keep, LABEL].astype(str).to_numpy())
        classes = [str(c) for c in pipe.classes_]
        forest = compile_pipeline(pipe)
        predict = forest.predict_proba if forest is not None else pipe.predict_proba

        def accepts(x: np.ndarray, classes: list[str] = classes) -> np.ndarray:
            a = np.ones((len(x), len(classes)), bool)
            for j, t in enumerate(classes):
                det = bundle.detectors.get(t)
                if det is not None:
                    a[:, j] = det.score(x) <= det.threshold
            return a

        v = val[val[LABEL].astype(str) != held].reset_index(drop=True)
        xv = v[cols].to_numpy(np.float64)
        pool = both[both[LABEL].astype(str) != held].reset_index(drop=True)
        pool_labels = pool[LABEL].astype(str).to_numpy()
        oof = out_of_fold_probs(pipe, pool[cols], pool_labels, pool["device_id"].astype(str).to_numpy(),
                                pool["capture_time"].to_numpy(np.float64), classes)  # fmt: skip
        rule, _ = calibrate(predict(xv), accepts(xv), classes, v[LABEL].astype(str).to_numpy(),
                            v["device_id"].astype(str).to_numpy(),
                            v["capture_time"].to_numpy(np.float64),
                            pool_probs=oof, pool_labels=pool_labels)  # fmt: skip
        votes = window_votes(predict(x_eval), accepts(x_eval), classes, groups, rule.window)
        fold = {"held_out": held, "bars": rule.confidence, "fits": rule.fits, "fit": rule.fit}
        u = [rule.passes(b, c, f) is False for g, b, c, f in votes if group_type[g] == held]
        k = [rule.passes(b, c, f) and b == group_type[g]
             for g, b, c, f in votes if group_type[g] != held]  # fmt: skip
        fold.update(unknown_windows=len(u), flagged_unknown=float(np.mean(u)) if u else None,
                    known_windows=len(k), known_right=float(np.mean(k)) if k else None)  # fmt: skip
        fold["held_out_votes"] = {t: sum(b == t for g, b, _, _ in votes if group_type[g] == held)
                                  for t in classes}  # fmt: skip
        fold["per_type"] = {}
        for t in classes:
            mine = [(b, c, f) for g, b, c, f in votes if group_type[g] == t]
            n = max(len(mine), 1)
            fold["per_type"][t] = {
                "windows": len(mine),
                "right": sum(b == t and rule.passes(b, c, f) for b, c, f in mine) / n,
                "wrong_winner": sum(b != t for b, _, _ in mine) / n,
                "low_confidence": sum(b == t and c < rule.confidence.get(t, 1.0)
                                      for b, c, _ in mine) / n,
                "low_fit": sum(b == t and f < rule.fits.get(t, rule.fit) for b, _, f in mine) / n,
            }  # fmt: skip
        out["folds"][held] = fold
        unknown_hits += sum(u)
        unknown_total += len(u)
        known_hits += sum(k)
        known_total += len(k)
        print(f"  without {held}: {fold['flagged_unknown']:.3f} of its {len(u)} windows unknown, "
              f"{fold['known_right']:.3f} of {len(k)} known windows right", flush=True)  # fmt: skip
        for t, p in fold["per_type"].items():
            print(f"    {t}: {p['right']:.3f} right (bar {rule.confidence[t]:.3f}, fit "
                  f"{rule.fits.get(t, rule.fit):.2f}; missed: confidence {p['low_confidence']:.3f}"
                  f", fit {p['low_fit']:.3f}, wrong winner {p['wrong_winner']:.3f})")  # fmt: skip
    out["flagged_unknown"] = unknown_hits / unknown_total if unknown_total else None
    out["known_right"] = known_hits / known_total if known_total else None
    return out


_BLAST = r"""
import socket, struct, sys, time
iface, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(path, "rb").read()
frames, pos = [], 24
while pos + 16 <= len(data) and len(frames) < n:
    incl = struct.unpack_from("<I", data, pos + 8)[0]
    frames.append(data[pos + 16 : pos + 16 + incl])
    pos += 16 + incl
frames = (frames * (n // len(frames) + 1))[:n]  # the day again until n frames
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
t = time.perf_counter()
for f in frames:
    s.send(f)
print(len(frames), time.perf_counter() - t)
"""


def live_rate(home: Path, bundle: Path, work: Path, frames: int) -> dict:
    """Blast ``frames`` frames of a benign day into a veth pair as fast as Python sends them
    and monitor the other end: frames received, kernel drops (needs root)."""
    import uuid

    ns = f"iotw-bench-{uuid.uuid4().hex[:6]}"
    if os.geteuid() != 0 or subprocess.run(["ip", "netns", "add", ns]).returncode != 0:
        return {"skipped": "needs root and network namespaces"}
    try:
        for cmd in (["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                    ["link", "set", "v0", "up"], ["link", "set", "v1", "up"]):  # fmt: skip
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1"], check=False)  # fmt: skip
        (work / "blast.py").write_text(_BLAST)
        mon = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(BIN / "iotwatch"), "monitor", "--interface", "v1",
             "--model", str(bundle), "--out", str(work / "live.jsonl"), "--summary",
             str(work / "live.json"), "--idle-exit", "10", "--quiet"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert mon.stderr is not None
        for line in mon.stderr:
            if "listening on" in line:
                break
        day = sorted((home / "benign").glob("*.pcap"))[0]
        sent = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(work / "blast.py"),
                               "v0", str(day), str(frames)],
                              capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        mon.communicate(timeout=300)
        s = json.loads((work / "live.json").read_text())
        n, secs = int(sent[0]), float(sent[1])
        return {"sent": n, "send_seconds": secs, "send_rate": n / secs, "received": s["frames"],
                "kernel_packets": s["kernel_packets"], "kernel_drops": s["kernel_drops"],
                "flows": s["flows_seen"]}  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--bundle", type=Path, default=Path("models/bundle"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--home", type=Path, default=None, help="default: generate one")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--days", type=float, default=13)
    ap.add_argument("--work", type=Path, default=REPO / "bench/out/monitor")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-open-set", action="store_true")
    ap.add_argument("--fifth-days", type=float, default=2, help="days of the fifth-type home")
    ap.add_argument("--live-frames", type=int, default=0,
                    help="also blast this many frames through a veth pair (root)")  # fmt: skip
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    home = _home(args)
    print(f"speed: iotwatch monitor {home} ({args.runs} runs)", flush=True)
    s = speed(home, args.bundle, args.work, args.runs)
    print(f"speed: {s['packets']} packets, {s['flows']} flows, {s['wall_s']:.2f} s wall: "
          f"{s['packets_per_s'] / 1e6:.2f} M packets/s, {s['flows_per_s']:.0f} flows/s, "
          f"peak memory {s['peak_memory_mb']:.0f} MB, {s['alerts']} alerts")  # fmt: skip
    print(f"speed: flow meter alone (iotwatch flows, same captures, median) {s['meter_wall_s']:.2f} s: "
          f"{s['meter_packets_per_s'] / 1e6:.2f} M packets/s; monitor / meter wall time "
          f"{s['monitor_over_meter']:.2f}")  # fmt: skip
    d = detection(home, args.work, s["summary"], args.bundle)
    print(f"detection: attack recall {d['recall']:.4f} ({d['alerts_matching_ground_truth']}/"
          f"{d['attack_flows']} attack flows), flow FPR {d['fpr']:.4f} ({d['false_positives']}/"
          f"{d['benign_flows']} benign flows)")  # fmt: skip
    print(f"  recall per attack: { {k: round(v, 3) for k, v in d['recall_per_attack'].items()} }")
    for kind, f in d["fpr_per_device_type"].items():
        fpr = "n/a" if f["fpr"] is None else f"{f['fpr']:.4f}"
        print(f"  flow FPR {kind}: {fpr} ({f['false_positives']}/{f['benign_flows']})")
    for name, t in d["device_types"].items():
        print(f"  {name}: {t['true']} -> reported {t['reported']} (confidence {t['confidence']})")
    print(f"  every device's type identified: {d['all_types_right']}")
    result = {"speed": {k: v for k, v in s.items() if k != "summary"}, "detection": d}
    if not args.skip_open_set:
        print("open set (windows of 20 flows, one type left out at a time):", flush=True)
        o = open_set(home, args.bundle, args.params)
        print(f"open set: unknown type flagged {o['flagged_unknown']:.3f} of windows, known "
              f"types right {o['known_right']:.3f} (published: 0.96 / 0.99)")  # fmt: skip
        result["open_set"] = o
    print("fifth device type (hue_bridge, never trained on):", flush=True)
    f = fifth_kind(args)
    for name, t in f["devices"].items():
        print(f"  {name}: {t['true']} -> {t['status']} {t['reported'] or ''} (vote {t['vote']}, "
              f"confidence {t['confidence']}, fit {t['fit']}, {t['alerts']} alerts)")  # fmt: skip
    result["fifth_kind"] = f
    if args.live_frames:
        lv = live_rate(home, args.bundle, args.work, args.live_frames)
        print(f"live: {lv}")
        result["live"] = lv
    (args.work / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.work / 'result.json'}")


if __name__ == "__main__":
    main()
