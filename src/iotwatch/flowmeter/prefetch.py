"""Readers of captures, and the prefetch thread that decodes a batch ahead of the meter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from iotwatch.flowmeter.packets import PacketBatch

Reader = Callable[..., Iterator[PacketBatch]]
_DONE = object()


def _prefetch(batches: Iterator[PacketBatch], depth: int = 2) -> Iterator[PacketBatch]:
    """Run the reader in a thread, ``depth`` batches ahead (bounded: memory stays flat).

    The reader's exceptions are re-raised here; when the consumer stops early the thread is told
    to stop and joined.
    """
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(exc)

    th = threading.Thread(target=work, name="flowmeter-reader", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():
            try:  # unblock a reader waiting on a full queue
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)


def default_reader() -> Reader:
    """The package's reader (the scapy reader is a test reference only, never a fallback)."""
    from iotwatch.flowmeter.reader import read_packets

    return read_packets
