"""The two-step detector over a stream of flow tables (whatever their source).

``Monitor.judge(table)`` takes the tables a ``FlowStream`` hands out: flows that reached N
packets each way while still open (``end_reason`` "open") and flows that ended. Each flow is
judged once: the first time it appears (an open flow's later finished row is recognised by its
endpoints, protocol, VLAN and start, and skipped).

Per flow, in order: the recognition model's class probabilities and every modelled type's
autoencoder score are computed for the whole table at once (numpy); then each flow updates its
device (keyed by MAC, else IP):

* a device whose type is not decided yet (fewer than ``window`` flows) keeps its flows waiting
  (at most ``window`` of them); when the vote decides, they are scored by the decided type's
  autoencoder, or released unscored if the device is of an unknown type;
* a device of a known type has each flow scored by that type's autoencoder; a score above the
  threshold is an alert. Alerting flows do not enter the device's vote (an attack must not
  rewrite the identity of the device it comes from); the others do, and the vote is redone;
* a device of unknown type votes on with every flow and is scored again once placed.

The vote: a device's first decision is the vote of its first ``window`` flows (20, as
Meidan et al.); afterwards of its last ``memory`` voting flows (a device keeps its MAC, and its
type is its long-run behaviour: a quiet hour of cloud keep-alives, which two vendors' devices
share, must not flip it), and the fit test always looks at the last ``window`` flows.

Memory is bounded by the devices seen: per device the last ``memory`` votes, at most
``window`` waiting flows and a timeline of fixed size (buckets merge when it grows).
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from iotwatch.monitor.orient import LocalNetworks, bool_array, responder_first

if TYPE_CHECKING:
    from iotwatch.bundle import Bundle

TOP_FEATURES = 3
MAX_BUCKETS = 2_000  # timeline buckets kept per device before they are merged pairwise
BUCKET_S = 60.0


class AlertSink(Protocol):
    def write(self, alerts: list[dict[str, Any]]) -> None: ...


class _Flow:
    """Row ``i`` of a table's columns (lists); ``info`` builds the row's dict when needed."""

    __slots__ = ("cols", "i")

    def __init__(self, cols: dict[str, list[Any]], i: int) -> None:
        self.cols = cols
        self.i = i

    def info(self) -> dict[str, Any]:
        return {k: v[self.i] for k, v in self.cols.items()}


@dataclass
class _Waiting:
    info: dict[str, Any]
    scores: np.ndarray  # per class (inf where no model)
    x: np.ndarray


@dataclass
class DeviceState:
    """What the monitor knows of one device."""

    key: str
    mac: str | None
    ip: str
    window: int
    status: str = "pending"  # pending | known | unknown
    device_type: str | None = None
    vote_type: str | None = None
    confidence: float = 0.0
    fit: float = 0.0
    flows: int = 0
    alerts: int = 0
    first_seen: float = math.inf
    last_seen: float = -math.inf
    memory: int = 0
    probs: deque[list[float]] = field(default_factory=deque)
    accepts: deque[list[float]] = field(default_factory=deque)  # 1 / 0, nan: not scored
    prob_sum: list[float] = field(default_factory=list)
    accept_sum: list[float] = field(default_factory=list)
    accept_n: list[int] = field(default_factory=list)
    waiting: list[_Waiting] = field(default_factory=list)
    timeline: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.probs = deque(maxlen=max(self.memory, self.window))
        self.accepts = deque(maxlen=self.window)

    def add_vote(self, probs: list[float], accepts: list[float]) -> None:
        """One flow's class probabilities (kept for ``memory`` flows) and its autoencoders'
        verdicts (kept for ``window`` flows; nan where a type's model did not score it), with
        running sums of both (plain floats: a handful of classes, once per flow)."""
        if not self.prob_sum:
            self.prob_sum = [0.0] * len(probs)
            self.accept_sum = [0.0] * len(accepts)
            self.accept_n = [0] * len(accepts)
        ps, as_, an = self.prob_sum, self.accept_sum, self.accept_n
        if len(self.probs) == self.probs.maxlen:
            for j, v in enumerate(self.probs[0]):
                ps[j] -= v
        if len(self.accepts) == self.accepts.maxlen:
            for j, v in enumerate(self.accepts[0]):
                if v == v:
                    as_[j] -= v
                    an[j] -= 1
        self.probs.append(probs)
        self.accepts.append(accepts)
        for j, v in enumerate(probs):
            ps[j] += v
        for j, v in enumerate(accepts):
            if v == v:
                as_[j] += v
                an[j] += 1

    def vote(self) -> tuple[int, float, float]:
        """(winning class index, its mean probability, the share of the last ``window``
        flows its autoencoder accepted, 1 when none was scored by it)."""
        ps = self.prob_sum
        j = max(range(len(ps)), key=ps.__getitem__)
        n = self.accept_n[j]
        return j, ps[j] / len(self.probs), (self.accept_sum[j] / n if n else 1.0)

    def summary(self) -> dict[str, Any]:
        return {"mac": self.mac, "ip": self.ip, "status": self.status,
                "device_type": self.device_type, "vote": self.vote_type,
                "confidence": round(self.confidence, 4), "fit": round(self.fit, 4),
                "flows": self.flows, "alerts": self.alerts,
                "first_seen": _iso(self.first_seen), "last_seen": _iso(self.last_seen)}  # fmt: skip


_DTYPES = {pa.int32(): np.dtype("<i4"), pa.int64(): np.dtype("<i8"),
           pa.float64(): np.dtype("<f8"), pa.float32(): np.dtype("<f4")}  # fmt: skip


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric column as float64, without copies through pandas (pyarrow's copying
    ``to_numpy`` imports it: a quarter of a second of the monitor's start)."""
    if column.null_count:
        import pyarrow.compute as pc

        column = pc.fill_null(column, np.nan)
    dtype = _DTYPES[column.type]
    parts = [np.frombuffer(c.buffers()[1], dtype, count=len(c), offset=c.offset * dtype.itemsize)
             for c in column.chunks]  # fmt: skip
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0, np.float64)


