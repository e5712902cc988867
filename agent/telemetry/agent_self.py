"""The agent's own health as a metrics section: the outbox and publisher counters.

After Telegraf's internal metrics and Fluent Bit's: depth, bytes, oldest unsent age, dropped
total, publish failures, reconnects, in flight; plus the agent's own CPU and memory, so the
platform can see that the monitor itself stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import psutil

from agent.outbox import Outbox
from agent.records import age_s
from agent.telemetry.base import Accumulator


class PublisherView(Protocol):
    """What this collector reads of the publisher (agent/publisher.py's ``Publisher``): only its
    counters. A Protocol, so telemetry never imports the transport."""

    @property
    def stats(self) -> Any: ...


class AgentCollector:
    name = "agent"

    def __init__(
        self,
        outbox: Outbox,
        publisher: Callable[[], PublisherView],
        held: Callable[[], tuple[int, int]],
    ) -> None:
        self.outbox = outbox
        self.publisher = publisher
        self.held = held
        self._proc = psutil.Process()

    def gather(self, acc: Accumulator) -> None:
        ob = self.outbox.stats()
        pub = self.publisher().stats
        held, held_dropped = self.held()
        with self._proc.oneshot():
            cpu = self._proc.cpu_times()
            rss = self._proc.memory_info().rss
            threads = self._proc.num_threads()
            fds = self._proc.num_fds()
        acc.add_metrics("agent", {
            "outbox": {
                "depth": ob.depth,
                "bytes": ob.bytes,
                "oldest_age_s": round(age_s(ob.oldest_ts), 3) if ob.oldest_ts else None,
                "dropped_total": ob.dropped_total + held_dropped,
                "held_in_memory": held,
                "last_seq": ob.last_seq,
                "quarantined_total": ob.quarantined_total,
            },
            "mqtt": {
                "connected": pub.connected,
                "protocol": pub.protocol or None,
                "session": pub.session,
                "reconnects_total": pub.reconnects_total,
                "connect_failures_total": pub.connect_failures_total,
                "published_total": pub.published_total,
                "acked_total": pub.acked_total,
                "publish_failures_total": pub.publish_failures_total,
                "inflight": pub.inflight,
            },
            "process": {
                "cpu_s": round(cpu.user + cpu.system, 3),
                "rss_bytes": rss,
                "threads": threads,
                "fds": fds,
            },
        })
