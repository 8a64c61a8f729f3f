"""The monitor's HTML report: what happened, per device, when and why.

From the top: the incidents (``iotwatch.monitor.incidents`` records: device, span, services,
peers, why), the devices (type, status: compromised / ok / not modelled and why, incidents and
isolated alerts), one timeline per device (flows up, alerts down, incidents shaded, a UTC time
axis shared by all), the alerts of each device (time, peer, port, reason, score, why; at most
``MAX_ALERT_ROWS`` each) and the summary as a table. One self-contained file (inline SVG and
CSS, no script, nothing fetched), readable offline on an analyst's laptop; every text from the
traffic is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotwatch.errors import InputError
from iotwatch.monitor.incidents import PROTO_NAMES, detected_ts, device_key, duration

if TYPE_CHECKING:
    from iotwatch.monitor.engine import DeviceState, Monitor

WIDTH, HEIGHT = 900, 90
AXIS_H = 18  # room under a timeline for its time labels
MAX_ALERT_ROWS = 200  # alert rows shown per device
MAX_LIST = 20  # items of a list shown in the summary table
# time-axis steps (seconds): the first giving at most MAX_TICKS intervals is used
_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
          86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400]  # fmt: skip
MAX_TICKS = 7

esc = html.escape


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def _utc(t: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if t is None or not math.isfinite(t):
        return ""
    return datetime.fromtimestamp(t, UTC).strftime(fmt)


def _num(v: Any) -> str:
    """A score or threshold for people ("" for none, "inf" for no model)."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else str(v)
    return str(v)


def axis_ticks(t_lo: float, t_hi: float) -> list[tuple[float, str]]:
    """Evenly spaced round times in [t_lo, t_hi] and their UTC labels: the date where it
    changes (and on the first tick), the time of day unless the step is whole days."""
    span = max(t_hi - t_lo, 1.0)
    step = next((s for s in _STEPS if span / s <= MAX_TICKS), None)
    if step is None:
        step = math.ceil(span / MAX_TICKS / 86400) * 86400
    t = math.ceil(t_lo / step) * step
    out: list[tuple[float, str]] = []
    last_day = None
    while t <= t_hi + 1e-9:
        dt = datetime.fromtimestamp(t, UTC)
        day = dt.strftime("%Y-%m-%d")
        if step >= 86400:
            label = day
        else:
            tod = dt.strftime("%H:%M:%S" if step < 60 else "%H:%M")
            label = f"{day} {tod}" if day != last_day else tod
        last_day = day
        out.append((float(t), label))
        t += step
    return out


