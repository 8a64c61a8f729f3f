"""The contract between the capture reader and the flow meter: decoded packets as numpy columns.

The reader turns a capture into a stream of ``PacketBatch`` chunks (bounded size, so memory stays
flat whatever the capture size); the meter turns batches into flows. Every array has one entry per
IP packet the reader kept, in file order (timestamps may go backwards: the meter copes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PacketBatch:
    """One chunk of decoded IP packets, as parallel numpy arrays."""

    ts_ns: np.ndarray  # int64, capture timestamp in nanoseconds since the epoch
    frame_len: np.ndarray  # int64, original frame length on the wire (pcap orig_len)
    cap_len: np.ndarray  # int64, captured length (may be cut by the snap length)
    ip_len: np.ndarray  # int64, IP packet length from the IP header (v6: 40 + payload length)
    payload_len: np.ndarray  # int64, transport payload length (ip_len - IP/ext/L4 headers), >= 0
    ip_version: np.ndarray  # uint8, 4 or 6
    proto: np.ndarray  # uint8, transport protocol (after IPv6 extension headers)
    src_ip_hi: np.ndarray  # uint64, high 64 bits of the source address (IPv4: 0)
    src_ip_lo: (
        np.ndarray
    )  # uint64, low 64 bits (IPv4: 0xffff_0000_0000 | addr, i.e. ::ffff:a.b.c.d)
    dst_ip_hi: np.ndarray  # uint64
    dst_ip_lo: np.ndarray  # uint64
    sport: (
        np.ndarray
    )  # uint16, 0 when the protocol has no ports or the packet is a non-first fragment
    dport: np.ndarray  # uint16
    tcp_flags: np.ndarray  # uint8, TCP flags byte (0 for other protocols)
    vlan: np.ndarray  # int32, innermost 802.1Q VLAN id, -1 when untagged
    src_mac: np.ndarray  # uint64, 48-bit source MAC, 0 when the link type has none
    dst_mac: np.ndarray  # uint64
    fragment: np.ndarray  # bool, the packet is an IP fragment (first or later)
    iface: np.ndarray  # int32, pcapng interface id (0 for classic pcap)
    file_index: np.ndarray  # int32, index of the capture in the list given to the reader
    offset: np.ndarray  # int64, byte offset of the packet's record in its (uncompressed) file

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])


@dataclass
class ReadIssue:
    """Something the reader could not use: file, byte offset and what was wrong."""

    file: str
    offset: int
    message: str

    def __str__(self) -> str:
        return f"{self.file} @ byte {self.offset}: {self.message}"


@dataclass
class ReadStats:
    """What the reader saw: packets read, skipped by reason, and damage found."""

    packets_read: int = 0  # every record read from the files
    packets_kept: int = 0  # records that became PacketBatch rows
    bytes_read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    issues: list[ReadIssue] = field(default_factory=list)  # damage, with file and byte offset
    files: int = 0

    def merge(self, other: ReadStats) -> None:
        """Add another reader's counts to these."""
        self.packets_read += other.packets_read
        self.packets_kept += other.packets_kept
        self.bytes_read += other.bytes_read
        self.skipped.update(other.skipped)
        self.issues.extend(other.issues)
        self.files += other.files
