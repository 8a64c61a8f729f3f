"""Live traffic from a network interface: an AF_PACKET socket, standard library only.

The socket receives every frame of the interface (``ETH_P_ALL``) through a classic BPF filter
that keeps IPv4, IPv6 and 802.1Q-tagged frames. Frames arrive through a PACKET_MMAP ring
(``TPACKET_V3``: the kernel fills 4 MiB blocks of frames with their receive times, 64 MiB in
all, and hands a block over when it is full or 10 ms old), so a burst waits in the ring rather
than being dropped, and a block's frames become pcap records in one compiled pass and are
decoded by the reader's kernel, exactly like a capture file's packets (no Python object per
frame); where the ring cannot be set up, ``recvmsg`` with ``SO_TIMESTAMPNS``, one frame per
call, as ``(ts_ns, frame, wire length)`` decoded the same way. The flow
stream's clock is advanced on a quiet link so that idle flows end without traffic. The kernel's
counters (``PACKET_STATISTICS``: packets, drops) are read at every batch and summed into the
summary. VLAN tags the kernel strips from frames are not seen (as with any packet socket).

Opening the socket needs CAP_NET_RAW (root); a missing interface or permission is one line.
Frames longer than the ring's block (4 MiB) cannot occur (the snap length is 65,535).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from iotwatch.errors import InputError
from iotwatch.flowmeter.frames import batch_from_tpacket3
from iotwatch.flowmeter.packets import PacketBatch, ReadStats

# what arrived, as ``FlowStream.feed`` takes it
Packets = PacketBatch | list[tuple[int, bytes, int]] | None

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
SO_RCVBUF = 8
SO_RCVBUFFORCE = 33
PACKET_VERSION = 10
PACKET_RX_RING = 5
TPACKET_V3 = 2
TP_STATUS_USER = 1
BLOCK_SIZE = 1 << 22
BLOCKS = 16
RETIRE_MS = 10
_BLOCK = struct.Struct("II")  # tpacket_hdr_v1 at 12: num_pkts, offset_to_first_pkt
SNAPLEN = 65_535
_TIMESPEC = struct.Struct("@qq")

# ldh [12]; jeq 0x0800 / 0x86dd / 0x8100 -> accept; else drop. (code, jt, jf, k)
_BPF_IP = ((0x28, 0, 0, 12), (0x15, 3, 0, 0x0800), (0x15, 2, 0, 0x86DD),
           (0x15, 1, 0, 0x8100), (0x06, 0, 0, 0), (0x06, 0, 0, SNAPLEN))  # fmt: skip


@dataclass
class LiveStats:
    """Frames received and dropped by the kernel (socket statistics), summed."""

    frames: int = 0
    kernel_packets: int = 0
    kernel_drops: int = 0


class LiveCapture:
    """An AF_PACKET socket on one interface; ``batches`` yields what arrived, as the flow
    stream's ``feed`` takes it. ``read_stats``: the reader's counters (packets read, kept,
    skipped) for the frames the ring path decodes here (the flow stream's, so they add up)."""

    def __init__(
        self,
        interface: str,
        *,
        bpf: bool = True,
        rcvbuf: int = 32 << 20,
        read_stats: ReadStats | None = None,
    ) -> None:
        self.interface = interface
        self.stats = LiveStats()
        self.read_stats = read_stats if read_stats is not None else ReadStats()
        try:
            socket.if_nametoindex(interface)
        except OSError:
            raise InputError(f"{interface}: no such network interface") from None
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise InputError(
                f"{interface}: permission denied opening a packet socket (needs root or "
                f"CAP_NET_RAW)"
            ) from None
        except OSError as exc:
            raise InputError(f"{interface}: cannot open a packet socket ({exc.strerror})") from None
        self.sock = sock
        self.ring: mmap.mmap | None = None
        try:
            if bpf:
                self._filter = self._attach_bpf()
            try:
                self.ring = self._map_ring()
            except OSError:  # no ring here: one frame per recvmsg
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                for opt in (SO_RCVBUFFORCE, SO_RCVBUF):
                    with contextlib.suppress(OSError):  # a smaller buffer still works
                        sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                        break
            sock.bind((interface, 0))
            sock.setblocking(False)
            self._drain_stats()  # counters start now
            self.stats = LiveStats()
        except OSError as exc:
            sock.close()
            raise InputError(f"{interface}: cannot capture ({exc.strerror or exc})") from None

    def _map_ring(self) -> mmap.mmap:
        self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        req = struct.pack("IIIIIII", BLOCK_SIZE, BLOCKS, 2048, BLOCK_SIZE * BLOCKS // 2048,
                          RETIRE_MS, 0, 0)  # fmt: skip
        self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._block = 0
        return mmap.mmap(self.sock.fileno(), BLOCK_SIZE * BLOCKS, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip

    def _attach_bpf(self) -> ctypes.Array[ctypes.c_char]:
        prog = b"".join(struct.pack("HBBI", *ins) for ins in _BPF_IP)
        buf = ctypes.create_string_buffer(prog)
        fprog = struct.pack("HL", len(_BPF_IP), ctypes.addressof(buf))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        return buf  # kept alive with the socket

    def _drain_stats(self) -> None:
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        except OSError:
            return
        packets, drops = struct.unpack("II", raw[:8])  # the kernel resets them on each read
        self.stats.kernel_packets += packets
        self.stats.kernel_drops += drops

    def batches(
        self, *, max_frames: int = 4096, wait_s: float = 0.2
    ) -> Iterator[tuple[int, Packets]]:
        """``(frames, packets)`` as they arrive: ``packets`` a ``PacketBatch`` decoded from a
        ring block (None when none of its frames is an IP packet the reader keeps), or with
        ``recvmsg`` a list of ``(ts_ns, frame, wire length)``; ``(0, None)`` after ``wait_s``
        of silence (the caller advances its clock then). Runs until the caller stops."""
        read = self._ring_block if self.ring is not None else self._recv_frames
        quiet = 0.0
        while True:
            n, packets = read(max_frames)
            if not n:
                t0 = time.monotonic()
                select.select([self.sock], [], [], RETIRE_MS / 1000)
                quiet += time.monotonic() - t0
                if quiet < wait_s:
                    continue
            quiet = 0.0
            self.stats.frames += n
            self._drain_stats()
            yield n, packets

    def _ring_block(self, max_frames: int) -> tuple[int, Packets]:
        """The frames of the next block the kernel handed over, decoded in one compiled pass
        (``frames.batch_from_tpacket3``); (0, None) if it has not handed one over."""
        ring = self.ring
        assert ring is not None
        base = self._block * BLOCK_SIZE
        if not struct.unpack_from("I", ring, base + 8)[0] & TP_STATUS_USER:
            return 0, None
        n, first = _BLOCK.unpack_from(ring, base + 12)
        block = np.frombuffer(ring, np.uint8, count=BLOCK_SIZE, offset=base)
        try:
            batch = batch_from_tpacket3(block, n, first, stats=self.read_stats,
                                        name=self.interface)  # fmt: skip
        finally:
            del block  # no view of the ring may outlive it (closing it would fail)
        struct.pack_into("I", ring, base + 8, 0)  # the block goes back to the kernel
        self._block = (self._block + 1) % BLOCKS
        return n, batch

    def _recv_frames(self, max_frames: int) -> tuple[int, Packets]:
        anc = socket.CMSG_SPACE(_TIMESPEC.size)
        frames: list[tuple[int, bytes, int]] = []
        for _ in range(max_frames):
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(SNAPLEN, anc)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    break
                raise InputError(f"{self.interface}: capture failed ({exc.strerror})") from None
            ts = 0
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack(value[: _TIMESPEC.size])
                    ts = sec * 1_000_000_000 + nsec
            frames.append((ts or time.time_ns(), data, len(data)))
        return len(frames), frames

    def close(self) -> None:
        self._drain_stats()
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self.sock.close()

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
