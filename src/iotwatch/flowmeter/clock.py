"""The clock guard: timestamps far outside a capture's trend must not move the meter's clock.

Why: the reorder window meters a packet once the newest timestamp seen is ``reorder_window``
past it, and clamps anything older to the processed time. One record stamped years ahead (a
damaged record, a clock that jumped and came back) would release every held packet and clamp
every later packet to that future time: a few bad records would spoil the rest of the capture,
silently. The guard sits in front of the reorder window and decides, per metered packet in
file order, from the packets around it only (so the chunk size never changes the decision):

- the *trend's newest time* (``top``) is the latest timestamp of the packets before that were
  no outliers (what the reorder window's clock follows); a *break* is a packet more than
  ``jump`` (``jump_ns``) from it;
- **outlier run** (mid-capture): a break at packet ``a`` followed, within ``run`` packets, by a
  *return* ``e``: a packet back within ``jump`` of ``top`` (dense traffic) or, however long
  after it (sparse traffic: minutes between packets), less than half as far from ``top`` as
  every packet of ``a..e-1`` (time went back towards the trend, which time that only moves
  forward never does); *confirmed* when at least half of the ``run`` packets after ``e`` are
  near ``top`` by the same test (else the trend so far, not the run, is the odd one out).
  Packets ``a..e-1`` are outliers, metered at ``top``. A break with no confirmed return is a
  genuine jump (an NTP step, a pause): the clock follows it forward; behind, it is late.
- **start**: the first ``e <= run`` packets are outliers when all are more than ``jump``
  *ahead* of packet ``e`` and at least half the ``2 * run`` packets after ``e`` are near it
  (a capture cannot start later than its own trend); they are metered at packet ``e``'s time.
  Leading packets *behind* the rest are kept (time that only moves forward).
- **end**: the last packets (at most ``run``) after a break with no return are outliers when
  all are more than ``jump`` *behind* ``top``; a forward jump at the very end cannot be told
  from a capture that resumed after a pause and is kept (nothing after it can be clamped to it).

A decision needs up to ``2 * run`` packets of lookahead (``3 * run + 1`` at the capture's
start), so the guard holds back at most that many packets when a chunk ends right after a
break, and only then; everything else passes through without a copy. Outliers are counted and reported as issues
(file, byte offset) by the caller (``FlowMeter.clock_issues``); docs/flows.md has the rule.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CLOCK_JUMP_S = 60.0  # a timestamp this far (s) from its neighbours' breaks the trend (at least)
CLOCK_RUN = 8  # the longest run of consecutive outliers recognised as such (was 4)
MAX_REPORTED = 20  # outliers reported one by one per capture; the rest are counted

Columns = tuple[np.ndarray, ...]


def jump_ns(reorder_window_s: float) -> int:
    """The break threshold: ``CLOCK_JUMP_S``, and always well beyond the reorder window."""
    return int(round(max(CLOCK_JUMP_S, 2.0 * reorder_window_s) * 1e9))


def _returns(dist: np.ndarray, back: np.ndarray, runmin: np.ndarray, jump: int) -> np.ndarray:
    """Which packets are back on the trend of an anchor: ``dist`` their distance to it,
    ``back`` how far they are behind it, ``runmin`` the smallest distance of the run before them.

    Back within ``jump`` of the anchor (dense traffic), or, however long after it (sparse
    traffic), not more than ``jump`` behind it and less than half as far from it as every packet
    of the run: time went back towards the anchor, which time that only moves forward never does.
    """
    return (dist <= jump) | ((back <= jump) & (2 * dist < runmin))


def _start_rule(s: np.ndarray, final: bool, jump: int, run: int) -> int | None:
    """Leading outliers of a capture: their count ``e`` (0: none), or None when undecided.

    The first ``e <= run`` packets are outliers when all are more than ``jump`` ahead of packet
    ``e`` and most of the ``2 * run`` packets after ``e`` are on ``e``'s trend (``_returns``
    with ``e`` as the anchor: a few more outliers among them do not hide it).
    """
    n = len(s)
    if n < 2:
        return 0 if final else None
    conf_n = 2 * run
    for e in range(1, run + 1):
        if e >= n:
            return 0 if final else None  # a later packet could still be the anchor
        ahead = s[:e] - s[e]
        if not bool(np.all(ahead > jump)):
            continue
        conf = s[e + 1 : e + 1 + conf_n]
        if len(conf) < conf_n and not final:
            return None  # the confirmation is not complete
        d = conf - s[e]
        ok = _returns(np.abs(d), -d, np.full(len(d), int(ahead.min())), jump)
        if 2 * int(ok.sum()) >= len(conf):
            return e
    return 0


def decide(
    s: np.ndarray, first: int, final: bool, jump: int, run: int = CLOCK_RUN,
    top: int | None = None,
) -> tuple[int, np.ndarray, np.ndarray, int | None]:  # fmt: skip
    """Apply the rule to timestamps ``s`` (original, metered packets in file order).

    ``s[:first]`` are decided packets (``first`` is 0 at the capture's start, else 1: the
    previous packet) and ``top`` the trend's newest time so far (the latest timestamp of the
    decided packets that were no outliers). Returns ``(decided, rows, values, top)``: the
    packets ``s[first:decided]`` are decided (the rest must wait for more packets), the
    outliers among them are ``rows`` (indices into ``s``), metered at ``values``, and ``top``
    is the trend's newest time after them.
    """
    n = len(s)
    rows: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    empty = np.zeros(0, np.int64)
    pos = first  # the first packet not decided yet
    if first == 0:
        if n == 0:
            return 0, empty, empty, top
        e = _start_rule(s, final, jump, run)
        if e is None:
            return 0, empty, empty, top
        if e:
            rows.append(np.arange(e, dtype=np.int64))
            vals.append(np.full(e, s[e], np.int64))
        top, pos = int(s[e]), e + 1
    assert top is not None
    decided = n
    while pos < n:
        # the trend's newest time before each packet, as if no packet from pos on were an
        # outlier (recomputed after each run found: an outlier never raises it)
        t = np.maximum.accumulate(np.concatenate([np.array([top], np.int64), s[pos : n - 1]]))
        far = pos + np.flatnonzero(np.abs(s[pos:] - t) > jump)
        if not len(far):
            top, pos = max(top, int(s[pos:].max())), n
            break
        # each break's candidate returns, all at once (``_returns``: back near the trend)
        look = far[:, None] + 1 + np.arange(run)
        valid = look < n
        ref = t[far - pos][:, None]
        d = s[np.minimum(look, n - 1)] - ref
        runmin = np.minimum.accumulate(np.abs(s[np.minimum(look - 1, n - 1)] - ref), axis=1)
        near = valid & _returns(np.abs(d), -np.abs(d), runmin, jump)
        # only breaks with a return, or too close to the end to tell, need a decision here;
        # the others are genuine jumps (a step the trend follows, or a late packet)
        todo = np.flatnonzero(near.any(axis=1) | ~valid[:, -1])
        nxt = n  # where to go on from
        for j in todo.tolist():
            a = int(far[j])
            r = int(t[a - pos])
            e = wait = 0
            for k in np.flatnonzero(near[j]).tolist():
                # confirmed: at least half the ``run`` packets after the return are near the
                # trend too (else the trend so far, not the run, is the odd one out)
                c = a + 2 + k
                conf = s[c : c + run]
                if len(conf) < run and not final:
                    wait = 1
                    break
                dc = np.abs(conf - r)
                ok = _returns(dc, -dc, np.full(len(dc), runmin[j, k]), jump)
                if 2 * int(ok.sum()) >= len(conf):
                    e = c - 1
                    break
            if e:
                rows.append(np.arange(a, e, dtype=np.int64))
                vals.append(np.full(e - a, r, np.int64))
                top = max(r, int(s[pos:a].max())) if a > pos else r
                top, nxt = max(top, int(s[e])), e + 1
                break
            if wait or (not final and not valid[j, -1]):
                decided = nxt = a  # wait for the packets that decide it
                if a > pos:
                    top = max(top, int(s[pos:a].max()))
                break
            if final and not valid[j, -1] and bool(np.all(s[a:] < r - jump)):
                # the end rule: the last packets, all behind the trend
                rows.append(np.arange(a, n, dtype=np.int64))
                vals.append(np.full(n - a, r, np.int64))
                if a > pos:
                    top = max(top, int(s[pos:a].max()))
                decided, nxt = n, n
                break
        else:
            top = max(top, int(s[pos:].max()))
        if nxt == n or decided < n:
            break
        pos = nxt
    if rows:
        rr, v = np.concatenate(rows), np.concatenate(vals)
        keep = rr < decided
        return decided, rr[keep], v[keep], top
    return decided, empty, empty, top


class ClockGuard:
    """The rule applied to a stream of metered packets (see the module's docstring).

    ``admit(columns, idx, offsets)`` yields what the reorder window may meter now, as
    ``(columns, idx)`` pairs in file order: held-back packets once decided, then the chunk
    (its outliers' timestamps replaced; its last packets held back when still undecided).
    """

    def __init__(self, jump: int, run: int = CLOCK_RUN) -> None:
        self.jump = int(jump)
        self.run = int(run)
        self.prev: int | None = None  # original timestamp of the last decided packet
        self.top: int | None = None  # the trend's newest time (decided packets, no outliers)
        self.held: Columns = ()  # undecided packets (metered rows only, copies)
        self.held_off = np.zeros(0, np.int64)
        self.count = 0  # outliers found
        self.reports: list[tuple[int, int, int]] = []  # (offset, timestamp, metered at)

    def pending(self) -> int:
        """Packets held back now."""
        return len(self.held[0]) if self.held else 0

    def _record(self, offsets: np.ndarray, ts: np.ndarray, vals: np.ndarray) -> None:
        self.count += len(vals)
        room = MAX_REPORTED - len(self.reports)
        for o, t, v in zip(offsets[:room].tolist(), ts[:room].tolist(), vals[:room].tolist(),
                           strict=True):  # fmt: skip
            self.reports.append((int(o), int(t), int(v)))

    def admit(
        self, c: Columns, idx: np.ndarray | None, offsets: np.ndarray, final: bool = False
    ) -> Iterator[tuple[Columns, np.ndarray | None]]:
        """Decide the chunk's metered packets (``idx``: their rows, None: all) after the
        held-back ones; yield the ``(columns, idx)`` to meter now, in order."""
        ts = c[0] if idx is None else c[0][idx]
        nheld = self.pending()
        if not nheld and self.top is not None and len(ts):
            lo, hi = int(ts.min()), int(ts.max())
            # every packet within ``jump`` of the trend's newest time before it: as it is
            if max(hi, self.top) - min(lo, self.top) <= self.jump:
                self.prev, self.top = int(ts[-1]), max(self.top, hi)
                yield c, idx
                return
        if not nheld and not len(ts):
            return
        first = 0 if self.prev is None else 1
        parts = ([np.array([self.prev], np.int64)] if first else []) + (
            [self.held[0]] if nheld else []
        )
        s = np.concatenate([*parts, ts]) if parts else ts
        decided, rows, vals, top = decide(s, first, final, self.jump, self.run, self.top)
        base = first + nheld  # index in s of the chunk's first metered packet
        if nheld and decided < base:  # the held-back packets are still undecided: hold on
            self._hold(c, idx, offsets, 0, keep_old=True)
            return
        if decided > first:
            self.prev, self.top = int(s[decided - 1]), top
        if nheld:  # the held-back packets, all decided now
            mine = rows < base
            held, self.held = self.held, ()
            if mine.any():
                t = held[0].copy()
                k = rows[mine] - first
                self._record(self.held_off[k], t[k], vals[mine])
                t[k] = vals[mine]
                held = (t, *held[1:])
            self.held_off = np.zeros(0, np.int64)
            yield held, None
        # the chunk: its decided prefix (outliers replaced), the rest held back
        q = decided - base  # metered packets of the chunk decided
        rows_c, vals_c = rows[rows >= base] - base, vals[rows >= base]
        if len(rows_c):
            pos = rows_c if idx is None else idx[rows_c]
            self._record(offsets[pos], c[0][pos], vals_c)
            t = c[0].copy()
            t[pos] = vals_c
            c = (t, *c[1:])
        if q >= len(ts):
            if len(ts):
                yield c, idx
            return
        if q > 0:
            r = q if idx is None else int(idx[q])  # first row held back
            yield tuple(x[:r] for x in c), (None if idx is None else idx[:q])
        self._hold(c, idx, offsets, q)

    def _hold(
        self, c: Columns, idx: np.ndarray | None, offsets: np.ndarray, q: int,
        keep_old: bool = False,
    ) -> None:  # fmt: skip
        """Hold back the chunk's metered packets from the ``q``-th on (after the held ones)."""
        rows = np.arange(q, len(c[0])) if idx is None else idx[q:]
        new = tuple(x[rows] for x in c)
        off = np.asarray(offsets)[rows].astype(np.int64)
        if keep_old and self.held:
            new = tuple(np.concatenate([h, x]) for h, x in zip(self.held, new, strict=True))
            off = np.concatenate([self.held_off, off])
        self.held, self.held_off = new, off

    def flush(self) -> Iterator[tuple[Columns, np.ndarray | None]]:
        """End of the stream: decide the held-back packets (the end rule) and yield them."""
        if not self.pending():
            return
        empty = tuple(h[:0] for h in self.held)
        yield from self.admit(empty, None, np.zeros(0, np.int64), final=True)
