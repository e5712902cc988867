"""The publisher against a real Mosquitto: what it does with each answer of the broker."""

from __future__ import annotations

import time
from pathlib import Path

from agent.config import MqttConfig, OutboxConfig
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.records import Envelope, Record
from tests.support import Broker, Subscriber, wait_until

ENVELOPE = Envelope("room-101", "school-a")


def test_records_nobody_subscribes_to_are_kept_and_sent_again(tmp_path: Path,
                                                              broker: Broker) -> None:
    """After a restart Mosquitto 2.0 has lost the collectors' shared subscription until they
    subscribe again, and acknowledges what it gets meanwhile with "No matching subscribers":
    those records stay in the outbox and go out again once someone subscribes, none lost."""
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, keepalive_s=5, reconnect_min_s=0.2,
                     reconnect_max_s=0.5)
    outbox = Outbox(tmp_path, OutboxConfig(), ENVELOPE)
    pub = Publisher(cfg, ENVELOPE, outbox, tmp_path, 60.0, time.time())
    sub: Subscriber | None = None
    pub.start()
    try:
        wait_until(lambda: pub.stats.connected, 10, "the publisher to connect")
        outbox.append([Record("metrics", {}) for _ in range(5)])
        pub.notify()
        wait_until(lambda: pub.stats.published_total >= 10, 10,
                   "the records sent, held and sent again")
        assert outbox.stats().depth == 5 and pub.stats.acked_total == 0
        sub = Subscriber(broker.port, topic="$share/collectors/classroom/v1/#")
        outbox.append([Record("metrics", {}) for _ in range(3)])
        pub.notify()
        wait_until(lambda: outbox.stats().depth == 0, 15, "the outbox to empty")
        assert sorted(set(sub.seqs())) == list(range(1, 9))
        assert pub.stats.acked_total >= 8
    finally:
        pub.stop(flush_s=0)
        outbox.close()
        if sub is not None:
            sub.close()
