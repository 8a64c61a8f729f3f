"""The watch stage: the exported monitor on the days after training (a deployment evaluation).

The dataset's ``watch:`` names the captures watched (their packets after ``train_days``), attack
captures merged in as they are (``extra``, with their ground truth ``attacks``) and an optional
``infection`` (an attack capture's host rewritten onto one of the home's devices,
``iotwatch.watchset``). The stage builds that watch capture, runs the monitor on it as a
deployment would (no inventory: devices are recognised), and scores what it said against the
ground truth: per device its type placed, flows, false alerts (per day) and false incidents
(per week); per infected device the attack flows, recall, and seconds from the infection's first
packet to its first alert (``detected_ts``: when the monitor could raise it). Written to
``reports/metrics/watch.json``, MLflow and ``<watch_plots>/watch.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotwatch.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from iotwatch.bundle import Bundle
    from iotwatch.context import StageContext
    from iotwatch.tracking import StageRun

log = logging.getLogger(__name__)

DAY = 86_400.0
CHUNK_PACKETS = 256  # packets metered at once: flows are sighted as a live monitor sees them


def watch_start(ctx: StageContext) -> float:
    """The first moment of the watch period: the flows stage's ``train_until``."""
    from iotwatch.watchset import capture_start

    f = Path(ctx.paths.metrics_dir) / "flows.json"
    try:
        return float(json.loads(f.read_text())["benign"]["train_until"])
    except (OSError, ValueError, KeyError, TypeError):
        assert ctx.dataset.train_days is not None
        return capture_start([Path(ctx.dataset.captures)]) + ctx.dataset.train_days * DAY


def build(ctx: StageContext, out: Path, truth: Path) -> dict[str, Any]:
    """The watch capture and its ground truth (``iotwatch.watchset.build_watch``)."""
    from iotwatch.inventory import load_inventory
    from iotwatch.watchset import Infection, build_watch

    ds, w = ctx.dataset, ctx.dataset.watch
    assert w is not None
    start = watch_start(ctx)
    infections = []
    if w.infection is not None:
        inf = w.infection
        inv = load_inventory(ds.inventory, ds.inventory_format)
        dev = next((d for d in inv.devices if d.name == inf.device), None)
        if dev is None:
            raise InputError(f"{ds.inventory}: no device named {inf.device!r} (watch.infection)")
        infections.append(Infection(attack=Path(inf.attack), host_ip=inf.host, device_ip=dev.ip,
                                    device_mac=dev.mac, at=start + inf.after_days * DAY,
                                    label=inf.label, device_type=dev.device_type,
                                    device_name=dev.name))  # fmt: skip
    extra = [Path(w.extra)] if w.extra is not None else []
    return build_watch([Path(w.captures)], out, start=start, infections=infections, truth=truth,
                       extra=extra, extra_truth=Path(w.attacks) if w.attacks else None)  # fmt: skip


def monitor(bundle: Bundle, capture: Path, local: list[str]) -> tuple[list[dict], dict, Any]:
    """Run the monitor on the watch capture: (alerts, summary, monitor)."""
    import dataclasses

    from iotwatch.monitor.engine import Monitor
    from iotwatch.monitor.orient import PRIVATE_NETWORKS
    from iotwatch.monitor.run import Run

    local = local or list(bundle.manifest.get("local_networks") or PRIVATE_NETWORKS)

    class Collect:
        def __init__(self) -> None:
            self.alerts: list[dict[str, Any]] = []

        def write(self, lines: list[dict[str, Any]]) -> None:
            self.alerts += [a for a in lines if a.get("kind") != "incident"]

    sink = Collect()
    mon = Monitor(bundle, sink, local_networks=local)
    run = Run(mon, dataclasses.replace(bundle.flow_config, local_networks=local), None,
              chunk_packets=CHUNK_PACKETS)  # fmt: skip
    try:
        run.captures([capture])
    finally:
        run.finish()
    return sink.alerts, run.summary(), mon


def _meter(capture: Path, ctx: StageContext, bundle: Bundle) -> pd.DataFrame:
    """Every flow of the watch capture, labelled by the inventory (the ground truth's side)."""
    import pyarrow as pa

    from iotwatch.flowmeter.stream import FlowStream
    from iotwatch.inventory import load_inventory

    inv = load_inventory(ctx.dataset.inventory, ctx.dataset.inventory_format)
    tables = list(FlowStream.from_capture(capture, bundle.flow_config, inv))
    return pa.concat_tables(tables).to_pandas() if tables else pa.table({}).to_pandas()