def _timeline(
    st: DeviceState,
    bucket_s: float,
    t_lo: float,
    t_hi: float,
    spans: Iterable[dict[str, Any]] = (),
) -> str:
    """An SVG bar chart: flows per bucket (grey, up), alerts (red, down), incidents (shaded
    spans) and a UTC time axis underneath, on the report's shared time range."""
    span = max(t_hi - t_lo, bucket_s)
    peak_f = max((f for f, _ in st.timeline.values()), default=0) or 1
    peak_a = max((a for _, a in st.timeline.values()), default=0) or 1
    mid = HEIGHT * 0.62
    bw = max(WIDTH * bucket_s / span, 1.0)

    def x_of(t: float) -> float:
        return (t - t_lo) / span * WIDTH

    shades = []
    for r in spans:
        x0, x1 = x_of(r["start"]), x_of(r["end"])
        w = max(x1 - x0, 6.0)  # a burst of minutes in a week must still show
        x = x0 - (w - (x1 - x0)) / 2
        title = (f'incident #{r["id"]}: {esc(_utc(r["start"]))} to {esc(_utc(r["end"]))} UTC, '
                 f'{r["alerts"]} alerts. {esc(str(r.get("why", "")))}')  # fmt: skip
        shades.append(f'<g><title>{title}</title><rect x="{x:.1f}" y="0" width="{w:.1f}" '
                      f'height="{HEIGHT}" fill="#f6c343" fill-opacity="0.45" stroke="#d08a00" '
                      f'stroke-width="0.8"/><text x="{x + w + 2:.1f}" y="10" font-size="10" '
                      f'fill="#a06a00">#{r["id"]}</text></g>')  # fmt: skip
    bars = []
    for b, (f, a) in sorted(st.timeline.items()):
        x = x_of(b * bucket_s)
        if f:
            h = (mid - 4) * f / peak_f
            bars.append(f'<rect x="{x:.1f}" y="{mid - h:.1f}" width="{bw:.1f}" height="{h:.1f}" '
                        f'fill="#8a9bb0"><title>{_when(b * bucket_s)}: {f} flows</title></rect>')  # fmt: skip
        if a:
            h = (HEIGHT - mid - 4) * a / peak_a
            bars.append(f'<rect x="{x:.1f}" y="{mid:.1f}" width="{max(bw, 2):.1f}" '
                        f'height="{max(h, 2):.1f}" fill="#d33"><title>{_when(b * bucket_s)}: '
                        f"{a} alerts</title></rect>")  # fmt: skip
    ticks = []
    for t, label in axis_ticks(t_lo, t_hi):
        x = x_of(t)
        anchor = "start" if x < 40 else "end" if x > WIDTH - 40 else "middle"
        ticks.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{HEIGHT + 3}" stroke="#ccc" '
                     f'stroke-width="0.5"/><text x="{x:.1f}" y="{HEIGHT + 14}" font-size="11" '
                     f'fill="#555" text-anchor="{anchor}">{esc(label)}</text>')  # fmt: skip
    axis = (f'<line x1="0" y1="{mid:.1f}" x2="{WIDTH}" y2="{mid:.1f}" stroke="#444" '
            f'stroke-width="0.5"/><line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" '
            'stroke="#888" stroke-width="0.5"/>')  # fmt: skip
    h = HEIGHT + AXIS_H
    return (f'<svg width="{WIDTH}" height="{h}" viewBox="0 0 {WIDTH} {h}" role="img">'
            f'{"".join(shades)}{"".join(ticks)}{axis}{"".join(bars)}</svg>')  # fmt: skip


def _top(counts: dict[str, int] | None, n: int = 3) -> str:
    items = list((counts or {}).items())
    text = ", ".join(f"{k} ({v})" for k, v in items[:n])
    return text + (f", +{len(items) - n} more" if len(items) > n else "")


def _incident_rows(incidents: list[dict[str, Any]], anchors: dict[str, str]) -> str:
    if not incidents:
        return '<p class="ok">No incidents.</p>'
    rows = []
    for r in sorted(incidents, key=lambda r: (r["start"], r["id"])):
        dev = str(r.get("device", ""))
        link = f'<a href="#{anchors[dev]}">{esc(dev)}</a>' if dev in anchors else esc(dev)
        ip = f"<br><small>{esc(str(r['device_ip']))}</small>" if r.get("device_ip") else ""
        same_day = _utc(r["start"], "%Y-%m-%d") == _utc(r["end"], "%Y-%m-%d")
        end = _utc(r["end"], "%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")
        rows.append(
            f"<tr><td>#{r['id']}</td><td>{link}{ip}</td><td>{esc(str(r.get('device_type')))}</td>"
            f"<td class=nowrap>{esc(_utc(r['start']))} – {esc(end)}</td>"
            f"<td>{esc(duration(r['end'] - r['start']))}</td><td class=hot>{r['alerts']}</td>"
            f"<td>{esc(_top(r.get('services')))}</td><td>{esc(_top(r.get('peers')))}</td>"
            f"<td>{esc(_num(r.get('peak_score')))}</td><td>{esc(str(r.get('why', '')))}</td></tr>"
        )
    return ("<table><tr><th>#</th><th>device</th><th>type</th><th>start – end (UTC)</th>"
            "<th>duration</th><th>alerts</th><th>services</th><th>peers</th><th>peak score</th>"
            f"<th>why</th></tr>{''.join(rows)}</table>")  # fmt: skip


