"""Alerts grouped into incidents: what a person reads instead of one line per alerting flow.

One real infection makes thousands of alerts in minutes; an ordinary device makes a few odd
flows a day. ``Incidents`` turns the alert stream into incidents with one rule per device
(``IncidentRule``):

* an incident **opens** when a device has ``min_alerts`` alerts within ``window_s`` (the
  current alert and those before it whose ``detected_ts`` is at most ``window_s`` earlier:
  the window is *inclusive*, alerts exactly ``window_s`` apart count together);
* every later alert of the device belongs to it while the silence before it is at most
  ``gap_s`` (*inclusive*: an alert exactly ``gap_s`` after the incident's last alert extends
  it; one strictly later starts afresh, and can open a new incident by the rule above);
* an alert in no incident is an **isolated alert**; a device with an incident is
  **compromised**.

So one odd flow a day is never an incident, a burst is one incident however long it lasts, and
a new burst after ``gap_s`` of silence is a new incident.

Times are the alerts' ``detected_ts`` (the moment the monitor could raise them; ``ts``, the
flow's end, when absent). Alerts are fed in that order per device (devices interleave freely);
one slightly out of order is taken at its own time.

Streaming: ``add`` sets ``alert["incident"]`` (the incident's id, None for an alert in no
incident *yet*) and returns the record of an incident this alert opened, so a writer can write
the record before the alert. The alerts before it in the opening window belong to that
incident too (the record's ``alert_ids`` and counts include them) but were already written
with ``"incident": None``: a reader maps them through ``alert_ids`` (the first
``MAX_ALERT_IDS``) or through the incident's device and ``start``..``end`` span (exact: every
alert of the device in that span belongs to it). ``add`` never changes an alert it was given
before.

Memory is bounded: per device the alerts of the current window (fewer than ``min_alerts``),
per incident counters capped at ``MAX_KEYS`` keys each (see ``_TopCounter``).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_ALERT_IDS = 50  # alert ids listed per incident record (the first ones)
TOP_SERVICES = 10
TOP_PEERS = 10
TOP_FEATURES = 5
MAX_KEYS = 1_000  # distinct keys a counter keeps before it drops its least counted half

PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6"}
_PORTLESS = {1, 2, 47, 50, 58}


@dataclass(frozen=True)
class IncidentRule:
    """When alerts make an incident (module docstring: edges are inclusive)."""

    min_alerts: int = 3  # alerts of one device within window_s that open an incident
    window_s: float = 600.0
    gap_s: float = 1800.0  # an incident ends after this long without an alert of its device

    def __post_init__(self) -> None:
        m = self.min_alerts
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"incident rule: min_alerts must be an integer >= 1, got {m!r}")
        for name in ("window_s", "gap_s"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or not (math.isfinite(v) and v > 0)
            ):
                raise ValueError(
                    f"incident rule: {name} must be a finite number of seconds > 0, got {v!r}"
                )


def service_of(alert: dict[str, Any]) -> str:
    """The alert's service as "tcp/6667 client": the device is the client when the peer's
    port is the lower one (the service's port), else the server of its own (lower or equal)
    port; "icmp"-like for protocols without ports."""
    proto = alert.get("proto")
    try:
        p = int(proto)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(proto)
    name = PROTO_NAMES.get(p, f"proto{p}")
    dport, pport = alert.get("device_port"), alert.get("peer_port")
    if p in _PORTLESS or dport is None or pport is None:
        return name
    if pport < dport:
        return f"{name}/{pport} client"
    return f"{name}/{dport} server"


def reason_of(alert: dict[str, Any]) -> str:
    """ "service" or "behaviour" (from ``score`` when the alert carries no ``reason``)."""
    r = alert.get("reason")
    if r:
        return str(r)
    return "service" if alert.get("score") is None else "behaviour"


def detected_ts(alert: dict[str, Any]) -> float:
    t = alert.get("detected_ts")
    if t is None:
        t = alert.get("ts")
    if t is None:
        raise ValueError("alert has neither detected_ts nor ts")
    return float(t)


def device_key(alert: dict[str, Any]) -> str:
    return alert.get("device_mac") or f"ip:{alert.get('device_ip')}"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def duration(seconds: float) -> str:
    """A span for people: "<1 s", "45 s", "3 min", "2.5 h", "3.2 d"."""
    s = max(seconds, 0.0)
    if s < 1:
        return "<1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


class _TopCounter:
    """A counter of at most ``MAX_KEYS`` keys: when full it keeps its most counted half and
    adds the rest to ``dropped`` (a burst's heavy hitters stay exact, a scan of many peers
    stays small). ``top(n)`` and ``rest(n)`` (the count outside the top n) always add up."""

    __slots__ = ("counts", "dropped")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.dropped = 0

    def add(self, key: str) -> None:
        self.counts[key] += 1
        if len(self.counts) > MAX_KEYS:
            keep = self.counts.most_common(MAX_KEYS // 2)
            self.dropped += sum(self.counts.values()) - sum(n for _, n in keep)
            self.counts = Counter(dict(keep))

    def top(self, n: int) -> dict[str, int]:
        return dict(self.counts.most_common(n))

    def rest(self, n: int) -> int:
        return self.dropped + sum(self.counts.values()) - sum(self.top(n).values())


@dataclass
class _Incident:
    id: int
    device: str
    device_mac: str | None
    device_ip: str | None
    device_type: str | None
    start: float
    end: float
    alerts: int = 0
    alert_ids: list[int] = field(default_factory=list)
    opened_by: int | None = None
    services: _TopCounter = field(default_factory=_TopCounter)
    new_services: _TopCounter = field(default_factory=_TopCounter)  # of "service" alerts
    peers: _TopCounter = field(default_factory=_TopCounter)
    features: _TopCounter = field(default_factory=_TopCounter)  # of "behaviour" alerts
    reasons: Counter[str] = field(default_factory=Counter)
    peak_score: float | None = None

    def add(self, alert: dict[str, Any], t: float) -> None:
        self.alerts += 1
        self.start = min(self.start, t)
        self.end = max(self.end, t)
        self.device_ip = alert.get("device_ip") or self.device_ip
        self.device_type = alert.get("device_type") or self.device_type
        aid = alert.get("id")
        if aid is not None and len(self.alert_ids) < MAX_ALERT_IDS:
            self.alert_ids.append(aid)
        service = service_of(alert)
        reason = reason_of(alert)
        self.services.add(service)
        self.reasons[reason] += 1
        if reason == "service":
            self.new_services.add(service)
        else:
            for f in alert.get("top_features") or []:
                name = f.get("feature") if isinstance(f, dict) else f
                if name:
                    self.features.add(str(name))
        if alert.get("peer_ip") is not None:
            self.peers.add(str(alert["peer_ip"]))
        s = alert.get("score")
        if isinstance(s, int | float) and math.isfinite(s):
            self.peak_score = s if self.peak_score is None else max(self.peak_score, s)

    def record(self) -> dict[str, Any]:
        reasons = {"service": self.reasons.get("service", 0),
                   "behaviour": self.reasons.get("behaviour", 0)}  # fmt: skip
        reasons.update((k, n) for k, n in self.reasons.items() if k not in reasons)
        rec = {
            "kind": "incident", "id": self.id, "device": self.device,
            "device_mac": self.device_mac, "device_ip": self.device_ip,
            "device_type": self.device_type,
            "start": self.start, "end": self.end,
            "start_time": iso(self.start), "end_time": iso(self.end),
            "duration_s": round(self.end - self.start, 3),
            "alerts": self.alerts, "alert_ids": list(self.alert_ids),
            "opened_by": self.opened_by,
            "services": self.services.top(TOP_SERVICES),
            "services_other": self.services.rest(TOP_SERVICES),
            "new_services": self.new_services.top(TOP_SERVICES),
            "peers": self.peers.top(TOP_PEERS),
            "peers_other": self.peers.rest(TOP_PEERS),
            "features": self.features.top(TOP_FEATURES),
            "reasons": reasons,
            "peak_score": self.peak_score,
        }  # fmt: skip
        rec["why"] = _why(rec)
        return rec


def _why(rec: dict[str, Any]) -> str:
    """One sentence: "412 alerts in 3 min: new services tcp/6667 as client (400), behaviour
    (12: size_sent_1, iat_recv_2); peers 185.244.25.235 (400), 10.0.0.9 (12)"."""
    n = rec["alerts"]
    head = f"{n} alert{'s' if n != 1 else ''} in {duration(rec['end'] - rec['start'])}"
    parts = []
    new = rec["new_services"]
    if new:
        shown = ", ".join(f"{_as_role(s)} ({c})" for s, c in list(new.items())[:3])
        more = rec["reasons"]["service"] - sum(list(new.values())[:3])
        parts.append(f"new service{'s' if len(new) > 1 else ''} {shown}"
                     + (f" and {more} more" if more > 0 else ""))  # fmt: skip
    elif rec["reasons"]["service"]:
        parts.append(f"new services ({rec['reasons']['service']})")
    nb = rec["reasons"]["behaviour"]
    if nb:
        feats = ", ".join(list(rec["features"])[:3])
        peak = f", peak score {rec['peak_score']:.3g}" if rec["peak_score"] is not None else ""
        parts.append(f"behaviour ({nb}{': ' + feats if feats else ''}{peak})")
    text = head + (": " + ", ".join(parts) if parts else "")
    if rec["peers"]:
        peers = ", ".join(f"{p} ({c})" for p, c in list(rec["peers"].items())[:3])
        others = rec["alerts"] - sum(list(rec["peers"].values())[:3])
        text += f"; peer{'s' if len(rec['peers']) > 1 else ''} {peers}"
        if others > 0:
            text += f" and {others} alert{'s' if others != 1 else ''} to others"
    return text


def _as_role(service: str) -> str:
    """ "tcp/6667 client" -> "tcp/6667 as client"."""
    name, _, role = service.partition(" ")
    return f"{name} as {role}" if role else name


@dataclass
class _Device:
    window: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)
    current: _Incident | None = None  # the device's latest incident (open or ended)
    alerts: int = 0
    in_incidents: int = 0
    incidents: int = 0


