"""Sources of flows for the monitor: capture files (offline) and an interface (live).

Both use the same ``FlowStream`` with the bundle's flow profile and ``ready_packets`` = N, so
a flow is judged as soon as it has N packets each way, or when it ends (close, timeout, end of
the capture), whichever comes first; and a live packet becomes exactly the row it would be in a
capture file. ``Run`` counts packets and time for the summary.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotwatch.errors import InputError
from iotwatch.flowmeter.packets import ReadStats

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from iotwatch.flowmeter.config import FlowConfig
    from iotwatch.flowmeter.stream import FlowStream
    from iotwatch.inventory import Inventory
    from iotwatch.monitor.engine import Monitor
    from iotwatch.monitor.live import LiveCapture


class Run:
    """One monitoring run: feeds the monitor from captures or an interface."""

    def __init__(
        self,
        monitor: Monitor,
        config: FlowConfig,
        inventory: Inventory | None,
        chunk_packets: int = 262_144,
    ) -> None:
        self.monitor = monitor
        # packets metered at once from a capture; flows still open after a chunk are sighted
        # (their service judged) then: small chunks time alerts as a live monitor would
        self.chunk_packets = chunk_packets
        self.config = config
        self.inventory = inventory
        self.stats = ReadStats()
        self.files: list[str] = []
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        self.live_capture: LiveCapture | None = None
        self._stream: FlowStream | None = None
        self._finished = False

    def captures(self, files: list[Path]) -> None:
        """Meter each capture in turn (own flow stream each; the devices carry over). A file
        that is not a capture, or is damaged, is an ``InputError`` once every file was read."""
        from iotwatch.flowmeter.prefetch import _prefetch
        from iotwatch.flowmeter.stream import FlowStream

        n = self.monitor.n_packets
        for path in files:
            self.files.append(str(path))
            tables = FlowStream.from_capture(path, self.config, self.inventory, stats=self.stats,
                                             ready_packets=n, sight=self.monitor.profiles,
                                             chunk_packets=self.chunk_packets)  # fmt: skip
            # the meter runs in a thread of its own, a table or two ahead of the judge (its
            # kernels release the GIL): metering and judging overlap on two cores, same tables
            for table in _prefetch(tables, depth=2):
                self.monitor.judge(table)
        issues = self.stats.issues
        if issues:  # not a capture, or damaged: what could be read was monitored
            more = f" (and {len(issues) - 1} more problem(s))" if len(issues) > 1 else ""
            raise InputError(f"{issues[0]}{more}; everything readable was monitored")

    def live(
        self, interface: str, *, duration: float | None = None, idle_exit: float | None = None
    ) -> None:
        """Monitor an interface until SIGINT/SIGTERM, ``duration`` or ``idle_exit`` seconds."""
        from iotwatch.flowmeter.stream import FlowStream
        from iotwatch.monitor.live import LiveCapture

        stream = FlowStream(self.config, self.inventory, capture=interface,
                            ready_packets=self.monitor.n_packets)  # fmt: skip
        self._stream = stream
        stream.stats = self.stats
        cap = LiveCapture(interface, read_stats=self.stats)
        self.live_capture = cap
        log.info("listening on %s", interface)
        start = last = time.monotonic()
        try:
            for n, packets in cap.batches():
                now = time.monotonic()
                if n:
                    last = now
                    self.monitor.judge(stream.feed(packets))
                    if self.monitor.profiles:  # a flow's service is judged at its first packets
                        self.monitor.judge(stream.sighted())
                    self.monitor.judge(stream.ready())
                else:
                    self.monitor.judge(stream.advance(time.time_ns()))
                if duration is not None and now - start >= duration:
                    break
                if idle_exit is not None and now - last >= idle_exit:
                    break
        finally:
            cap.close()

    def finish(self) -> None:
        """End of the source (or SIGINT, or an error): the open flows of a live stream are
        judged, then the devices still waiting for their vote."""
        if self._finished:
            return
        self._finished = True
        try:
            if self._stream is not None:
                self.monitor.judge(self._stream.flush())
        finally:
            self.monitor.finish()
            self.seconds = time.perf_counter() - self.t0

    def summary(self) -> dict[str, Any]:
        s = {"packets": self.stats.packets_read, "packets_kept": self.stats.packets_kept,
             "seconds": round(self.seconds or time.perf_counter() - self.t0, 3),
             "files": self.files, **self.monitor.summary()}  # fmt: skip
        if self.stats.issues:
            s["capture_issues"] = [str(i) for i in self.stats.issues[:10]]
        if self.live_capture is not None:
            st = self.live_capture.stats
            s.update(frames=st.frames, kernel_packets=st.kernel_packets,
                     kernel_drops=st.kernel_drops)  # fmt: skip
        return s