def score(
    flows: pd.DataFrame,
    alerts: list[dict[str, Any]],
    summary: dict[str, Any],
    truth: pd.DataFrame | None,
    start: float,
    tolerance_s: float = 1.0,
) -> dict[str, Any]:
    """What the monitor said against the ground truth (module docstring)."""
    import numpy as np
    import pandas as pd

    from iotwatch.features import match_ground_truth

    flows = flows[flows["device_known"]].reset_index(drop=True) if len(flows) else flows
    al = pd.DataFrame(alerts)
    if len(al):
        al = al.rename(columns={"device_port": "dev_port", "flow_start": "start",
                                "flow_end": "end", "device_ip": "dev_ip"})  # fmt: skip
    empty_gt = truth is None or len(truth) == 0
    f_hit = (match_ground_truth(flows, truth, tolerance_s).to_numpy() if not empty_gt and len(flows)
             else np.full(len(flows), -1))  # fmt: skip
    a_hit = (match_ground_truth(al, truth, tolerance_s).to_numpy() if not empty_gt and len(al)
             else np.full(len(al), -1))  # fmt: skip
    end = float(flows["end"].max()) if len(flows) else start
    days = max((end - start) / DAY, 1e-9)
    devices: dict[str, Any] = {}
    by_ip = summary.get("devices", {})
    placed = {}
    for d in by_ip.values():
        placed[d.get("mac") or d.get("ip")] = d
    for (name, mac, dtype), part in flows.groupby(["device_name", "dev_mac", "device_type"],
                                                   dropna=False):  # fmt: skip
        d = placed.get(mac) or {}
        mine = al[al["device_mac"] == mac] if len(al) else al
        false = mine[a_hit[mine.index] < 0] if len(mine) else mine
        incidents = [i for i in summary.get("incidents", []) if i.get("device_mac") == mac]
        false_inc = [i for i in incidents
                     if not (len(mine) and (a_hit[mine.index[mine["incident"] == i["id"]]] >= 0).any())]  # fmt: skip
        devices[str(name)] = {
            "device_type": str(dtype),
            "placed_as": d.get("device_type"),
            "placed_right": d.get("device_type") == dtype,
            "modelled": bool(d.get("modelled", False)) if d else False,
            "note": d.get("note"),
            "flows": int(len(part)),
            "attack_flows": int((f_hit[part.index] >= 0).sum()),
            "false_alerts": int(len(false)),
            "false_alerts_per_day": round(len(false) / days, 3),
            "false_incidents": len(false_inc),
            "false_incidents_per_week": round(len(false_inc) / days * 7, 3),
        }
    infections: dict[str, Any] = {}
    if not empty_gt:
        assert truth is not None
        for name, g in truth.groupby(truth["device_name"].astype(str)):
            rows = set(g.index.tolist())
            att = np.isin(f_hit, list(rows))
            hit = np.isin(a_hit, list(rows)) if len(al) else np.zeros(0, bool)
            n = int(att.sum())
            caught = al[hit] if len(al) else al
            keys = {(r.dev_ip, r.dev_port, r.peer_ip, r.peer_port, round(r.start, 3))
                    for r in caught.itertuples()} if len(caught) else set()  # fmt: skip
            first_pkt = float(g["start"].min())
            first_alert = float(caught["detected_ts"].min()) if len(caught) else None
            infections[name] = {
                "attack": ",".join(sorted(set(g["attack_type"].astype(str)))),
                "first_packet": first_pkt,
                "flows": n,
                "flows_alerted": min(len(keys), n),
                "recall": round(min(len(keys), n) / n, 4) if n else None,
                "seconds_to_first_alert": (
                    round(first_alert - first_pkt, 3) if first_alert is not None else None
                ),  # fmt: skip
                "placed_right": devices.get(name, {}).get("placed_right"),
            }
    modelled = [d for d in devices.values() if d["modelled"]]
    return {
        "watch_days": round(days, 3),
        "flows": int(len(flows)),
        "alerts": int(len(al)),
        "incidents": len(summary.get("incidents", [])),
        "devices": devices,
        "infections": infections,
        "worst_false_alerts_per_day": max(
            (d["false_alerts_per_day"] for d in modelled), default=None
        ),  # fmt: skip
        "worst_false_incidents_per_week": max(
            (d["false_incidents_per_week"] for d in modelled), default=None
        ),  # fmt: skip
        "all_placed_right": all(d["placed_right"] for d in devices.values()),
        "not_modelled": summary.get("not_modelled", {}),
    }


