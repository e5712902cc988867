"""Rate limits for what strangers can make the agent do: a token bucket and a tally.

The same token bucket paces the upload of recordings (``take``: bytes, blocking), so the
bandwidth cap and the command limits share one implementation.

A flood of bad commands must cost the agent a counter increment, not a log line, an event in the
outbox and a reply each. :class:`TokenBucket` says whether one more of something may happen now;
:class:`Tally` reports the first occurrence at once and then one summary per window with the
counts, so a single rejection is still seen immediately and two thousand become one record.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class TokenBucket:
    """``rate`` per second on average, ``burst`` at once. Thread-safe."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False

    def take(self, n: float, sleep: Callable[[float], None] = time.sleep) -> None:
        """Take ``n`` tokens at once and sleep off what the bucket did not hold (a pacer: the
        upload's bandwidth cap takes bytes). Callers that take together share the rate."""
        with self._lock:
            self._refill()
            self._tokens -= n
            debt = -self._tokens
        if debt > 0:
            sleep(debt / self.rate)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now


@dataclass
class Summary:
    """What a :class:`Tally` reports: counts per key in the window and the latest example."""

    count: int
    by_key: dict[str, int]
    example: dict[str, Any]
    window_s: float
    #: True for the immediate report of the first occurrence, False for a window's summary.
    first: bool
    extra: Counter[str] = field(default_factory=Counter)


class Tally:
    """The first occurrence is reported at once; the ones that follow within ``window_s`` are
    counted and reported together when the window closes (by a timer, so a burst that stops is
    still summarised). Thread-safe; ``report`` runs outside the lock."""

    def __init__(self, window_s: float, report: Callable[[Summary], None]) -> None:
        self.window_s = window_s
        self.report = report
        self._lock = threading.Lock()
        self._open = False
        self._counts: Counter[str] = Counter()
        self._extra: Counter[str] = Counter()
        self._example: dict[str, Any] = {}
        self._timer: threading.Timer | None = None

    def note(self, key: str, example: dict[str, Any], **extra: int) -> None:
        with self._lock:
            if self._open:
                self._counts[key] += 1
                self._extra.update(extra)
                self._example = example
                return
            self._open = True
            self._timer = threading.Timer(self.window_s, self._close)
            self._timer.daemon = True
            self._timer.start()
        self.report(Summary(1, {key: 1}, example, 0.0, True, Counter(extra)))

    def _close(self) -> None:
        with self._lock:
            counts, extra, example = self._counts, self._extra, self._example
            self._counts, self._extra, self._example = Counter(), Counter(), {}
            self._open = False
            self._timer = None
        if counts:
            self.report(Summary(sum(counts.values()), dict(counts), example, self.window_s,
                                False, extra))

    def flush(self) -> None:
        """Report what the open window holds now (at stop)."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
        self._close()
