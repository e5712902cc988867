"""Exponential back-off with full jitter.

Ten thousand terminals that lost the same broker must not come back in the same second, so each
wait is drawn uniformly from [0, min(cap, base * 2**attempt)] (the "full jitter" of the AWS
architecture note), never the plain doubling paho does on its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base_s: float
    cap_s: float
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
