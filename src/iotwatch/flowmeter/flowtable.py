"""The flow table's storage: a pool of open flow records, its hash table, the kernel's output.

``_meter_kernels`` reads and writes these arrays in place (their layout is the kernels' contract:
``K.NU``/``K.NI`` record columns, first-N features per direction). One ``_Pool`` per shard of the
key space; ``engine.FlowMeter`` owns them.
"""

from __future__ import annotations

import numpy as np

from iotwatch.flowmeter import _meter_kernels as K


class _Pool:
    """One flow table: the pool of open flows, its hash table, the kernel's output buffer."""

    def __init__(self, n: int, cap: int, out_rows: int) -> None:
        self.n = n
        self.st = np.array([cap, 0, 0], np.int64)  # free slots, output rows, now
        self.alloc(cap)
        self.ou = np.zeros((out_rows, K.NU), np.uint64)
        self.oi = np.zeros((out_rows, K.NI), np.int64)
        self.of = np.zeros((out_rows, 2, n), np.int64)

    def alloc(self, cap: int, grow: bool = False) -> None:
        """(Re)allocate the pool with ``cap`` slots (keeping the flows when ``grow``) and a hash
        table twice that size."""
        n = self.n
        pu, pi = _zeros_aligned((cap, K.NU), np.uint64), _zeros_aligned((cap, K.NI), np.int64)
        pf = np.full((cap, 2, n), -1, np.int64)
        # the free slots are a stack, free[:S_FREE], its top last: slot 0 is popped first
        free = np.arange(cap - 1, -1, -1, dtype=np.int64)
        if grow:
            m = len(self.pu)
            for new, prev in zip((pu, pi, pf), (self.pu, self.pi, self.pf), strict=True):
                new[:m] = prev
            # the new slots m.. under the old pool's free slots (a sweep may have freed a few
            # before the pool grew): those are reused first
            kept = int(self.st[K.S_FREE])
            free[cap - m : cap - m + kept] = self.free[:kept]
            self.st[K.S_FREE] = cap - m + kept
        else:
            self.st[K.S_FREE] = cap
        self.pu, self.pi, self.pf, self.free = pu, pi, pf, free
        # load factor <= 0.5 keeps linear probing short
        self.ht = np.full(2 * cap, -1, np.int64)
        if grow:
            K.rehash(self.ht, pu, pi, cap)

    @property
    def state(self) -> tuple[np.ndarray, ...]:
        """The kernel arguments from the hash table on."""
        return (self.ht, self.pu, self.pi, self.pf, self.free, self.st, self.ou, self.oi,
                self.of)  # fmt: skip

    def used_slots(self) -> np.ndarray:
        """The slots of the open flows."""
        return np.flatnonzero((self.pi[:, K.I_MISC] & K.M_USED) != 0)

    def earliest_open_start(self) -> int | None:
        used = self.used_slots()
        return int(self.pi[used, K.I_T0].min()) if len(used) else None

    def release(self) -> None:
        self.pu = self.pi = self.pf = self.ht = self.free = None  # type: ignore[assignment]
        self.ou = self.oi = self.of = None  # type: ignore[assignment]


def feature_resolution(active_ns: int) -> int:
    """ns per unit of the first-N times stored in the pool: 1 (exact) while a flow's span, at
    most the active timeout, fits the packed field (2**43 ns, 2.4 h); coarser beyond (10 ns for
    a day), so any active timeout works."""
    limit = 1 << K.FEATURE_TIME_BITS
    return max(1, -(-(max(active_ns, 0) + 1) // limit))


def _zeros_aligned(shape: tuple[int, int], dtype: type, align: int = 64) -> np.ndarray:
    """Zeros whose rows start on ``align``-byte boundaries (64-byte rows: one cache line each)."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    skip = -raw.ctypes.data % align
    return raw[skip : skip + nbytes].view(dt).reshape(shape)
