"""Numba kernels of the flow meter: a streaming flow table over packets in timestamp order.

State lives in numpy arrays owned by ``meter.FlowMeter`` (so it survives between chunks and the
kernels stay pure functions with few, fixed signatures that ``cache=True`` compiles once):

- a *pool* of flow records: ``pu`` (uint64 columns ``U_*``: hash, key, MACs) and ``pi`` (int64
  columns ``I_*``: times, counters, packed small fields), one cache line each per flow; ``pf``
  (int64 ``[slot, direction, rank]``: the first N packets' size and time, packed by ``_feature``,
  -1 = absent);
  free slots are a stack in ``free``;
- ``ht``: an open-addressing (linear probing) hash table of pool slots, -1 = empty, deleted with
  backward shift (no tombstones, so probe lengths stay short however many flows come and go);
- output buffers with the pool's layout that receive finished flows (the end reason is packed
  into ``I_MISC`` there).

The kernels stop early (and say where) when the pool has no free slot or the output buffer is
full; the Python side grows or drains them and calls again, so no kernel ever allocates.
"""

from __future__ import annotations

import numpy as np

from iotwatch.flowmeter._jit import njit, use_aot

# A flow record is two 64-byte rows, one per array, each exactly one cache line (the pool is
# allocated 64-byte aligned): metering a packet touches the hash table, these two lines and,
# for the first N packets of a direction, one line of each feature array. Everything a packet
# compares or updates is packed into them.
# uint64 record columns: the key (hash, endpoint a and b addresses, ports/protocol/VLAN) and MACs
U_H, U_A_HI, U_A_LO, U_B_HI, U_B_LO, U_SMALL, U_MAC_A, U_MAC_B = range(8)
NU = 8
# int64 record columns: times, counters, the first packet's file order, packed small fields
I_T0, I_TL, I_PAB, I_PBA, I_BAB, I_BBA, I_SEQ0, I_MISC = range(8)
NI = 8
# U_SMALL: port a (bits 0-15), port b (16-31), protocol (32-39), key VLAN (40-55)
# I_MISC: TCP close flags (bits 0-2), initiator is a (3), slot used (4), IP version (8-15),
# end reason in the output buffers (16-23), VLAN seen, signed (32-63)
_F_FA, _F_FB, _F_RST = 1, 2, 4
M_INIT_A, M_USED = 8, 16
M_IPVER_SHIFT, M_REASON_SHIFT, M_VLAN_SHIFT = 8, 16, 32

# the packet columns meter_run reads, in this order (dtypes: meter._DTYPES)
COLUMNS = ("ts", "size", "ipver", "proto", "shi", "slo", "dhi", "dlo", "sport", "dport", "flags",
           "vlan", "smac", "dmac", "frag", "seq")  # fmt: skip
(C_TS, C_SIZE, C_IPVER, C_PROTO, C_SHI, C_SLO, C_DHI, C_DLO, C_SPORT, C_DPORT, C_FLAGS, C_VLAN,
 C_SMAC, C_DMAC, C_FRAG, C_SEQ) = range(16)  # fmt: skip

# state scalars (st array)
S_FREE, S_OUT, S_NOW = range(3)