def _status(d: DeviceState, facts: dict[str, Any], summary: dict[str, Any], incidents: int) -> str:
    """The device's status cell: compromised / ok / not modelled (and why) / unknown / pending."""
    if incidents:
        return f'<span class="bad">compromised</span> ({incidents} incident{"s" * (incidents > 1)})'
    if facts.get("modelled") is False:
        reason = (summary.get("not_modelled") or {}).get(d.device_type or facts.get("device_type"))
        text = f"not modelled: {reason}" if reason else "not modelled"
        return f'<span class="grey">{esc(str(text))}</span>'
    if d.status == "unknown":
        return '<span class="grey">not judged: unknown type</span>'
    if d.status == "pending":
        return f'<span class="grey">pending ({d.flows} flows, type not decided)</span>'
    return '<span class="okb">ok</span>'


def _alert_rows(
    alerts: list[dict[str, Any]], total: int, spans: list[dict[str, Any]], note_file: bool
) -> str:
    """One device's alert table (oldest first, at most ``MAX_ALERT_ROWS``)."""
    shown = alerts[:MAX_ALERT_ROWS]
    rows = []
    for a in shown:
        t = detected_ts(a)
        inc = a.get("incident")
        if inc is None:  # opening alerts were written before their incident: find it by span
            inc = next((r["id"] for r in spans if r["start"] <= t <= r["end"]), None)
        peer = str(a.get("peer_ip", ""))
        peer = f"[{peer}]" if ":" in peer else peer
        proto = a.get("proto")
        pname = PROTO_NAMES.get(proto, str(proto)) if isinstance(proto, int) else str(proto)
        reason = a.get("reason") or ("service" if a.get("score") is None else "behaviour")
        why = a.get("why")
        if not why and a.get("top_features"):
            why = "top features: " + ", ".join(
                str(f.get("feature")) for f in a["top_features"] if isinstance(f, dict)
            )
        rows.append(
            f"<tr><td class=nowrap>{esc(_utc(t))}</td>"
            f"<td>{f'#{inc}' if inc is not None else '<span class=grey>isolated</span>'}</td>"
            f"<td>{esc(peer)}:{esc(str(a.get('peer_port', '')))}</td>"
            f"<td>{esc(str(a.get('device_port', '')))}</td><td>{esc(pname)}</td>"
            f"<td>{esc(str(reason))}</td><td>{esc(_num(a.get('score')))}</td>"
            f"<td>{esc(_num(a.get('threshold')))}</td><td>{esc(str(why or ''))}</td></tr>"
        )
    more = max(total, len(alerts)) - len(shown)
    note = ""
    if more > 0:
        where = "in the alerts file" if note_file else "not shown"
        note = f'<p class="note">{more} more {where}.</p>'
    return ("<table class=alerts><tr><th>time (UTC)</th><th>incident</th><th>peer</th>"
            "<th>our port</th><th>proto</th><th>reason</th><th>score</th><th>threshold</th>"
            f"<th>why</th></tr>{''.join(rows)}</table>{note}")  # fmt: skip


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as dotted keys; lists joined (at most ``MAX_LIST`` items)."""
    if isinstance(value, dict):
        if not value and prefix:
            return [(prefix, "–")]
        out: list[tuple[str, str]] = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list | tuple):
        items = [str(v) for v in value[:MAX_LIST]]
        more = f" … (+{len(value) - MAX_LIST} more)" if len(value) > MAX_LIST else ""
        return [(prefix, ", ".join(items) + more if items else "–")]
    if value is None:
        return [(prefix, "–")]
    if isinstance(value, float):
        return [(prefix, f"{value:.6g}")]
    return [(prefix, str(value))]


def _summary_table(summary: dict[str, Any]) -> str:
    facts = {k: v for k, v in summary.items() if k != "devices"}  # the devices table has them
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _flatten(facts))
    return f"<table class=kv>{rows}</table>"


def render(
    monitor: Monitor,
    summary: dict[str, Any],
    incidents: list[dict[str, Any]] | None = None,
    alerts: list[dict[str, Any]] | None = None,
) -> str:
    """The report's HTML text. ``incidents``: the incident records (``Incidents.finish()``);
    ``alerts``: alert dicts to list per device (a selection: each device's count of alerts
    not given is noted as being in the alerts file). Without them those sections are left
    out."""
    devices = sorted(monitor.devices.values(), key=lambda d: (-d.alerts, -d.flows, d.key))
    anchors = {d.key: f"dev-{i}" for i, d in enumerate(devices)}
    by_dev: dict[str, list[dict[str, Any]]] = {}
    for r in incidents or []:
        by_dev.setdefault(str(r.get("device")), []).append(r)
    alerts_by: dict[str, list[dict[str, Any]]] = {}
    for a in alerts or []:
        alerts_by.setdefault(device_key(a), []).append(a)
    for lst in alerts_by.values():
        lst.sort(key=detected_ts)

    seen = [d for d in devices if d.timeline]
    t_lo = min((min(d.timeline) * monitor.bucket_s for d in seen), default=math.inf)
    t_hi = max(((max(d.timeline) + 1) * monitor.bucket_s for d in seen), default=-math.inf)
    for r in incidents or []:
        t_lo, t_hi = min(t_lo, r["start"]), max(t_hi, r["end"])
    if not math.isfinite(t_lo):
        t_lo, t_hi = 0.0, 1.0
    dev_facts = summary.get("devices") or {}

    rows, charts, tables = [], [], []
    for d in devices:
        facts = dev_facts.get(d.key) or {}
        mine = sorted(by_dev.get(d.key, []), key=lambda r: r["start"])
        n_inc = int(facts.get("incidents", len(mine)))
        in_inc = sum(int(r.get("alerts", 0)) for r in mine)
        isolated = int(facts.get("isolated_alerts", max(d.alerts - in_inc, 0)))
        status = _status(d, facts, summary, n_inc if incidents is not None else 0)
        not_modelled = facts.get("modelled") is False
        kind = esc(d.device_type) if d.device_type else (
            f'<b class="unknown">unknown</b> (nearest {esc(str(d.vote_type))})')  # fmt: skip
        alerts_cell = (f'<td class="{"hot" if d.alerts else ""}">{d.alerts}</td>'
                       if not not_modelled or d.alerts else '<td class="grey">n/a</td>')  # fmt: skip
        inc_cells = ""
        if incidents is not None and not_modelled and not d.alerts:
            inc_cells = '<td class="grey">n/a</td><td class="grey">n/a</td>'
        elif incidents is not None:
            inc_cells = (f'<td class="{"hot" if n_inc else ""}">{n_inc}</td>'
                         f"<td>{isolated}</td>")  # fmt: skip
        rows.append(
            f'<tr><td><a href="#{anchors[d.key]}">{esc(d.key)}</a></td><td>{esc(d.ip)}</td>'
            f"<td>{kind}</td><td>{status}</td><td>{d.confidence:.2f}</td><td>{d.fit:.2f}</td>"
            f"<td>{d.flows}</td>{alerts_cell}{inc_cells}</tr>"
        )
        label = d.device_type or "unknown type"
        if not_modelled:
            what = _status(d, facts, summary, 0)
        else:
            what = f"{d.alerts} alerts"
            if incidents is not None:
                what += f" · {n_inc} incident{'s' * (n_inc != 1)} · {isolated} isolated"
        head = (f'<h3 id="{anchors[d.key]}">{esc(d.key)} <small>{esc(d.ip)} · {esc(label)} · '
                f"{d.flows} flows · {what}</small></h3>")  # fmt: skip
        if d.timeline:
            charts.append(head + _timeline(d, monitor.bucket_s, t_lo, t_hi, mine))
        if alerts is not None and (alerts_by.get(d.key) or d.alerts):
            given = alerts_by.pop(d.key, [])
            body = _alert_rows(given, d.alerts, mine, note_file=True)
            opened = " open" if mine or len(given) <= 20 else ""
            tables.append(f'<details{opened}><summary><b>{esc(d.key)}</b> <small>{esc(d.ip)} · '
                          f"{esc(label)} · {max(d.alerts, len(given))} alerts</small></summary>"
                          f"{body}</details>")  # fmt: skip
    for key, given in sorted(alerts_by.items()):  # alerts of devices the monitor no longer has
        body = _alert_rows(given, len(given), by_dev.get(key, []), note_file=True)
        tables.append(f"<details open><summary><b>{esc(key)}</b></summary>{body}</details>")

    span = f"{_when(t_lo)} to {_when(t_hi)} UTC" if seen else "no flows"
    secs = max(summary.get("seconds", 0.0), 1e-9)
    inc_cols = "<th>incidents</th><th>isolated alerts</th>" if incidents is not None else ""
    sections = []
    lead = ""
    if incidents is not None:
        n_dev = len({r.get("device") for r in incidents})
        lead = (f"<b>{len(incidents)} incident{'s' * (len(incidents) != 1)}</b> on {n_dev} "
                "device(s), ")  # fmt: skip
        sections.append(f"<h2>Incidents</h2>{_incident_rows(incidents, anchors)}")
    bundle = getattr(monitor, "bundle", None)
    manifest = getattr(bundle, "manifest", None) or {}
    model = (f" Bundle: {esc(str(getattr(bundle, 'path', '')))} (classifier "
             f"{esc(str((manifest.get('classifier') or {}).get('name')))}).")  # fmt: skip
    alerts_section = ""
    if alerts is not None:
        alerts_section = (
            "<h2>Alerts</h2><p>Per device, oldest first (at most "
            f"{MAX_ALERT_ROWS} rows each). <i>isolated</i>: in no incident.</p>"
            + ("".join(tables) or "<p>No alerts.</p>")
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>iotwatch monitor report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 0.5em; }}
td, th {{ padding: 3px 10px; border-bottom: 1px solid #ddd; vertical-align: top; }}
th {{ text-align: left; }} .hot {{ color: #d33; font-weight: bold; }} .unknown {{ color: #b60; }}
.bad {{ color: #fff; background: #d33; padding: 0 5px; border-radius: 3px; font-weight: bold; }}
.okb {{ color: #fff; background: #3a8a4a; padding: 0 5px; border-radius: 3px; }}
.ok {{ color: #3a8a4a; }} .grey {{ color: #777; }} .nowrap {{ white-space: nowrap; }}
.note {{ color: #666; font-style: italic; }} table.kv th {{ font-weight: normal; color: #555; }}
table.alerts {{ font-size: 12px; }} details {{ margin: 0.6em 0; }}
h3 {{ margin: 1.2em 0 0.2em; font-size: 14px; }} small {{ color: #666; font-weight: normal; }}
</style></head><body>
<h1>iotwatch monitor</h1>
<p>{lead}{summary.get("packets", 0)} packets, {summary.get("flows_seen", 0)} flows,
<b>{summary.get("alerts", 0)} alerts</b>, {len(summary.get("unknown_devices", []))} unknown
device(s); traffic {esc(span)}; processed in {secs:.2f} s.{model}</p>
{"".join(sections)}
<h2>Devices</h2>
<table><tr><th>device</th><th>IP</th><th>type</th><th>status</th><th>confidence</th><th>fit</th>
<th>flows</th><th>alerts</th>{inc_cols}</tr>
{"".join(rows)}</table>
<h2>Timelines</h2>
<p>Per device, {monitor.bucket_s:g} s buckets: flows judged (grey, up) and alerts (red,
down){", incidents shaded yellow" if incidents is not None else ""}; one UTC time axis for all.
Hover a bar or span for its time and count.</p>
{"".join(charts)}
{alerts_section}
<h2>Summary</h2>
{_summary_table(summary)}
</body></html>
"""


def write_report(
    path: Path,
    monitor: Monitor,
    summary: dict[str, Any],
    incidents: list[dict[str, Any]] | None = None,
    alerts: list[dict[str, Any]] | None = None,
) -> None:
    """Write the report (a failure to write is one line)."""
    text = render(monitor, summary, incidents, alerts)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
