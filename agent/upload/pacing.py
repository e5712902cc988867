"""A token bucket: the upload's bandwidth cap, shared by every request it sends.

The cap protects the school's link, which the live lessons of this and the other classrooms use:
``take(n)`` sleeps until ``n`` bytes fit under ``rate`` bytes per second. The burst is small
(a quarter of a second of the rate, at least one block) so the link never sees a spike that a
live stream's buffer would feel. ``rate`` can change while it runs (a config reload).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate_bps: float, burst_s: float = 0.25, min_burst: int = 64 * 1024,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep
        self.burst_s, self.min_burst = burst_s, min_burst
        self.rate = 0.0
        self.set_rate(rate_bps)
        self._tokens = self._burst
        self._last = clock()

    def set_rate(self, rate_bps: float) -> None:
        """Bytes per second; 0 or less: no cap."""
        with self._lock:
            self.rate = max(0.0, float(rate_bps))
            self._burst = max(self.min_burst, self.rate * self.burst_s)

    def take(self, n: int) -> None:
        """Take ``n`` bytes' worth; sleeps off whatever the bucket did not hold."""
        with self._lock:
            if self.rate <= 0:
                return
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            debt = -self._tokens
        if debt > 0:
            self._sleep(debt / self.rate)
