"""The broker SIGKILLed and restarted in a loop under a fast-publishing agent (CI and bench).

The broker keeps a persistence file (autosave every second) and the test's subscriber a
persistent session, so what it misses while the broker is down reaches it after the restart.
A broker killed before it has saved loses what it acknowledged but had not yet passed on: that
would be the broker's loss, not the agent's. So each kill waits until the subscriber is
connected again (and the agent too, so that every kill cuts a live connection), and falls at a
random moment of the "up" time that follows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.support import (
    AgentProcess,
    Broker,
    Delivery,
    Subscriber,
    delivery,
    wait_until,
    witnessed,
)


@dataclass(frozen=True)
class ChaosRun:
    kills: int
    published: int  # records the agent committed (its last seq)
    seconds: float
    reconnects: int
    seen: Delivery

    def report(self) -> str:
        return (f"broker chaos: {self.seconds:.0f} s, {self.kills} kills, {self.reconnects} "
                f"agent reconnects, {self.published} records published, {self.seen.summary()}")


def broker_chaos(broker: Broker, agent: AgentProcess, subscriber: Subscriber, seconds: float,
                 rng: random.Random, down_s: tuple[float, float] = (0.5, 3.0),
                 up_s: tuple[float, float] = (1.0, 4.0),
                 progress: Callable[[str], None] = lambda _s: None) -> ChaosRun:
    """Kill the broker at random moments for ``seconds``, then let everything drain."""
    began = time.monotonic()
    kills = 0
    while time.monotonic() - began < seconds:
        subscriber.wait_connected()
        wait_until(lambda: (agent.status() or {}).get("broker", {}).get("connected"), 60,
                   "the agent to reconnect")
        time.sleep(rng.uniform(*up_s))
        broker.kill()
        kills += 1
        time.sleep(rng.uniform(*down_s))  # the agent keeps collecting into its outbox
        broker.start()
        depth = (agent.status() or {}).get("outbox", {}).get("depth")
        progress(f"kill {kills}: {len(set(subscriber.seqs()))} received, outbox {depth}")
    published = witnessed(agent, subscriber, timeout=120)
    return ChaosRun(kills=kills, published=published, seconds=time.monotonic() - began,
                    reconnects=int(agent.status()["broker"]["reconnects_total"]),
                    seen=delivery(subscriber.snapshot()))