def plot(m: dict[str, Any], path: Path, budget: float | None) -> Path:
    """False alerts per device-day (bars, the budget as a line) and each infection's recall
    and time to first alert (text)."""
    from iotwatch.viz import _pyplot

    plt = _pyplot()
    names = list(m["devices"])
    vals = [m["devices"][n]["false_alerts_per_day"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    colors = ["#8a9bb0" if m["devices"][n]["modelled"] else "#dddddd" for n in names]
    ax.bar(range(len(names)), vals, color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(
        [f"{n}\n{'' if m['devices'][n]['modelled'] else '(not modelled)'}" for n in names],
        fontsize=7,
    )
    if budget is not None:
        ax.axhline(budget, color="black", ls="--", lw=0.8, label=f"budget {budget:g} / day")
        ax.legend(fontsize=7, frameon=False)
    ax.set_ylabel("false alerts per device-day")
    lines = [f"{k}: recall {v['recall']}, first alert {v['seconds_to_first_alert']} s after "
             f"its first packet" for k, v in m["infections"].items()]  # fmt: skip
    ax.set_title(f"Watch period, {m['watch_days']:.2f} days"
                 + ("\n" + "; ".join(lines) if lines else ""), fontsize=8)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: Any, ctx: StageContext, sr: StageRun) -> dict[str, Any]:
    """Watch stage: build the watch capture, monitor it, score and draw it."""
    from iotwatch.bundle import load_bundle
    from iotwatch.features import read_ground_truth

    paths = ctx.paths
    plots, folder = Path(paths.watch_plots), Path(paths.watch_data)
    for out in (plots, folder):  # DVC outputs, also without a watch period
        out.mkdir(parents=True, exist_ok=True)
    if ctx.dataset.watch is None:
        for out in (plots, folder):
            (out / "NO_WATCH.txt").write_text("the dataset names no watch period\n")
        metrics: dict[str, Any] = {"enabled": False}
        sr.record(metrics)
        return metrics
    capture, truth_csv = folder / "watch.pcap", folder / "attacks.csv"
    built = build(ctx, capture, truth_csv)
    print(f"watch: built {capture} ({built})", flush=True)
    bundle = load_bundle(Path(paths.models_dir) / "bundle")
    alerts, summary, mon = monitor(bundle, capture, list(ctx.dataset.local_networks))
    flows = _meter(capture, ctx, bundle)
    truth = read_ground_truth(truth_csv) if truth_csv.is_file() else None
    if truth is not None and len(truth) == 0:
        truth = None
    start = watch_start(ctx)
    metrics = {"enabled": True, "start": start, **score(flows, alerts, summary, truth, start)}
    budget = bundle.manifest.get("alert_budget")
    metrics["alert_budget"] = budget
    plot(metrics, plots / "watch.png", budget)
    from iotwatch.monitor.report import write_report

    write_report(plots / "monitor.html", mon, summary, summary.get("incidents"), alerts[:5000])
    (folder / "alerts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in alerts))
    for name, d in metrics["devices"].items():
        print(f"watch {name} ({d['device_type']}, placed as {d['placed_as']}): {d['flows']} "
              f"flows, {d['false_alerts']} false alerts ({d['false_alerts_per_day']}/day), "
              f"{d['false_incidents']} false incidents" + ("" if d["modelled"] else
                                                            f" [{d['note']}]"), flush=True)  # fmt: skip
    for name, v in metrics["infections"].items():
        print(
            f"watch infection {name}: {v['flows']} attack flows, recall {v['recall']}, first "
            f"alert {v['seconds_to_first_alert']} s after its first packet",
            flush=True,
        )
    sr.record(metrics)
    sr.log_artifact(plots / "watch.png")
    return metrics
