"""The reorder window: packets of the last ``reorder_window`` seconds held back, so what is
metered is always in timestamp order (the global stable sort by time, whatever the chunking).

Sorted input is metered straight from the batch's arrays; only disordered chunks are sorted.
A packet more than the window behind the newest packet before it (in file order) is *late*: it is
clamped to that newest time minus the window (and counted). The rule reads the packets only,
never how they were chunked, so no packet still to come can precede a metered one and the
result is the global stable sort of the clamped times whatever the chunking. The columns are
the kernel's (``K.COLUMNS`` order, ``_DTYPES``); ``ReorderWindow.push`` hands the rows that are
due to a ``run(columns, lo, hi, perm, pend)`` callback, the flow table's ``FlowMeter._run``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Columns = tuple[np.ndarray, ...]
Run = Callable[..., None]

# The dtypes of the kernel's input columns, in ``K.COLUMNS`` order (the PacketBatch contract's).
_DTYPES = (np.int64, np.int64, np.uint8, np.uint8, np.uint64, np.uint64, np.uint64, np.uint64,
           np.uint16, np.uint16, np.uint8, np.int32, np.uint64, np.uint64, np.bool_, np.int64)  # fmt: skip


_NO_PERM = np.zeros(0, np.int64)  # meter_run reads rows in order
_NO_ROWS = tuple(np.zeros(0, dt) for dt in _DTYPES)  # no held-back rows


def _gather(c: tuple[np.ndarray, ...], idx: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """The metered rows of the kernel's columns (all of them when ``idx`` is None)."""
    return c if idx is None else tuple(x[idx] for x in c)


def _take_rows(
    pend: tuple[np.ndarray, ...], c: tuple[np.ndarray, ...], rows: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Rows of the virtual concatenation ``pend + c`` (``rows`` index it), as new columns."""
    npend = len(pend[0]) if pend else 0
    if not npend:
        return _gather(c, rows)
    mine = rows < npend
    out = []
    for p, x in zip(pend, c, strict=True):
        col = np.empty(len(rows), x.dtype)
        col[mine] = p[rows[mine]]
        col[~mine] = x[rows[~mine] - npend]
        out.append(col)
    return tuple(out)


class ReorderWindow:
    """The held-back rows (``pending``, sorted by time) and the late-packet count."""

    def __init__(self, window_ns: int) -> None:
        self.window = window_ns
        self.pending: Columns = ()
        self.late = 0  # packets later than the reorder window (clamped)
        self.newest: int | None = None  # the newest timestamp pushed (or advanced to)

    def advance(self, now: int) -> None:
        """The source's clock reached ``now``: packets pushed later are late against it."""
        self.newest = now if self.newest is None else max(self.newest, now)

    def _clamp(self, c: Columns, idx: np.ndarray | None, ts: np.ndarray, in_order: bool) -> Columns:
        """Clamp the late rows (more than the window behind the newest row before them) to
        that newest time minus the window; update ``newest``."""
        newest = self.newest
        self.newest = int(ts.max()) if newest is None else max(newest, int(ts.max()))
        if newest is None and in_order:
            return c
        if in_order:  # sorted: only a leading run can be behind the carried newest time
            if ts[0] >= newest - self.window:
                return c
            floor = np.full(len(ts), newest - self.window, np.int64)
        else:
            before = np.empty(len(ts), np.int64)
            before[0] = ts[0] if newest is None else newest
            before[1:] = ts[:-1]
            if newest is not None:
                before[0] = max(before[0], newest)
            floor = np.maximum.accumulate(before) - self.window
        late = ts < floor
        n = int(late.sum())
        if not n:
            return c
        self.late += n
        clamped = c[0].copy()
        rows = np.flatnonzero(late) if idx is None else idx[late]
        clamped[rows] = floor[late]
        return (clamped, *c[1:])

    def held(self) -> int:
        """Rows held back now."""
        return len(self.pending[0]) if self.pending else 0

    def push(
        self,
        c: Columns,
        idx: np.ndarray | None,
        run: Run,
        sweep: Callable[[bool], None],
    ) -> None:
        """Add a chunk's columns (``idx``: its metered rows, None: all): meter, through ``run``,
        every row no later packet can precede (older than the newest minus the window) and
        hold the others back; ``sweep(processed)`` after rows were metered."""
        ts = c[0] if idx is None else c[0][idx]  # timestamps of the metered rows
        if len(ts) == 0:
            return
        in_order = len(ts) < 2 or bool(np.all(ts[1:] >= ts[:-1]))
        clamped = self._clamp(c, idx, ts, in_order)
        if clamped is not c:
            c = clamped
            ts = c[0] if idx is None else c[0][idx]
            in_order = len(ts) < 2 or bool(np.all(ts[1:] >= ts[:-1]))
        pend = self.pending if self.pending and len(self.pending[0]) else ()

        if in_order and (not pend or ts[0] >= pend[0][-1]):
            # the common case: pending + batch is already sorted; meter without copying
            watermark = int(ts[-1]) - self.window
            if pend:
                p_cut = int(np.searchsorted(pend[0], watermark, side="right"))
                run(pend, 0, p_cut)
                if p_cut < len(pend[0]):
                    self.pending = tuple(
                        np.concatenate([p[p_cut:], x])
                        for p, x in zip(pend, _gather(c, idx), strict=True)
                    )
                    sweep(p_cut > 0)
                    return
            cut = int(np.searchsorted(ts, watermark, side="right"))
            run(c, 0, cut, idx)
            rest = slice(cut, None) if idx is None else idx[cut:]
            self.pending = tuple(x[rest] for x in c)
            sweep(cut > 0 or bool(pend))
            return
        # disordered, or the held-back rows interleave with the chunk: one stable time order
        # over the held-back rows and the chunk's metered rows, read through by the kernel (the
        # chunk is not copied; only the rows held back again are)
        npend = len(pend[0]) if pend else 0
        ts_all = np.concatenate([pend[0], ts]) if npend else ts
        order = np.argsort(ts_all, kind="stable")
        sorted_ts = ts_all[order]
        if idx is not None:  # chunk rows by position in the chunk, not among the metered rows
            chunk = order >= npend
            order[chunk] = npend + idx[order[chunk] - npend]
        watermark = int(sorted_ts[-1]) - self.window
        cut = int(np.searchsorted(sorted_ts, watermark, side="right"))
        run(c, 0, cut, order, pend)
        self.pending = _take_rows(pend, c, order[cut:])
        sweep(cut > 0)

    def release(self, watermark: int, run: Run) -> bool:
        """Meter the held-back rows at or before ``watermark`` (ns); True when there were any."""
        if not self.pending or not len(self.pending[0]):
            return False
        cut = int(np.searchsorted(self.pending[0], watermark, side="right"))
        if cut:
            pend = self.pending
            run(pend, 0, cut)
            self.pending = tuple(p[cut:] for p in pend)
        return cut > 0

    def flush(self, run: Run) -> None:
        """Meter every held-back row (end of capture)."""
        if self.pending and len(self.pending[0]):
            pend, self.pending = self.pending, ()
            run(pend, 0, len(pend[0]))
