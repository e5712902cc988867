"""The publisher against a real Mosquitto: what it does with each answer of the broker."""

from __future__ import annotations

import time
from pathlib import Path

from agent.config import MqttConfig, OutboxConfig
from agent.outbox import Outbox
from agent.publisher import BATCH_MAX_BYTES, Publisher
from agent.records import Envelope, Record
from tests.support import Broker, Subscriber, schema_errors, wait_until

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


def _publisher(tmp_path: Path, broker: Broker, **mqtt: object) -> tuple[Publisher, Outbox]:
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, keepalive_s=5, reconnect_min_s=0.2,
                     reconnect_max_s=0.5, **mqtt)  # type: ignore[arg-type]
    outbox = Outbox(tmp_path, OutboxConfig(), ENVELOPE)
    return Publisher(cfg, ENVELOPE, outbox, tmp_path, 60.0, time.time()), outbox


def _backlog(n: int, every_inventory: int = 0, pad: int = 0) -> list[Record]:
    out = []
    for i in range(n):
        if every_inventory and i % every_inventory == every_inventory - 1:
            out.append(Record("inventory", {"i": i}))
        elif i % 7 == 3:
            out.append(Record("event", {"type": "agent_started", "severity": "info",
                                        "message": "x" * pad}))
        else:
            out.append(Record("metrics", {"pad": "y" * pad}))
    return out


def test_a_backlog_goes_in_batches_in_seq_order_and_each_puback_deletes_its_records(
        tmp_path: Path, broker: Broker) -> None:
    """A backlog of metrics and events goes as `batch` messages of consecutive records (at most
    mqtt.batch_records), retained kinds alone on their own topic, every record once and in
    order, and the broker's PUBACKs empty the outbox."""
    sub = Subscriber(broker.port)
    pub, outbox = _publisher(tmp_path, broker, batch_records=20)
    outbox.append(_backlog(500, every_inventory=45))  # waiting before the first connection
    pub.start()
    try:
        wait_until(lambda: outbox.stats().depth == 0, 20, "the outbox to empty")
        wait_until(lambda: len(sub.seqs()) >= 500, 10, "every record at the subscriber")
        assert sub.seqs() == list(range(1, 501))
        assert sub.batches, "a backlog must go in batch messages"
        sizes = [len(b.payload["records"]) for b in sub.batches]
        assert max(sizes) == 20 and min(sizes) >= 2
        assert sum(sizes) == len([m for m in sub.snapshot() if m.batched])
        for b in sub.batches:
            assert not b.retain and b.topic == "classroom/v1/school-a/room-101/batch"
            assert schema_errors(b) == []
            seqs = [r["seq"] for r in b.payload["records"]]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "consecutive records"
            assert {r["kind"] for r in b.payload["records"]} <= {"metrics", "event"}
        inventories = sub.snapshot("inventory")
        assert len(inventories) == 11 and not any(m.batched for m in inventories)
        assert pub.stats.acked_total == 500 and pub.stats.published_total == 500
    finally:
        pub.stop(flush_s=0)
        outbox.close()
        sub.close()


def test_a_batch_stays_under_its_byte_bound(tmp_path: Path, broker: Broker) -> None:
    """Big records: a batch holds as many as fit in 128 KiB; one bigger than that goes alone."""
    sub = Subscriber(broker.port)
    pub, outbox = _publisher(tmp_path, broker)
    outbox.append(_backlog(60, pad=9000))
    outbox.append([Record("metrics", {"pad": "z" * 140_000}), *_backlog(3)])
    pub.start()
    try:
        wait_until(lambda: len(sub.seqs()) >= 64, 20, "every record at the subscriber")
        assert sub.seqs() == list(range(1, 65))
        assert all(len(b.raw) <= BATCH_MAX_BYTES for b in sub.batches)
        record = len(sub.snapshot("metrics")[0].raw)  # ~9.1 KB each
        biggest = max(sub.batches, key=lambda b: len(b.raw))
        assert len(biggest.payload["records"]) >= 2
        assert len(biggest.raw) + record > BATCH_MAX_BYTES, "filled up to the bound"
        alone = [m for m in sub.snapshot("metrics") if m.payload["seq"] == 61]
        assert len(alone) == 1 and not alone[0].batched
    finally:
        pub.stop(flush_s=0)
        outbox.close()
        sub.close()


def test_batch_records_1_sends_every_record_alone(tmp_path: Path, broker: Broker) -> None:
    sub = Subscriber(broker.port)
    pub, outbox = _publisher(tmp_path, broker, batch_records=1)
    outbox.append(_backlog(40))
    pub.start()
    try:
        wait_until(lambda: len(sub.seqs()) >= 40, 20, "every record at the subscriber")
        assert sub.seqs() == list(range(1, 41)) and not sub.batches
    finally:
        pub.stop(flush_s=0)
        outbox.close()
        sub.close()


def test_batches_lost_with_the_connection_are_sent_again_in_order(
        tmp_path: Path, broker: Broker) -> None:
    """The broker killed while batches are in flight: after the restart the agent resends from
    the oldest unacknowledged record; every record arrives, a duplicate at most, and the first
    arrival of each seq is in order."""
    sub = Subscriber(broker.port)
    pub, outbox = _publisher(tmp_path, broker, max_inflight=2, batch_records=10)
    pub.start()
    try:
        wait_until(lambda: pub.stats.connected, 10, "the publisher to connect")
        for _ in range(40):  # a steady stream, so the kill falls among batches in flight
            outbox.append(_backlog(50, pad=2000))
            pub.notify()
            time.sleep(0.02)
            if pub.stats.acked_total >= 300:
                break
        broker.kill()
        broker.start()
        sub.wait_connected()
        wait_until(lambda: outbox.stats().depth == 0, 30, "the outbox to empty")
        last = outbox.stats().last_seq
        wait_until(lambda: set(sub.seqs()) >= set(range(1, last + 1)), 15, "every record")
        firsts = list(dict.fromkeys(sub.seqs()))
        assert firsts == list(range(1, last + 1))
        assert sub.batches and pub.stats.reconnects_total >= 1
    finally:
        pub.stop(flush_s=0)
        outbox.close()
        sub.close()
