"""A network path that silently stops (no FIN, no RST) between the agent and the broker.

The agent talks to Mosquitto through :class:`BlackholeProxy`; the test's subscriber talks to the
broker directly, so it witnesses what the agent delivered before, during and after each outage.
"""

from __future__ import annotations

import time

from tests.faults.proxy import BlackholeProxy
from tests.support import Subscriber, assert_no_loss, delivery, wait_until, witnessed

KEEPALIVE_S = 5


def _connected(agent) -> bool:
    return bool(agent.status()["broker"]["connected"])


def test_blackhole_is_noticed_within_keepalive_and_loses_nothing(
        subscriber: Subscriber, proxy: BlackholeProxy, agent_factory) -> None:
    agent = agent_factory(mqtt={"port": proxy.port, "keepalive_s": KEEPALIVE_S},
                          telemetry={"interval_s": 0.2}).start()
    wait_until(lambda: len(subscriber.seqs()) >= 10, 30, "the first records through the proxy")
    detected, returned = [], []
    for outage_s in (12.0, 16.0):
        wait_until(lambda: _connected(agent), 30, "the agent connected before the outage")
        time.sleep(1.0)
        began = time.monotonic()
        proxy.blackhole()
        wait_until(lambda: not _connected(agent), 3 * KEEPALIVE_S, "the agent to notice")
        detected.append(time.monotonic() - began)
        assert "connection lost" in agent.status()["broker"]["last_error"]
        time.sleep(max(0.0, outage_s - detected[-1]))
        assert agent.status()["outbox"]["depth"] > 0, "records must wait in the outbox"
        proxy.resume()
        back = time.monotonic()
        wait_until(lambda: _connected(agent), 30, "the agent to reconnect")
        returned.append(time.monotonic() - back)
    witnessed(agent, subscriber)
    seen = delivery(subscriber.snapshot())
    print(f"\nblackhole, keepalive {KEEPALIVE_S} s: noticed after "
          f"{', '.join(f'{d:.1f}' for d in detected)} s; reconnected "
          f"{', '.join(f'{r:.1f}' for r in returned)} s after the path returned; "
          f"{seen.summary()}; {proxy.dropped_bytes} bytes black-holed")
    assert max(detected) <= 1.5 * KEEPALIVE_S, f"noticed too late: {detected}"
    assert proxy.dropped_bytes > 0, "the proxy must really have swallowed traffic"
    assert_no_loss(subscriber.seqs())
