"""Orientation: which side of each flow is the device (inventory MAC/IP, local networks).

Matching is numeric, over the unique endpoints of a block of flows; ``arrow_table.build_table``
then puts the device side first (``dev_*`` / ``peer_*``, sent / received).
"""

from __future__ import annotations

import ipaddress

import numpy as np

from iotwatch.inventory import Inventory


def _uniq2(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (hi, lo) pairs, sorted by (hi, lo): (uniq_hi, uniq_lo, inverse)."""
    order = np.lexsort((lo, hi))
    sh, sl = hi[order], lo[order]
    new = np.ones(len(order), bool)
    new[1:] = (sh[1:] != sh[:-1]) | (sl[1:] != sl[:-1])
    inv = np.empty(len(order), np.int64)
    inv[order] = np.cumsum(new) - 1
    return sh[new], sl[new], inv


def _ip_text(hi: int, lo: int) -> str:
    """One address as text (IPv4-mapped ones as dotted quads), as ``K.format_ips`` writes it."""
    import socket

    if hi == 0 and (lo >> 32) == 0xFFFF:
        return socket.inet_ntop(socket.AF_INET, (lo & 0xFFFF_FFFF).to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, ((hi << 64) | lo).to_bytes(16, "big"))


def _ip_words(text: str) -> tuple[int, int] | None:
    """(hi, lo) of an address in the reader's representation (IPv4 as ::ffff:a.b.c.d)."""
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    v = int(a) | (0xFFFF << 32) if a.version == 4 else int(a)
    return v >> 64, v & 0xFFFF_FFFF_FFFF_FFFF


def _find2(uh: np.ndarray, ul: np.ndarray, h: int, low: int) -> int:
    """Index of (h, low) in the (hi, lo)-sorted unique pairs, or -1."""
    i, j = np.searchsorted(uh, np.uint64(h), "left"), np.searchsorted(uh, np.uint64(h), "right")
    k = i + int(np.searchsorted(ul[i:j], np.uint64(low)))
    return k if k < j and ul[k] == low else -1


def _mac_text(mac: int) -> str | None:
    if mac == 0:
        return None
    h = f"{mac:012x}"
    return ":".join(h[i : i + 2] for i in range(0, 12, 2))


def _in_networks(uh: np.ndarray, ul: np.ndarray, nets: list) -> np.ndarray:
    """Which (hi, lo) addresses lie in one of the networks (IPv4 ones only in IPv4 nets)."""
    v4 = (uh == 0) & ((ul >> np.uint64(32)) == np.uint64(0xFFFF))
    out = np.zeros(len(uh), bool)
    full = (1 << 128) - 1
    for net in nets:
        bits = net.prefixlen + (96 if net.version == 4 else 0)
        mask = (full << (128 - bits)) & full
        base = int(net.network_address) | ((0xFFFF << 32) if net.version == 4 else 0)
        m_hi, m_lo = np.uint64(mask >> 64), np.uint64(mask & 0xFFFF_FFFF_FFFF_FFFF)
        b_hi, b_lo = np.uint64(base >> 64), np.uint64(base & 0xFFFF_FFFF_FFFF_FFFF)
        hit = ((uh & m_hi) == b_hi) & ((ul & m_lo) == b_lo)
        out |= hit & (v4 if net.version == 4 else ~v4)
    return out


def _device_sides(
    fl: dict[str, np.ndarray], inventory: Inventory | None, nets: list
) -> tuple[np.ndarray, np.ndarray]:
    """Per flow and side (a, b): the inventory device index (-1: none) and whether it is known.

    Matching is numeric, once per unique MAC and per unique IP: each inventory address is parsed
    once and looked up among the unique endpoints, keeping exact-text semantics (an inventory
    entry not in canonical form, what ``socket.inet_ntop`` writes, matches nothing, as a text
    lookup would). Returns (dev, known), each of shape (2, flows).
    """
    k = len(fl["a_hi"])
    dev = np.full(2 * k, -1, np.int64)
    local = np.zeros(2 * k, bool)
    devices = list(inventory.devices) if inventory is not None else []
    if devices or nets:
        mac = np.concatenate([fl["mac_a"], fl["mac_b"]])
        uh, ul, ip_inv = _uniq2(
            np.concatenate([fl["a_hi"], fl["b_hi"]]), np.concatenate([fl["a_lo"], fl["b_lo"]])
        )
    if devices:
        index = {id(d): i for i, d in enumerate(devices)}
        umac, mac_inv = np.unique(mac, return_inverse=True)
        by_mac = np.full(len(umac), -1, np.int64)
        for text, d in inventory.by_mac.items():
            try:
                m = int(text.replace(":", ""), 16)
            except ValueError:
                continue
            j = int(np.searchsorted(umac, np.uint64(m))) if 0 < m < 1 << 48 else len(umac)
            if j < len(umac) and umac[j] == m and _mac_text(m) == text:
                by_mac[j] = index[id(d)]
        by_ip = np.full(len(uh), -1, np.int64)
        for text, d in inventory.by_ip.items():
            w = _ip_words(text)
            if w is None or _ip_text(*w) != text:
                continue
            j = _find2(uh, ul, *w)
            if j >= 0:
                by_ip[j] = index[id(d)]
        dm, di = by_mac[mac_inv.reshape(-1)], by_ip[ip_inv]
        dev = np.where(dm >= 0, dm, di)  # the MAC wins, as in Inventory.lookup
    if nets:
        local = _in_networks(uh, ul, nets)[ip_inv]
    known = (dev >= 0) | local
    return dev.reshape(2, k), known.reshape(2, k)
