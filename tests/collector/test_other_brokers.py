"""The whole chain (the agent's publisher and outbox, a collector, PostgreSQL) on the other
brokers a region may run, MQTT 3.1.1 only: RabbitMQ's MQTT plugin (3.10) and NATS's MQTT support
(2.9), each started by the test (tests/brokers.py; skipped with the reason when not installed).

What is proven on each: a backlog goes as `batch` messages and is stored record by record; the
collector's persistent session (3.1.1 ``clean_session=false``) keeps what the broker owes it
while it is SIGKILLed, and its manual acknowledgements after commit make the broker send again
what it had not stored; nothing lost, no duplicate row, no open gap. Shared subscriptions do not
exist there (3.1.1): one collector per broker, ``subscription.group: ""``
(docs/scale.md, "Other brokers").
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from agent.config import MqttConfig, OutboxConfig
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.records import Envelope, Record
from tests.platform_support import CollectorProcess, stored_seqs, swept
from tests.support import wait_until

pytestmark = pytest.mark.slow
ENVELOPE = Envelope("room-101", "school-a")


@pytest.mark.parametrize("broker_name", ["rabbitmq_broker", "nats_broker"])
def test_the_chain_on_a_311_broker(broker_name: str, request: pytest.FixtureRequest,
                                   tmp_path: Path, database: str) -> None:
    port = request.getfixturevalue(broker_name).port
    collector = CollectorProcess(tmp_path / "collector", port, database,
                                 mqtt={"protocol": "3.1.1"}, subscription={"group": ""})
    outbox = Outbox(tmp_path / "agent", OutboxConfig(), ENVELOPE)
    outbox.append([Record("metrics", {}) for _ in range(300)])  # a backlog before connecting
    pub = Publisher(MqttConfig(host="127.0.0.1", port=port, protocol="3.1.1", keepalive_s=5,
                               reconnect_min_s=0.2, reconnect_max_s=1.0),
                    ENVELOPE, outbox, tmp_path / "agent", 60.0, time.time())
    conn = psycopg.connect(database, autocommit=True)
    try:
        collector.start()
        pub.start()
        wait_until(lambda: len(stored_seqs(conn, "school-a", "room-101")) >= 300, 60,
                   "the backlog stored")
        # In batch messages: the collector received far fewer messages than it stored records.
        def counters() -> tuple[int, int]:
            row = conn.execute("SELECT stats -> 'ingest' FROM collector_instances").fetchone()
            return (row[0]["received"], row[0]["stored"]) if row else (0, 0)

        wait_until(lambda: counters()[1] == 300, 10, "the collector's heartbeat")
        assert counters()[0] <= 300 // 50 + 2, counters()

        # SIGKILLed with a batch received and not committed (the table held, as in
        # test_faults.py): nothing of it was acknowledged, so the broker sends it again.
        with psycopg.connect(database) as holder:
            holder.execute("LOCK TABLE metrics IN SHARE MODE")
            outbox.append([Record("metrics", {}) for _ in range(300)])
            pub.notify()
            wait_until(lambda: outbox.stats().depth == 0, 30, "the broker to take the records")
            wait_until(lambda: conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                            ).fetchone() != (0,), 30, "a batch waiting")
            collector.kill()
        # More while it is down: the broker keeps them for its persistent session.
        outbox.append([Record("metrics", {}) for _ in range(300)])
        pub.notify()
        wait_until(lambda: outbox.stats().depth == 0, 30, "the broker to take the records")
        assert len(stored_seqs(conn, "school-a", "room-101")) == 300
        collector.start()
        wait_until(lambda: len(stored_seqs(conn, "school-a", "room-101")) >= 900, 60,
                   "what the broker kept for the collector's session")
        wait_until(lambda: swept(conn), 30, "the gap tracker")
        assert stored_seqs(conn, "school-a", "room-101") == list(range(1, 901))
        gaps = conn.execute("SELECT count(*) FROM seq_gaps WHERE closed_at IS NULL").fetchone()
        quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()
        assert gaps == (0,) and quarantined == (0,)
        # The terminal's state reached the collector live (RabbitMQ hands no retained message to
        # a wildcard subscription, so it comes from the publication itself).
        state = conn.execute("SELECT status FROM terminals").fetchone()
        assert state == ("online",)
        assert pub.stats.acked_total == 900
    finally:
        pub.stop(flush_s=0)
        outbox.close()
        collector.kill()
        conn.close()
