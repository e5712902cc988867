"""The broker SIGKILLed and restarted over and over while the agent publishes ~10 records/s.

The long version is ``bench/broker_chaos.py``; this one runs about a minute.
"""

from __future__ import annotations

import random

from tests.faults.chaos import broker_chaos
from tests.support import Broker, Subscriber, schema_errors


def test_broker_killed_in_a_loop_loses_nothing_and_keeps_order(
        broker: Broker, subscriber: Subscriber, agent_factory) -> None:
    agent = agent_factory(telemetry={"interval_s": 0.1}).start()
    run = broker_chaos(broker, agent, subscriber, seconds=60, rng=random.Random(4))
    print("\n" + run.report())
    assert run.kills >= 10
    assert not run.seen.lost, f"records lost: {run.seen.lost[:20]}"
    assert not run.seen.out_of_order, f"out of order: {run.seen.out_of_order[:10]}"
    assert run.seen.received >= run.published >= 300
    assert run.reconnects >= run.kills
    historical = [m for m in subscriber.snapshot() if m.payload.get("historical")]
    assert historical, "records sent from the backlog must be marked historical"
    assert not [e for m in subscriber.snapshot() for e in schema_errors(m)]