class Incidents:
    """Alerts in, incidents out (module docstring). ``add`` each alert as it is raised, then
    ``finish`` for the incidents and ``summary``/``device_summary`` for the counts."""

    def __init__(self, rule: IncidentRule | None = None) -> None:
        self.rule = rule if rule is not None else IncidentRule()
        self._devices: dict[str, _Device] = {}
        self._incidents: list[_Incident] = []

    def add(self, alert: dict[str, Any]) -> list[dict[str, Any]]:
        """Feed one alert (in ``detected_ts`` order for its device). Sets ``alert["incident"]``
        to its incident's id (None while it is isolated) and returns ``[record]`` when this
        alert opened an incident (write it before the alert), else ``[]``."""
        t = detected_ts(alert)
        key = device_key(alert)
        dev = self._devices.get(key)
        if dev is None:
            dev = self._devices[key] = _Device()
        dev.alerts += 1
        rule = self.rule
        inc = dev.current
        if inc is not None and t - inc.end <= rule.gap_s:
            inc.add(alert, t)
            dev.in_incidents += 1
            alert["incident"] = inc.id
            return []
        window = dev.window
        window.append((t, alert))
        while window and t - window[0][0] > rule.window_s:
            window.popleft()
        if len(window) < rule.min_alerts:
            alert["incident"] = None
            return []
        inc = _Incident(id=len(self._incidents) + 1, device=key,
                        device_mac=alert.get("device_mac"), device_ip=alert.get("device_ip"),
                        device_type=alert.get("device_type"), start=window[0][0], end=t,
                        opened_by=alert.get("id"))  # fmt: skip
        for tw, a in window:
            inc.add(a, tw)
        dev.in_incidents += len(window)
        window.clear()
        dev.current = inc
        dev.incidents += 1
        self._incidents.append(inc)
        alert["incident"] = inc.id
        return [inc.record()]

    def ended(self, now: float) -> list[int]:
        """Ids of the incidents whose ``gap_s`` has passed at time ``now`` (no alert of their
        device can join them any more), for a live writer that reports incidents as they
        end; call ``record(id)`` for their final records."""
        return [d.current.id for d in self._devices.values()
                if d.current is not None and now - d.current.end > self.rule.gap_s]  # fmt: skip

    def record(self, incident_id: int) -> dict[str, Any]:
        """The incident's record as it stands."""
        if not 1 <= incident_id <= len(self._incidents):
            raise KeyError(incident_id)
        return self._incidents[incident_id - 1].record()

    def finish(self) -> list[dict[str, Any]]:
        """Every incident's record, final state, ordered by start (then id). Adding more
        alerts afterwards is allowed; call again for the new state."""
        return [i.record() for i in sorted(self._incidents, key=lambda i: (i.start, i.id))]

    def device_summary(self, key: str) -> dict[str, Any]:
        """{"incidents": n, "isolated_alerts": n, "compromised": bool} (zeros for a device
        without alerts)."""
        d = self._devices.get(key) or _Device()
        return {"incidents": d.incidents, "isolated_alerts": d.alerts - d.in_incidents,
                "compromised": d.incidents > 0}  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """{"incidents", "devices_compromised" (keys, sorted), "isolated_alerts",
        "alerts_in_incidents", "rule"}."""
        devs = self._devices
        return {
            "incidents": len(self._incidents),
            "devices_compromised": sorted(k for k, d in devs.items() if d.incidents),
            "isolated_alerts": sum(d.alerts - d.in_incidents for d in devs.values()),
            "alerts_in_incidents": sum(d.in_incidents for d in devs.values()),
            "rule": asdict(self.rule),
        }
