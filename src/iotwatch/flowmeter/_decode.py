"""Vectorised decoding of link/IP/transport headers for one chunk of captured frames.

Everything here works on whole chunks with numpy gathers at per-row offsets into the capture
buffer; no per-packet Python. Every read is gated on the row's captured length, so a frame cut by
the snap length (or a garbage record) never contributes bytes that belong to the next record.
"""

from __future__ import annotations

import numpy as np

# Skip reasons, in code order (0 means kept).
KEPT = 0
NON_IP = 1
UNKNOWN_LINKTYPE = 2
TRUNCATED = 3
BAD_HEADER = 4
BAD_RECORD = 5
REASONS = ("kept", "non_ip", "unknown_linktype", "truncated", "bad_header", "bad_record")

# Link types (tcpdump.org LINKTYPE_* values).
LT_NULL = 0
LT_ETHERNET = 1
LT_PPP = 9
LT_RAW_12 = 12
LT_RAW_14 = 14
LT_PPP_HDLC = 50
LT_RAW = 101
LT_C_HDLC = 104
LT_LOOP = 108
LT_SLL = 113
LT_IPV4 = 228
LT_IPV6 = 229
LT_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset(
    {
        LT_NULL,
        LT_ETHERNET,
        LT_PPP,
        LT_RAW_12,
        LT_RAW_14,
        LT_PPP_HDLC,
        LT_RAW,
        LT_C_HDLC,
        LT_LOOP,
        LT_SLL,
        LT_IPV4,
        LT_IPV6,
        LT_SLL2,
    }
)

ET_IPV4 = 0x0800
ET_IPV6 = 0x86DD
ET_PPPOE = 0x8864
ET_CISCO_DCE = 0x8903
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 4
MAX_V6_EXT_HEADERS = 8
IPV4_MAPPED = np.uint64(0xFFFF_0000_0000)


class Gather:
    """Bounds-safe byte gathers from one capture buffer (positions are clamped, never raise)."""

    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf
        self.last = max(len(buf) - 1, 0)
        self._views: dict[int, np.ndarray] = {}

    def u8(self, pos: np.ndarray) -> np.ndarray:
        """Byte at each position, as int64."""
        if len(self.buf) == 0:
            return np.zeros(len(pos), np.int64)
        return self.buf[np.minimum(pos, self.last)].astype(np.int64)

    def be16(self, pos: np.ndarray) -> np.ndarray:
        """Big-endian 16-bit value at each position, as int64."""
        rows = self.rows(pos, 2)
        return rows[:, 0].astype(np.int64) << 8 | rows[:, 1]

    def rows(self, pos: np.ndarray, width: int) -> np.ndarray:
        """A (n, width) uint8 copy of the bytes at each position (clamped near the buffer end)."""
        n = len(self.buf)
        if n < width:
            padded = np.zeros(width, np.uint8)
            padded[:n] = self.buf
            return np.broadcast_to(padded, (len(pos), width)).copy()
        view = self._views.get(width)
        if view is None:
            # A sliding-window view costs nothing; fancy-indexing its first axis copies `width`
            # contiguous bytes per row, far cheaper than a (n, width) index matrix.
            view = np.lib.stride_tricks.as_strided(
                self.buf, shape=(n - width + 1, width), strides=(1, 1)
            )
            self._views[width] = view
        last = n - width
        out = view[np.minimum(pos, last)]
        over = pos > last
        if over.any():
            # Rows that run past the buffer end: read them from a zero-padded copy of the tail
            # (those bytes are never trusted: callers gate every field on the captured length).
            tail = np.zeros(2 * width, np.uint8)
            tail[:width] = self.buf[last:]
            tview = np.lib.stride_tricks.as_strided(tail, shape=(width + 1, width), strides=(1, 1))
            out[over] = tview[np.minimum(pos[over] - last, width)]
        return out


