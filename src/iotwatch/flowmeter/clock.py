"""The clock guard: timestamps far outside a capture's trend must not move the meter's clock.

Why: the reorder window meters a packet once the newest timestamp seen is ``reorder_window``
past it, and clamps anything older to the processed time. One record stamped years ahead (a
damaged record, a clock that jumped and came back) would release every held packet and clamp
every later packet to that future time: a few bad records would spoil the rest of the capture,
silently. The guard sits in front of the reorder window and decides, per metered packet in
file order, from the packets around it only (so the chunk size never changes the decision):

- a *break* is a timestamp more than ``jump`` (``jump_ns``) away from the previous packet's;
- **outlier run** (mid-capture): a break at packet ``a`` followed, within ``run`` packets, by
  a packet back within ``jump`` of packet ``a - 1`` (the *anchor*): packets ``a..e-1`` (at
  most ``run``) are outliers, metered at the anchor's time. A break with no return within
  ``run`` packets is a genuine jump (an NTP step, a pause in the capture): the clock follows it.
  Time that only moves forward never makes outliers (the return would have to go back).
- **start**: the first ``e <= run`` packets are outliers when all are more than ``jump`` *ahead*
  of packet ``e`` and the ``run`` packets after ``e`` stay within ``jump`` of it (a capture
  cannot start later than its own trend); they are metered at packet ``e``'s time.
- **end**: the last packets (at most ``run``) after a break are outliers when all are more than
  ``jump`` *behind* the anchor; a forward jump at the very end cannot be told from a capture
  that resumed after a pause and is kept (nothing after it can be clamped to it).

A decision needs up to ``run`` packets of lookahead (``2 * run + 1`` at the capture's start), so
the guard holds back at most that many packets when a chunk ends right after a break, and only
then; everything else passes through without a copy. Outliers are counted and reported as issues
(file, byte offset) by the caller (``FlowMeter.clock_issues``); docs/flows.md has the rule.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CLOCK_JUMP_S = 60.0  # a timestamp this far (s) from its neighbours' breaks the trend (at least)
CLOCK_RUN = 4  # the longest run of consecutive outliers recognised as such
MAX_REPORTED = 20  # outliers reported one by one per capture; the rest are counted

Columns = tuple[np.ndarray, ...]


def jump_ns(reorder_window_s: float) -> int:
    """The break threshold: ``CLOCK_JUMP_S``, and always well beyond the reorder window."""
    return int(round(max(CLOCK_JUMP_S, 2.0 * reorder_window_s) * 1e9))


def _start_rule(s: np.ndarray, final: bool, jump: int, run: int) -> int | None:
    """Leading outliers of a capture: their count ``e`` (0: none), or None when undecided."""
    n = len(s)
    if n < 2:
        return 0 if final else None
    for e in range(1, run + 1):
        if e >= n:
            return 0 if final else None  # a later packet could still be the anchor
        if not bool(np.all(s[:e] - s[e] > jump)):
            continue
        conf = s[e + 1 : e + 1 + run]
        if not bool(np.all(np.abs(conf - s[e]) <= jump)):
            continue
        if len(conf) < run and not final:
            return None  # confirmed so far, but the confirmation is not complete
        return e
    return 0


def decide(
    s: np.ndarray, first: int, final: bool, jump: int, run: int = CLOCK_RUN
) -> tuple[int, np.ndarray, np.ndarray]:
    """Apply the rule to timestamps ``s`` (original, metered packets in file order).

    ``s[:first]`` are decided packets (``first`` is 0 at the capture's start, else 1: the
    previous packet, the anchor of a break at ``s[1]``). Returns ``(decided, rows, values)``:
    the packets ``s[first:decided]`` are decided (the rest must wait for more packets), and
    the outliers among them are ``rows`` (indices into ``s``), metered at ``values``.
    """
    n = len(s)
    rows: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    scan = first  # breaks are looked for at positions >= scan (each needs s[scan - 1])
    if first == 0:
        e = _start_rule(s, final, jump, run)
        if e is None:
            return 0, np.zeros(0, np.int64), np.zeros(0, np.int64)
        if e:
            rows.append(np.arange(e, dtype=np.int64))
            vals.append(np.full(e, s[e], np.int64))
        scan = e + 1
    decided = n
    if scan < n:
        d = s[scan:] - s[scan - 1 : -1]
        breaks = scan + np.flatnonzero((d > jump) | (d < -jump))
        # the first return of each break, all at once: a packet of the next ``run`` within
        # ``jump`` of the anchor (the packet before the break)
        look = breaks[:, None] + 1 + np.arange(run)
        valid = look < n
        near = valid & (np.abs(s[np.minimum(look, n - 1)] - s[breaks - 1][:, None]) <= jump)
        has = near.any(axis=1)
        # only breaks with a return, or too close to the end to tell, need a decision here;
        # the others are genuine jumps
        todo = np.flatnonzero(has | ~valid[:, -1]) if len(breaks) else breaks
        covered = -1  # the last packet of an accepted run's return
        for j in todo.tolist():
            a = int(breaks[j])
            if a <= covered:
                continue  # inside an outlier run, or its return
            anchor = int(s[a - 1])
            if has[j]:
                e = a + 1 + int(np.argmax(near[j]))
                rows.append(np.arange(a, e, dtype=np.int64))
                vals.append(np.full(e - a, anchor, np.int64))
                covered = e
                continue
            if not final:
                decided = a  # wait for the packets that decide it
                break
            if bool(np.all(s[a:] < anchor - jump)):  # the end rule: behind the trend
                rows.append(np.arange(a, n, dtype=np.int64))
                vals.append(np.full(n - a, anchor, np.int64))
                break
    if rows:
        r, v = np.concatenate(rows), np.concatenate(vals)
        keep = r < decided
        return decided, r[keep], v[keep]
    return decided, np.zeros(0, np.int64), np.zeros(0, np.int64)


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
        if not nheld and self.prev is not None and len(ts):
            lo, hi = int(ts.min()), int(ts.max())
            if max(hi, self.prev) - min(lo, self.prev) <= self.jump:  # no break: as it is
                self.prev = int(ts[-1])
                yield c, idx
                return
        if not nheld and not len(ts):
            return
        first = 0 if self.prev is None else 1
        parts = ([np.array([self.prev], np.int64)] if first else []) + (
            [self.held[0]] if nheld else []
        )
        s = np.concatenate([*parts, ts]) if parts else ts
        decided, rows, vals = decide(s, first, final, self.jump, self.run)
        base = first + nheld  # index in s of the chunk's first metered packet
        if nheld and decided < base:  # the held-back packets are still undecided: hold on
            self._hold(c, idx, offsets, 0, keep_old=True)
            return
        if decided > first:
            self.prev = int(s[decided - 1])
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