IDLE, ACTIVE, CLOSE, EOC = 0, 1, 2, 3  # indices into schema.END_REASONS

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def _mix(h: np.uint64) -> np.uint64:
    """splitmix64 finaliser: every input bit moves every output bit (keys differ in few bits)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


@njit(cache=True, nogil=True)
def _past(elapsed: int, timeout: int, incl: bool) -> bool:
    """A timeout has fired after ``elapsed`` ns: ``>`` by default, ``>=`` when inclusive."""
    return elapsed >= timeout if incl else elapsed > timeout


@njit(cache=True, nogil=True)
def _closed(misc: int) -> bool:
    return (misc & _F_RST) != 0 or ((misc & _F_FA) != 0 and (misc & _F_FB) != 0)


@njit(cache=True, nogil=True)
def _ht_delete(ht: np.ndarray, pu: np.ndarray, f: int) -> None:
    """Remove slot ``f`` from the table, shifting later entries of its probe run back."""
    mask = ht.shape[0] - 1
    i = np.int64(pu[f, U_H] & np.uint64(mask))
    while ht[i] != f:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        g = ht[j]
        if g < 0:
            break
        k = np.int64(pu[g, U_H] & np.uint64(mask))
        # g stays when its home k lies cyclically in (i, j]: moving it to i would hide it
        if i <= j:
            if i < k <= j:
                continue
        elif k > i or k <= j:
            continue
        ht[i] = g
        i = j
    ht[i] = -1


@njit(cache=True, nogil=True)
def _ht_insert(ht: np.ndarray, h: np.uint64, f: int) -> None:
    mask = ht.shape[0] - 1
    i = np.int64(h & np.uint64(mask))
    while ht[i] >= 0:
        i = (i + 1) & mask
    ht[i] = f


@njit(cache=True, nogil=True)
def rehash(ht: np.ndarray, pu: np.ndarray, pi: np.ndarray, used_upto: int) -> None:
    """Fill an empty (all -1) table with the used pool slots below ``used_upto``."""
    for f in range(used_upto):
        if pi[f, I_MISC] & M_USED:
            _ht_insert(ht, pu[f, U_H], f)


FEATURE_SIZE_BITS = 20
FEATURE_SIZE_MAX = (1 << FEATURE_SIZE_BITS) - 1  # larger sizes are stored as this
FEATURE_TIME_BITS = 63 - FEATURE_SIZE_BITS  # time since the flow's start, in resolution units


@njit(cache=True, nogil=True)
def _feature(size: int, since_start: int, res: int) -> np.int64:
    """One first-N packet as one int64: time since the flow's first packet (in ``res`` ns
    units, ``feature_resolution``) above the size (saturated at ``FEATURE_SIZE_MAX``); >= 0."""
    sz = min(max(size, 0), FEATURE_SIZE_MAX)
    return np.int64(((since_start // res) << FEATURE_SIZE_BITS) | sz)


@njit(cache=True, nogil=True)
def _emit(
    f: int,
    reason: int,
    pu: np.ndarray,
    pi: np.ndarray,
    pf: np.ndarray,
    ou: np.ndarray,
    oi: np.ndarray,
    of: np.ndarray,
    free: np.ndarray,
    st: np.ndarray,
) -> None:
    """Copy flow ``f`` to the output buffer (close beats any other reason) and push its slot on
    the free stack (``free[:S_FREE]``, top last)."""
    k = st[S_OUT]
    # element loops, not slice assignment: same speed, and a fraction of the compile time
    for j in range(NU):
        ou[k, j] = pu[f, j]
    for j in range(NI):
        oi[k, j] = pi[f, j]
    for d in range(2):
        for r in range(pf.shape[2]):
            of[k, d, r] = pf[f, d, r]
    misc = pi[f, I_MISC]
    why = CLOSE if _closed(misc) else reason
    oi[k, I_MISC] = (misc & ~np.int64(0xFF << M_REASON_SHIFT)) | (np.int64(why) << M_REASON_SHIFT)
    st[S_OUT] = k + 1
    pi[f, I_MISC] = misc & ~np.int64(M_USED)
    free[st[S_FREE]] = f
    st[S_FREE] += 1


@njit(cache=True, nogil=True)
def _read(c: tuple, i: int) -> tuple:
    """Row ``i`` of the ``COLUMNS`` arrays ``c`` as scalars."""
    return (c[C_TS][i], c[C_SIZE][i], c[C_IPVER][i], c[C_PROTO][i], c[C_SHI][i], c[C_SLO][i],
            c[C_DHI][i], c[C_DLO][i], c[C_SPORT][i], c[C_DPORT][i], c[C_FLAGS][i], c[C_VLAN][i],
            c[C_SMAC][i], c[C_DMAC][i], c[C_FRAG][i], c[C_SEQ][i])  # fmt: skip


@njit(cache=True, nogil=True)
def meter_run(
    cols: tuple,
    pcols: tuple,
    npend: int,
    perm: np.ndarray,
    begin: int,
    end: int,
    keep_proto: np.ndarray,
    params: np.ndarray,
    shard: int,
    ht: np.ndarray,
    pu: np.ndarray,
    pi: np.ndarray,
    pf: np.ndarray,
    free: np.ndarray,
    st: np.ndarray,
    ou: np.ndarray,
    oi: np.ndarray,
    of: np.ndarray,
) -> int:
    """Meter packets ``begin:end`` in timestamp order (rows ``perm[begin:end]`` when ``perm`` is
    not empty); return the index reached.

    Rows are those of ``pcols`` (``npend`` held-back rows) followed by those of ``cols`` (the
    chunk), both tuples of the ``COLUMNS`` arrays: the reorder window's rows and a new chunk
    are metered together without copying the chunk.

    With ``params[7]`` = S shards the flow table is split by key hash into S independent
    tables: this call meters only the flows of ``shard`` into the pool it is given, so S threads
    can meter the same rows at once (the flows, and so the table, are the same).

    Less than ``end`` means the pool has no free slot or the output buffer is full: grow/drain
    and call again from there. ``params``: idle, active (ns), timeout_inclusive, vlan_in_key,
    tcp_close_ends_flow, drop non-first fragments, N, shards, feature time resolution (ns).
    """
    idle, active = params[0], params[1]
    shards = np.uint64(params[7])
    sharded = params[7] > 1
    incl, vlan_key, close_ends, drop_nf = (
        params[2] != 0,
        params[3] != 0,
        params[4] != 0,
        params[5] != 0,
    )
    n = params[6]
    res = params[8]
    mask = ht.shape[0] - 1
    out_cap = oi.shape[0]
    use_perm = perm.shape[0] > 0
    for ii in range(begin, end):
        # rows are read through ``perm`` when the chunk was out of order: sorting an index is
        # cheaper than permuting sixteen columns (the input is nearly sorted: reads stay local)
        i = perm[ii] if use_perm else ii
        if i < npend:
            (t, sz, ipv, pr, sh, sl, dh, dl, sp16, dp16, fl8, vl32, smac, dmac, frag,
             sq) = _read(pcols, i)  # fmt: skip
        else:
            (t, sz, ipv, pr, sh, sl, dh, dl, sp16, dp16, fl8, vl32, smac, dmac, frag,
             sq) = _read(cols, i - npend)  # fmt: skip
        if not keep_proto[pr]:
            continue
        sp = np.uint64(sp16)
        dp = np.uint64(dp16)
        if drop_nf and frag and sp == 0 and dp == 0:
            continue
        if st[S_FREE] == 0 or st[S_OUT] >= out_cap:
            return ii
        # endpoint a = the smaller (ip, port): the key does not depend on the direction
        a_src = sh < dh or (sh == dh and (sl < dl or (sl == dl and sp <= dp)))
        if a_src:
            ah, al, ap, bh, bl, bp = sh, sl, sp, dh, dl, dp
        else:
            ah, al, ap, bh, bl, bp = dh, dl, dp, sh, sl, sp
        kv = np.int64(vl32) if vlan_key else np.int64(0)
        small = ap | (bp << np.uint64(16)) | (np.uint64(pr) << np.uint64(32))
        small |= np.uint64(kv & 0xFFFF) << np.uint64(40)
        h = _mix(al + _GOLD)
        h = _mix(h ^ bl)
        h = _mix(h ^ ah)
        h = _mix(h ^ bh)
        h = _mix(h ^ small)
        # the shard comes from the hash's high half; the low bits index the table
        if sharded and np.int64((h >> np.uint64(32)) % shards) != shard:
            continue
        pos = np.int64(h & np.uint64(mask))
        f = -1
        while True:
            g = ht[pos]
            if g < 0:
                break
            if (
                pu[g, U_H] == h
                and pu[g, U_A_LO] == al
                and pu[g, U_B_LO] == bl
                and pu[g, U_A_HI] == ah
                and pu[g, U_B_HI] == bh
                and pu[g, U_SMALL] == small
            ):
                f = g
                break
            pos = (pos + 1) & mask
        fl = np.int64(fl8)
        tcp = pr == 6
        syn = tcp and (fl & 0x02) != 0
        ack = (fl & 0x10) != 0
        if f >= 0:
            gap = t - pi[f, I_TL]
            age = t - pi[f, I_T0]
            cut = -1
            if _past(gap, idle, incl):
                cut = IDLE
            elif _past(age, active, incl):
                cut = ACTIVE
            elif close_ends and syn and not ack and _closed(pi[f, I_MISC]):
                cut = CLOSE  # a pure SYN after FIN both ways / RST: a new connection
            if cut >= 0:
                _ht_delete(ht, pu, f)
                _emit(f, cut, pu, pi, pf, ou, oi, of, free, st)
                f = -1
        vl = np.int64(vl32)
        if f < 0:
            st[S_FREE] -= 1
            f = free[st[S_FREE]]
            pu[f, U_H] = h
            pu[f, U_A_HI] = ah
            pu[f, U_A_LO] = al
            pu[f, U_B_HI] = bh
            pu[f, U_B_LO] = bl
            pu[f, U_SMALL] = small
            pu[f, U_MAC_A] = 0
            pu[f, U_MAC_B] = 0
            pi[f, I_T0] = t
            pi[f, I_PAB] = 0
            pi[f, I_PBA] = 0
            pi[f, I_BAB] = 0
            pi[f, I_BBA] = 0
            pi[f, I_SEQ0] = sq
            # the initiator sent the first packet, unless that packet is a SYN-ACK (its answer)
            init_a = M_INIT_A if a_src != (syn and ack) else 0
            pi[f, I_MISC] = (
                M_USED | init_a | (np.int64(ipv) << M_IPVER_SHIFT) | (vl << M_VLAN_SHIFT)
            )
            for d in range(2):
                for r in range(n):
                    pf[f, d, r] = -1
            _ht_insert(ht, h, f)
        pi[f, I_TL] = t
        d = 0 if a_src else 1
        c = pi[f, I_PAB + d]
        if c < n:
            pf[f, d, c] = _feature(sz, t - pi[f, I_T0], res)
        pi[f, I_PAB + d] = c + 1
        pi[f, I_BAB + d] += sz
        misc = pi[f, I_MISC]
        if tcp:
            if fl & 0x01:
                misc |= _F_FA if a_src else _F_FB
            if fl & 0x04:
                misc |= _F_RST
        if vl > (misc >> M_VLAN_SHIFT):  # the highest VLAN id seen on the flow
            misc = (misc & np.int64(0xFFFFFFFF)) | (vl << M_VLAN_SHIFT)
        pi[f, I_MISC] = misc
        if a_src:
            ma, mb = smac, dmac
        else:
            ma, mb = dmac, smac
        if ma > pu[f, U_MAC_A]:
            pu[f, U_MAC_A] = ma
        if mb > pu[f, U_MAC_B]:
            pu[f, U_MAC_B] = mb
        st[S_NOW] = t
    return end


@njit(cache=True, nogil=True)
def expire(
    now: int,
    idle: int,
    incl: bool,
    used_upto: int,
    ht: np.ndarray,
    pu: np.ndarray,
    pi: np.ndarray,
    pf: np.ndarray,
    free: np.ndarray,
    st: np.ndarray,
    ou: np.ndarray,
    oi: np.ndarray,
    of: np.ndarray,
) -> int:
    """Emit the flows idle at ``now``; return the slot reached (less than ``used_upto`` when the
    output buffer is full).

    Sweeping keeps the pool to the flows active within the idle timeout; the result is the same
    as finding the gap when the flow's next packet comes (or at the end of the capture).
    """
    out_cap = oi.shape[0]
    for f in range(used_upto):
        if (pi[f, I_MISC] & M_USED) == 0 or not _past(now - pi[f, I_TL], idle, incl):
            continue
        if st[S_OUT] >= out_cap:
            return f
        _ht_delete(ht, pu, f)
        _emit(f, IDLE, pu, pi, pf, ou, oi, of, free, st)
    return used_upto


@njit(cache=True, nogil=True)
def emit_slots(
    slots: np.ndarray,
    begin: int,
    now: int,
    idle: int,
    incl: bool,
    ht: np.ndarray,
    pu: np.ndarray,
    pi: np.ndarray,
    pf: np.ndarray,
    free: np.ndarray,
    st: np.ndarray,
    ou: np.ndarray,
    oi: np.ndarray,
    of: np.ndarray,
) -> int:
    """End the open flows ``slots[begin:]`` in that order at the end of the capture (idle at
    ``now``, else end of capture); return the index reached (less than the
    length when the output buffer is full). The hash table is left alone: no packet follows."""
    out_cap = oi.shape[0]
    for k in range(begin, slots.shape[0]):
        if st[S_OUT] >= out_cap:
            return k
        f = slots[k]
        why = IDLE if _past(now - pi[f, I_TL], idle, incl) else EOC
        _emit(f, why, pu, pi, pf, ou, oi, of, free, st)
    return slots.shape[0]


# -- text of addresses, written straight into Arrow string buffers ------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


@njit(cache=True, nogil=True)
def _put_dec(buf: np.ndarray, p: int, v: int) -> int:
    """Write 0..255 in decimal at ``p``; return the new position."""
    if v >= 100:
        buf[p] = 48 + v // 100
        p += 1
    if v >= 10:
        buf[p] = 48 + (v // 10) % 10
        p += 1
    buf[p] = 48 + v % 10
    return p + 1


@njit(cache=True, nogil=True)
def _put_v4(buf: np.ndarray, p: int, a: int) -> int:
    for q in range(4):
        p = _put_dec(buf, p, (a >> (24 - 8 * q)) & 0xFF)
        if q < 3:
            buf[p] = 46  # '.'
            p += 1
    return p


@njit(cache=True, nogil=True)
def format_ips(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Addresses as Arrow string buffers (offsets int32, utf-8 bytes), exactly as glibc's
    ``inet_ntop`` writes them (what ``socket.inet_ntop`` returns); IPv4-mapped ones
    (``::ffff:a.b.c.d``) as plain dotted quads."""
    n = hi.shape[0]
    buf = np.empty(n * 40, np.uint8)
    off = np.empty(n + 1, np.int32)
    words = np.empty(8, np.int64)
    p = 0
    for r in range(n):
        off[r] = p
        h, v = hi[r], lo[r]
        if h == 0 and (v >> np.uint64(32)) == np.uint64(0xFFFF):
            p = _put_v4(buf, p, np.int64(v & np.uint64(0xFFFFFFFF)))
            continue
        for w in range(4):
            words[w] = np.int64((h >> np.uint64(48 - 16 * w)) & np.uint64(0xFFFF))
            words[w + 4] = np.int64((v >> np.uint64(48 - 16 * w)) & np.uint64(0xFFFF))
        # the first longest run (>= 2) of zero words becomes "::" (RFC 5952, glibc)
        best_b, best_l, cur_b, cur_l = -1, 0, -1, 0
        for w in range(8):
            if words[w] == 0:
                if cur_b == -1:
                    cur_b, cur_l = w, 1
                else:
                    cur_l += 1
            elif cur_b != -1:
                if best_b == -1 or cur_l > best_l:
                    best_b, best_l = cur_b, cur_l
                cur_b = -1
        if cur_b != -1 and (best_b == -1 or cur_l > best_l):
            best_b, best_l = cur_b, cur_l
        if best_b != -1 and best_l < 2:
            best_b = -1
        for w in range(8):
            if best_b != -1 and best_b <= w < best_b + best_l:
                if w == best_b:
                    buf[p] = 58  # ':'
                    p += 1
                continue
            if w != 0:
                buf[p] = 58
                p += 1
            if w == 6 and best_b == 0 and (best_l == 6 or (best_l == 5 and words[5] == 0xFFFF)):
                # IPv4-compatible (::a.b.c.d): glibc writes the last 32 bits as a dotted quad
                p = _put_v4(buf, p, np.int64(v & np.uint64(0xFFFFFFFF)))
                break
            x = words[w]
            started = False
            for q in range(4):
                d = (x >> (12 - 4 * q)) & 0xF
                if d or started or q == 3:
                    buf[p] = _HEX[d]
                    p += 1
                    started = True
        else:
            if best_b != -1 and best_b + best_l == 8:
                buf[p] = 58
                p += 1
    off[n] = p
    return off, buf[:p]