def be_words(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Reinterpret contiguous (n, k) uint8 rows as big-endian words, one column per word."""
    return np.ascontiguousarray(rows).view(dtype).astype(dtype.replace(">", "="))


def decode_frames(
    g: Gather,
    data: np.ndarray,
    cap: np.ndarray,
    orig: np.ndarray,
    linktype: np.ndarray,
    reason: np.ndarray,
) -> dict[str, np.ndarray]:
    """Decode frames starting at ``data`` (absolute buffer offsets); fills ``reason`` in place."""
    n = len(data)
    l3 = np.zeros(n, np.int64)
    et = np.zeros(n, np.int64)
    vlan = np.full(n, -1, np.int32)
    src_mac = np.zeros(n, np.uint64)
    dst_mac = np.zeros(n, np.uint64)
    # Rows whose link layer carries an ethertype (and so may carry VLAN tags / PPPoE).
    etherish = np.zeros(n, bool)

    kinds = np.unique(linktype) if n else np.zeros(0, np.int64)
    for lt in kinds.tolist():
        m = (linktype == lt) & (reason == KEPT)
        if not m.any():
            continue
        idx = np.flatnonzero(m)
        d = data[idx]
        c = cap[idx]
        if lt == LT_ETHERNET:
            ok = c >= 14
            rows = g.rows(d, 14)
            macs = np.zeros((len(idx), 16), np.uint8)
            macs[:, 2:8] = rows[:, 0:6]
            macs[:, 10:16] = rows[:, 6:12]
            words = be_words(macs, ">u8")
            dst_mac[idx] = np.where(ok, words[:, 0], 0)
            src_mac[idx] = np.where(ok, words[:, 1], 0)
            et[idx] = rows[:, 12].astype(np.int64) << 8 | rows[:, 13]
            l3[idx] = 14
            etherish[idx] = True
        elif lt == LT_SLL:
            ok = c >= 16
            rows = g.rows(d, 16)
            halen = rows[:, 4].astype(np.int64) << 8 | rows[:, 5]
            mac = np.zeros((len(idx), 8), np.uint8)
            mac[:, 2:8] = rows[:, 6:12]
            src_mac[idx] = np.where(ok & (halen == 6), be_words(mac, ">u8")[:, 0], 0)
            et[idx] = rows[:, 14].astype(np.int64) << 8 | rows[:, 15]
            l3[idx] = 16
            etherish[idx] = True
        elif lt == LT_SLL2:
            ok = c >= 20
            rows = g.rows(d, 20)
            mac = np.zeros((len(idx), 8), np.uint8)
            mac[:, 2:8] = rows[:, 12:18]
            src_mac[idx] = np.where(ok & (rows[:, 11] == 6), be_words(mac, ">u8")[:, 0], 0)
            et[idx] = rows[:, 0].astype(np.int64) << 8 | rows[:, 1]
            l3[idx] = 20
            etherish[idx] = True
        elif lt in (LT_NULL, LT_LOOP):
            # The family is a 32-bit value in the capturing host's byte order (NULL) or network
            # order (LOOP); every value we care about is < 256, so it sits in byte 0 or byte 3.
            ok = c >= 4
            rows = g.rows(d, 4)
            fam = np.where(rows[:, 0] != 0, rows[:, 0], rows[:, 3]).astype(np.int64)
            e = np.zeros(len(idx), np.int64)
            e[fam == 2] = ET_IPV4
            e[np.isin(fam, (10, 24, 28, 30))] = ET_IPV6
            et[idx] = e
            l3[idx] = 4
        elif lt in (LT_RAW, LT_RAW_12, LT_RAW_14, LT_IPV4, LT_IPV6):
            ok = c >= 1
            ver = g.u8(d) >> 4
            e = np.where(ver == 4, ET_IPV4, np.where(ver == 6, ET_IPV6, 0))
            if lt == LT_IPV4:
                e = np.where(ver == 4, ET_IPV4, 0)
            elif lt == LT_IPV6:
                e = np.where(ver == 6, ET_IPV6, 0)
            et[idx] = e
            # Raw IP that is not IP is a broken header, not a foreign protocol.
            bad = ok & (e == 0)
            reason[idx[bad]] = BAD_HEADER
            l3[idx] = 0
        elif lt in (LT_PPP, LT_PPP_HDLC, LT_C_HDLC):
            ok = c >= 4
            rows = g.rows(d, 4).astype(np.int64)
            b0, b1, b2, b3 = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
            cisco = ((b0 == 0x0F) | (b0 == 0x8F)) & (b1 == 0)
            hdlc = (b0 == 0xFF) & (b1 == 0x03)
            # PPP protocol field: after ff 03 when present; 1 byte when odd (compressed).
            p_first = np.where(hdlc, b2, b0)
            p_second = np.where(hdlc, b3, b1)
            p_off = np.where(hdlc, 2, 0)
            compressed = (p_first & 1) == 1
            proto = np.where(compressed, p_first, p_first << 8 | p_second)
            ppp_l3 = p_off + np.where(compressed, 1, 2)
            e = np.where(proto == 0x21, ET_IPV4, np.where(proto == 0x57, ET_IPV6, 0))
            e = np.where(cisco, b2 << 8 | b3, e)
            et[idx] = e
            l3[idx] = np.where(cisco, 4, ppp_l3)
            etherish[idx] = cisco
        else:
            reason[idx] = UNKNOWN_LINKTYPE
            continue
        reason[idx[~ok & (reason[idx] == KEPT)]] = TRUNCATED

    # VLAN tags (802.1Q, 802.1ad, old QinQ) and PPPoE sessions after an ethertype.
    live = etherish & (reason == KEPT)
    for _ in range(MAX_VLAN_TAGS):
        m = live & np.isin(et, VLAN_ETHERTYPES)
        dce = live & (et == ET_CISCO_DCE)
        if dce.any():
            # Cisco FabricPath/DCE (0x8903): 2 bytes + inner MACs, then the next ethertype;
            # NFStream decodes through it, so do we.
            idx = np.flatnonzero(dce)
            fits = l3[idx] + 16 <= cap[idx]
            reason[idx[~fits]] = TRUNCATED
            live[idx[~fits]] = False
            idx = idx[fits]
            et[idx] = g.be16(data[idx] + l3[idx] + 14)
            l3[idx] += 16
            m = live & np.isin(et, VLAN_ETHERTYPES)
        if not m.any():
            if not (live & (et == ET_CISCO_DCE)).any():
                break
            continue
        idx = np.flatnonzero(m)
        fits = l3[idx] + 4 <= cap[idx]
        reason[idx[~fits]] = TRUNCATED
        live[idx[~fits]] = False
        idx = idx[fits]
        rows = g.rows(data[idx] + l3[idx], 4).astype(np.int64)
        vlan[idx] = (rows[:, 0] << 8 | rows[:, 1]) & 0x0FFF  # innermost tag wins
        et[idx] = rows[:, 2] << 8 | rows[:, 3]
        l3[idx] += 4
    m = live & (et == ET_PPPOE)
    if m.any():
        idx = np.flatnonzero(m)
        fits = l3[idx] + 8 <= cap[idx]
        reason[idx[~fits]] = TRUNCATED
        idx = idx[fits]
        proto = g.be16(data[idx] + l3[idx] + 6)
        et[idx] = np.where(proto == 0x21, ET_IPV4, np.where(proto == 0x57, ET_IPV6, 0))
        l3[idx] += 8

    reason[(reason == KEPT) & (et != ET_IPV4) & (et != ET_IPV6)] = NON_IP

    out = {
        "ip_len": np.zeros(n, np.int64),
        "payload_len": np.zeros(n, np.int64),
        "ip_version": np.zeros(n, np.uint8),
        "proto": np.zeros(n, np.uint8),
        "src_ip_hi": np.zeros(n, np.uint64),
        "src_ip_lo": np.zeros(n, np.uint64),
        "dst_ip_hi": np.zeros(n, np.uint64),
        "dst_ip_lo": np.zeros(n, np.uint64),
        "sport": np.zeros(n, np.uint16),
        "dport": np.zeros(n, np.uint16),
        "tcp_flags": np.zeros(n, np.uint8),
        "vlan": vlan,
        "src_mac": src_mac,
        "dst_mac": dst_mac,
        "fragment": np.zeros(n, bool),
    }
    l4 = np.zeros(n, np.int64)  # transport header offset, relative to the frame start
    nh = np.zeros(n, np.int64)  # transport protocol
    ip_len = out["ip_len"]
    # Rows whose transport header must not be parsed (non-first fragments, ESP, ...).
    no_l4 = np.zeros(n, bool)

    # IPv4.
    m = (reason == KEPT) & (et == ET_IPV4)
    if m.any():
        idx = np.flatnonzero(m)
        fits = l3[idx] + 20 <= cap[idx]
        reason[idx[~fits]] = TRUNCATED
        idx = idx[fits]
        base = data[idx] + l3[idx]
        rows = g.rows(base, 20)
        b0 = rows[:, 0].astype(np.int64)
        ver = b0 >> 4
        ihl = (b0 & 15) * 4
        tot = rows[:, 2].astype(np.int64) << 8 | rows[:, 3]
        # TSO/GSO captures write total length 0: fall back to what the frame says.
        tot = np.where(tot == 0, orig[idx] - l3[idx], tot)
        bad = (ver != 4) | (ihl < 20) | (tot < ihl)
        cut = ~bad & (l3[idx] + ihl > cap[idx])
        reason[idx[bad]] = BAD_HEADER
        reason[idx[cut]] = TRUNCATED
        good = ~bad & ~cut
        if not good.all():
            idx, rows, ihl, tot = idx[good], rows[good], ihl[good], tot[good]
        frag = rows[:, 6].astype(np.int64) << 8 | rows[:, 7]
        ip_len[idx] = tot
        out["ip_version"][idx] = 4
        nh[idx] = rows[:, 9]
        addrs = be_words(rows[:, 12:20], ">u4").astype(np.uint64)
        out["src_ip_lo"][idx] = IPV4_MAPPED | addrs[:, 0]
        out["dst_ip_lo"][idx] = IPV4_MAPPED | addrs[:, 1]
        out["fragment"][idx] = (frag & 0x3FFF) != 0
        no_l4[idx] = (frag & 0x1FFF) != 0
        l4[idx] = l3[idx] + ihl

    # IPv6, walking extension headers.
    m = (reason == KEPT) & (et == ET_IPV6)
    if m.any():
        idx = np.flatnonzero(m)
        fits = l3[idx] + 40 <= cap[idx]
        reason[idx[~fits]] = TRUNCATED
        idx = idx[fits]
        rows = g.rows(data[idx] + l3[idx], 40)
        ver = rows[:, 0] >> 4
        bad = ver != 6
        reason[idx[bad]] = BAD_HEADER
        idx, rows = idx[~bad], rows[~bad]
        plen = rows[:, 4].astype(np.int64) << 8 | rows[:, 5]
        # Payload length 0 means a jumbogram (or TSO): take the frame's word for it.
        ip_len[idx] = np.where(plen == 0, orig[idx] - l3[idx], 40 + plen)
        out["ip_version"][idx] = 6
        nh[idx] = rows[:, 6]
        addrs = be_words(rows[:, 8:40], ">u8")
        out["src_ip_hi"][idx] = addrs[:, 0]
        out["src_ip_lo"][idx] = addrs[:, 1]
        out["dst_ip_hi"][idx] = addrs[:, 2]
        out["dst_ip_lo"][idx] = addrs[:, 3]
        l4[idx] = l3[idx] + 40
        active = idx
        for _ in range(MAX_V6_EXT_HEADERS):
            h = nh[active]
            active = active[np.isin(h, (0, 43, 44, 51, 60))]
            if len(active) == 0:
                break
            fits = l4[active] + 8 <= cap[active]
            reason[active[~fits]] = TRUNCATED
            active = active[fits]
            rows = g.rows(data[active] + l4[active], 4).astype(np.int64)
            h = nh[active]
            is_frag = h == 44
            hlen = np.where(h == 51, (rows[:, 1] + 2) * 4, (rows[:, 1] + 1) * 8)
            hlen = np.where(is_frag, 8, hlen)
            fo = rows[:, 2] << 8 | rows[:, 3]
            fidx = active[is_frag]
            out["fragment"][fidx] = True
            later = is_frag & ((fo & 0xFFF8) != 0)
            no_l4[active[later]] = True
            nh[active] = rows[:, 0]
            l4[active] += hlen
            active = active[~later]

    # Transport: TCP and UDP ports/flags when the IP packet really carries their header.
    kept = reason == KEPT
    l4hdr = np.zeros(n, np.int64)
    for proto, need in ((6, 14), (17, 8)):
        m = kept & (nh == proto) & ~no_l4
        if not m.any():
            continue
        idx = np.flatnonzero(m)
        rel = l4[idx] - l3[idx]
        claimed = rel + need <= ip_len[idx]  # a tiny first fragment may not hold the header
        cut = claimed & (l4[idx] + need > cap[idx])
        reason[idx[cut]] = TRUNCATED
        idx = idx[claimed & ~cut]
        rows = g.rows(data[idx] + l4[idx], 14 if proto == 6 else 4)
        words = be_words(rows[:, 0:4], ">u2")
        out["sport"][idx] = words[:, 0]
        out["dport"][idx] = words[:, 1]
        if proto == 6:
            out["tcp_flags"][idx] = rows[:, 13]
            l4hdr[idx] = (rows[:, 12] >> 4).astype(np.int64) * 4
        else:
            l4hdr[idx] = 8
    out["proto"][:] = nh
    out["payload_len"][:] = np.maximum(ip_len - (l4 - l3) - l4hdr, 0)
    return out