def _iso(t: float) -> str | None:
    if not math.isfinite(t):
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class Monitor:
    """Judges flow tables against a bundle; alerts go to ``sink`` as they are found."""

    def __init__(
        self,
        bundle: Bundle,
        sink: AlertSink | None = None,
        *,
        local_networks: list[str] | None = None,
        top_features: int = TOP_FEATURES,
    ) -> None:
        self.bundle = bundle
        self.sink = sink
        self.classes = bundle.classes
        self.index = {t: j for j, t in enumerate(self.classes)}
        self.detectors = [bundle.detectors.get(t) for t in self.classes]
        self.thresholds = np.array([d.threshold if d else np.inf for d in self.detectors])
        self.rule = bundle.open_set
        self.columns = bundle.feature_columns
        self.n_packets = bundle.n_packets
        self.local = LocalNetworks(local_networks or [])
        self.top = top_features
        self.devices: dict[str, DeviceState] = {}
        self._open: set[tuple[Any, ...]] = set()
        self.flows_seen = 0
        self.flows_per_type: Counter[str] = Counter()
        self.flows_per_capture: Counter[str] = Counter()
        self.alerts = 0
        self.alerts_per_type: Counter[str] = Counter()
        self.bucket_s = BUCKET_S
        self.t_start = time.perf_counter()
        self.judge_seconds = 0.0

    # -- flows in -----------------------------------------------------------------------------
    def judge(self, table: pa.Table) -> int:
        """Judge a table of flows (flow schema); returns the alerts it raised."""
        if table.num_rows == 0:
            return 0
        t0 = time.perf_counter()
        table = self._first_sightings(table)
        if table.num_rows == 0:
            return 0
        table = responder_first(table, self.local, self.n_packets)
        x = np.column_stack([_numpy(table.column(c)) for c in self.columns])
        probs = self.bundle.classifier.predict_proba(x)
        cols = {c: table.column(c).to_pylist() for c in (
            "dev_mac", "dev_ip", "dev_port", "peer_mac", "peer_ip", "peer_port", "proto",
            "start", "end", "packets", "bytes", "end_reason", "capture")}  # fmt: skip
        scores = self._scores(x, cols["dev_mac"], cols["dev_ip"])
        with np.errstate(invalid="ignore"):
            accepts = np.where(np.isnan(scores), np.nan, scores <= self.thresholds).tolist()
        out: list[tuple[int, dict[str, Any], np.ndarray]] = []  # (class, alert, x row)
        prob_rows = probs.tolist()
        for i in range(len(x)):
            self._flow(_Flow(cols, i), prob_rows[i], accepts[i], scores[i], x[i], out)
        n = self._emit(out)
        self.judge_seconds += time.perf_counter() - t0
        return n

    def _scores(self, x: np.ndarray, macs: list[Any], ips: list[Any]) -> np.ndarray:
        """Autoencoder scores (flows x classes): a flow of a device already placed as type T
        is scored by T's model only (nan elsewhere), others by every type's model (their
        votes' fit needs them); inf under a type without a model."""
        c = len(self.classes)
        need = np.ones((len(x), c), bool)
        for i, (mac, ip) in enumerate(zip(macs, ips, strict=True)):
            st = self.devices.get(mac or f"ip:{ip}")
            if st is not None and st.status == "known" and st.device_type is not None:
                need[i] = False
                need[i, self.index[st.device_type]] = True
        scores = np.full((len(x), c), np.nan)
        for j, det in enumerate(self.detectors):
            if det is None:
                scores[:, j] = np.inf
                continue
            rows = np.flatnonzero(need[:, j])
            if len(rows) == len(x):
                scores[:, j] = det.score(x)
            elif len(rows):
                scores[rows, j] = det.score(x[rows])
        return scores

    def _first_sightings(self, table: pa.Table) -> pa.Table:
        """Drop finished flows already judged while open; remember the open ones judged now."""
        reason = table.column("end_reason").to_pylist()
        is_open = [r == "open" for r in reason]
        if not any(is_open) and not self._open:
            return table
        keys = zip(*(table.column(c).to_pylist() for c in
                     ("dev_ip", "dev_port", "peer_ip", "peer_port", "proto", "vlan", "start")),
                   strict=True)  # fmt: skip
        keep = np.ones(table.num_rows, bool)
        for i, key in enumerate(keys):
            # the flow meter may put either end first; the key must not depend on it
            k = (min(key[:2], key[2:4]), max(key[:2], key[2:4]), *key[4:])
            if is_open[i]:
                self._open.add(k)
            elif k in self._open:
                self._open.discard(k)
                keep[i] = False
        return table if keep.all() else table.filter(bool_array(keep))

    # -- one flow -----------------------------------------------------------------------------
    def _device(self, mac: str | None, ip: str) -> DeviceState:
        key = mac or f"ip:{ip}"
        st = self.devices.get(key)
        if st is None:
            st = DeviceState(key, mac, ip, self.rule.window, memory=self.rule.memory)
            self.devices[key] = st
        st.ip = ip
        return st

    def _flow(
        self,
        flow: _Flow,
        probs: list[float],
        accepts: list[float],
        scores: np.ndarray,
        x: np.ndarray,
        out: list[tuple[int, dict[str, Any], np.ndarray]],
    ) -> None:
        cols, i = flow.cols, flow.i
        st = self._device(cols["dev_mac"][i], cols["dev_ip"][i])
        start, end = cols["start"][i], cols["end"][i]
        self.flows_seen += 1
        self.flows_per_capture[cols["capture"][i]] += 1
        st.flows += 1
        st.first_seen = min(st.first_seen, start)
        st.last_seen = max(st.last_seen, end)
        self._tick(st, start, 0)
        if st.status == "known":
            assert st.device_type is not None
            if self._score(st, st.device_type, flow, scores, x, out):
                return  # an alert: not a vote
            accepts[self.index[st.device_type]] = 1.0  # (scored now if it was placed late)
            self._vote(st, probs, accepts)
            return
        self._vote(st, probs, accepts)
        if st.status == "pending":
            st.waiting.append(_Waiting(flow.info(), scores.copy(), x.copy()))  # not the batch
            if len(st.probs) >= self.rule.window:
                self._release(st, out)
            return
        if st.status == "known":  # an unknown device just got placed: score this flow
            assert st.device_type is not None
            self._score(st, st.device_type, flow, scores, x, out)
        else:
            self.flows_per_type["unknown"] += 1

    def _vote(self, st: DeviceState, probs: list[float], accepts: list[float]) -> None:
        st.add_vote(probs, accepts)
        if st.status == "pending":
            return  # decided by _release, which also scores (or lets go) its waiting flows
        self._decide(st)

    def _decide(self, st: DeviceState) -> None:
        j, conf, fit = st.vote()
        best = self.classes[j]
        st.vote_type, st.confidence, st.fit = best, conf, fit
        placed = self.rule.passes(best, conf, fit)
        st.device_type = best if placed else None
        st.status = "known" if placed else "unknown"

    def _release(self, st: DeviceState, out: list[tuple[int, dict[str, Any], np.ndarray]]) -> None:
        """The vote is decided: score the waiting flows (known type) or let them go."""
        if st.status == "pending":
            self._decide(st)
        waiting, st.waiting = st.waiting, []
        for w in waiting:
            if st.status == "known":
                assert st.device_type is not None
                self._score(st, st.device_type, w.info, w.scores, w.x, out)
            else:
                self.flows_per_type["unknown"] += 1

    def _score(
        self,
        st: DeviceState,
        device_type: str,
        flow: _Flow | dict[str, Any],
        scores: np.ndarray,
        x: np.ndarray,
        out: list[tuple[int, dict[str, Any], np.ndarray]],
    ) -> bool:
        """Score one flow with its device's type; True when it is an alert."""
        j = self.index[device_type]
        self.flows_per_type[device_type] += 1
        thr = self.thresholds[j]
        if not math.isfinite(thr):
            return False  # a type without a model: placed, not scored
        if scores[j] != scores[j]:  # placed since its batch was scored
            det = self.detectors[j]
            assert det is not None
            scores[j] = det.score(x[None, :])[0]
        if scores[j] <= thr:
            return False
        info = flow.info() if isinstance(flow, _Flow) else flow
        st.alerts += 1
        self.alerts += 1
        self.alerts_per_type[device_type] += 1
        self._tick(st, info["start"], 1)
        alert = {
            "time": _iso(info["end"]), "ts": info["end"],
            "device_mac": st.mac, "device_ip": st.ip, "device_type": device_type,
            "confidence": round(st.confidence, 4),
            "proto": info["proto"], "device_port": info["dev_port"],
            "peer_ip": info["peer_ip"], "peer_port": info["peer_port"],
            "peer_mac": info["peer_mac"],
            "flow_start": info["start"], "flow_end": info["end"],
            "packets": info["packets"], "bytes": info["bytes"],
            "judged": "early" if info["end_reason"] == "open" else info["end_reason"],
            "capture": info["capture"],
            "score": float(scores[j]), "threshold": float(thr),
        }  # fmt: skip
        out.append((j, alert, x))
        return True

    def _emit(self, out: list[tuple[int, dict[str, Any], np.ndarray]]) -> int:
        """Explain the alerts (top features of each type's reconstruction error) and send them."""
        if not out:
            return 0
        for j in sorted({j for j, _, _ in out}):
            det = self.detectors[j]
            assert det is not None
            col = {c: k for k, c in enumerate(det.feature_names)}
            mine = [(a, x) for jj, a, x in out if jj == j]
            xs = np.asarray([x for _, x in mine])
            tops = det.explain(xs, self.top)
            shown = det.model_view(xs)  # the values the names refer to (sorted groups sorted)
            for (a, _), top, v in zip(mine, tops, shown, strict=True):
                a["top_features"] = [
                    {"feature": name, "share": round(share, 4), "value": float(v[col[name]])}
                    for name, share in top
                ]
        alerts = [a for _, a, _ in out]
        if self.sink is not None:
            self.sink.write(alerts)
        return len(alerts)

    # -- timeline -----------------------------------------------------------------------------
    def _tick(self, st: DeviceState, t: float, alert: int) -> None:
        b = int(t // self.bucket_s)
        cell = st.timeline.setdefault(b, [0, 0])
        if alert:
            cell[1] += 1
        else:
            cell[0] += 1
        if len(st.timeline) > MAX_BUCKETS:
            self._coarser()

    def _coarser(self) -> None:
        """Double the bucket width of every device's timeline (memory stays bounded)."""
        self.bucket_s *= 2
        for st in self.devices.values():
            merged: dict[int, list[int]] = {}
            for b, (f, a) in st.timeline.items():
                cell = merged.setdefault(b // 2, [0, 0])
                cell[0] += f
                cell[1] += a
            st.timeline = merged

    # -- the end ------------------------------------------------------------------------------
    def finish(self) -> int:
        """End of the source: devices still waiting are decided on the flows they have."""
        out: list[tuple[int, dict[str, Any], np.ndarray]] = []
        for st in self.devices.values():
            if st.status == "pending" and st.probs:
                self._release(st, out)
        return self._emit(out)

    def summary(self) -> dict[str, Any]:
        """Flows seen, flows per device type, alerts, devices (unknown ones listed)."""
        devices = {k: st.summary() for k, st in sorted(self.devices.items())}
        return {
            "flows_seen": self.flows_seen,
            "flows_per_device_type": dict(sorted(self.flows_per_type.items())),
            "flows_per_capture": dict(sorted(self.flows_per_capture.items())),
            "alerts": self.alerts,
            "alerts_per_device_type": dict(sorted(self.alerts_per_type.items())),
            "devices": devices,
            "unknown_devices": [k for k, d in devices.items() if d["status"] == "unknown"],
            "pending_devices": [k for k, d in devices.items() if d["status"] == "pending"],
            "judge_seconds": round(self.judge_seconds, 3),
        }
