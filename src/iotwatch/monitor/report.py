"""The monitor's HTML report: one timeline per device (flows and alerts over time), the
devices' types and confidences, and the summary. One self-contained file (inline SVG, no
script, nothing fetched), readable offline on an analyst's laptop.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotwatch.errors import InputError

if TYPE_CHECKING:
    from iotwatch.monitor.engine import DeviceState, Monitor

WIDTH, HEIGHT = 900, 90


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def _timeline(st: DeviceState, bucket_s: float, t_lo: float, t_hi: float) -> str:
    """An SVG bar chart: flows per bucket (grey, up) and alerts (red, down), shared time axis."""
    span = max(t_hi - t_lo, bucket_s)
    peak_f = max((f for f, _ in st.timeline.values()), default=0) or 1
    peak_a = max((a for _, a in st.timeline.values()), default=0) or 1
    mid = HEIGHT * 0.62
    bw = max(WIDTH * bucket_s / span, 1.0)
    bars = []
    for b, (f, a) in sorted(st.timeline.items()):
        x = (b * bucket_s - t_lo) / span * WIDTH
        if f:
            h = (mid - 4) * f / peak_f
            bars.append(f'<rect x="{x:.1f}" y="{mid - h:.1f}" width="{bw:.1f}" height="{h:.1f}" '
                        f'fill="#8a9bb0"><title>{_when(b * bucket_s)}: {f} flows</title></rect>')  # fmt: skip
        if a:
            h = (HEIGHT - mid - 4) * a / peak_a
            bars.append(f'<rect x="{x:.1f}" y="{mid:.1f}" width="{max(bw, 2):.1f}" '
                        f'height="{max(h, 2):.1f}" fill="#d33"><title>{_when(b * bucket_s)}: '
                        f"{a} alerts</title></rect>")  # fmt: skip
    axis = (f'<line x1="0" y1="{mid:.1f}" x2="{WIDTH}" y2="{mid:.1f}" stroke="#444" '
            'stroke-width="0.5"/>')  # fmt: skip
    return (f'<svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'role="img">{axis}{"".join(bars)}</svg>')  # fmt: skip


def render(monitor: Monitor, summary: dict[str, Any]) -> str:
    """The report's HTML text."""
    esc = html.escape
    devices = sorted(monitor.devices.values(), key=lambda d: (-d.alerts, -d.flows, d.key))
    seen = [d for d in devices if d.timeline]
    t_lo = min((min(d.timeline) * monitor.bucket_s for d in seen), default=0.0)
    t_hi = max(((max(d.timeline) + 1) * monitor.bucket_s for d in seen), default=1.0)
    rows = []
    for d in devices:
        kind = esc(d.device_type) if d.device_type else (
            f'<b class="unknown">unknown</b> (nearest {esc(str(d.vote_type))})')  # fmt: skip
        rows.append(
            f"<tr><td>{esc(d.key)}</td><td>{esc(d.ip)}</td><td>{kind}</td>"
            f"<td>{d.confidence:.2f}</td><td>{d.fit:.2f}</td><td>{d.flows}</td>"
            f'<td class="{"hot" if d.alerts else ""}">{d.alerts}</td></tr>'
        )
    charts = []
    for d in seen:
        label = d.device_type or "unknown type"
        charts.append(
            f"<h3>{esc(d.key)} <small>{esc(d.ip)} · {esc(label)} · {d.flows} flows · "
            f"{d.alerts} alerts</small></h3>{_timeline(d, monitor.bucket_s, t_lo, t_hi)}"
        )
    span = f"{_when(t_lo)} to {_when(t_hi)} UTC" if seen else "no flows"
    secs = max(summary.get("seconds", 0.0), 1e-9)
    facts = {k: summary.get(k) for k in ("packets", "flows_seen", "alerts", "unknown_devices",
                                          "flows_per_device_type", "alerts_per_device_type",
                                          "kernel_drops", "interrupted", "error")}  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>iotwatch monitor report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 3px 10px; border-bottom: 1px solid #ddd; }}
th {{ text-align: left; }} .hot {{ color: #d33; font-weight: bold; }} .unknown {{ color: #b60; }}
h3 {{ margin: 1.2em 0 0.2em; font-size: 14px; }} small {{ color: #666; font-weight: normal; }}
pre {{ background: #f6f6f6; padding: 1em; }}
</style></head><body>
<h1>iotwatch monitor</h1>
<p>{summary.get("packets", 0)} packets, {summary.get("flows_seen", 0)} flows,
<b>{summary.get("alerts", 0)} alerts</b>, {len(summary.get("unknown_devices", []))} unknown
device(s); traffic {esc(span)}; processed in {secs:.2f} s. Bundle: {esc(str(monitor.bundle.path))}
(classifier {esc(str(monitor.bundle.manifest["classifier"]["name"]))}).</p>
<h2>Devices</h2>
<table><tr><th>device</th><th>IP</th><th>type</th><th>confidence</th><th>fit</th>
<th>flows</th><th>alerts</th></tr>
{"".join(rows)}</table>
<h2>Timelines</h2>
<p>Per device, {monitor.bucket_s:g} s buckets: flows judged (grey, up) and alerts (red,
down), one time axis for all. Hover a bar for its time and count.</p>
{"".join(charts)}
<h2>Summary</h2>
<pre>{esc(json.dumps(facts, indent=2))}</pre>
</body></html>
"""


def write_report(path: Path, monitor: Monitor, summary: dict[str, Any]) -> None:
    """Write the report (a failure to write is one line)."""
    text = render(monitor, summary)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