@njit(cache=True, nogil=True)
def format_macs(mac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """48-bit MACs as ``aa:bb:cc:dd:ee:ff`` Arrow string buffers (0 gives an empty string)."""
    n = mac.shape[0]
    buf = np.empty(n * 17, np.uint8)
    off = np.empty(n + 1, np.int32)
    p = 0
    for r in range(n):
        off[r] = p
        m = np.int64(mac[r])
        if m == 0:
            continue
        for b in range(6):
            x = (m >> (40 - 8 * b)) & 0xFF
            if b:
                buf[p] = 58
                p += 1
            buf[p] = _HEX[x >> 4]
            buf[p + 1] = _HEX[x & 0xF]
            p += 2
    off[n] = p
    return off, buf[:p]


@njit(cache=True, nogil=True)
def gather_strings(
    off: np.ndarray, data: np.ndarray, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``values[idx]`` for Arrow string buffers (offsets, bytes); ``idx < 0`` gives ""."""
    n = idx.shape[0]
    out_off = np.empty(n + 1, np.int32)
    total = 0
    for r in range(n):
        out_off[r] = total
        j = idx[r]
        if j >= 0:
            total += off[j + 1] - off[j]
    out_off[n] = total
    out = np.empty(total, np.uint8)
    for r in range(n):
        j = idx[r]
        if j >= 0:
            p = out_off[r]
            for q in range(off[j], off[j + 1]):
                out[p] = data[q]
                p += 1
    return out_off, out


# the functions the ahead-of-time module provides (the others are inlined into them)
EXPORTS = ("meter_run", "expire", "emit_slots", "rehash", "format_ips", "format_macs",
           "gather_strings")  # fmt: skip
use_aot(globals(), EXPORTS)
