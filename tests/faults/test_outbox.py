"""The outbox under faults: the broker unreachable from the start, the bound reached, the file
corrupted on disk. Each runs the real agent against the fixture's Mosquitto."""

from __future__ import annotations

import time
from pathlib import Path

from agent.config import OutboxConfig
from agent.outbox import Outbox
from agent.records import Envelope, Record, rfc3339
from tests.support import Broker, Subscriber, assert_no_loss, drained, wait_until, witnessed


def test_agent_starts_and_collects_with_the_broker_down(broker: Broker, subscriber: Subscriber,
                                                        agent_factory) -> None:
    """pyCA would not start while its server was unreachable; we must."""
    broker.stop()  # a clean stop saves the subscriber's session, so it witnesses everything
    agent = agent_factory(telemetry={"interval_s": 0.2}).start()
    wait_until(lambda: agent.status()["outbox"]["depth"] >= 10, 30, "records queued offline")
    s = agent.status()
    assert not s["broker"]["connected"] and s["broker"]["last_error"]
    assert any("Not connected to the broker" in w for w in s["warnings"])
    broker.start()
    witnessed(agent, subscriber)
    assert_no_loss(subscriber.seqs())
    first = min(subscriber.snapshot(), key=lambda m: m.payload.get("seq", 1e9))
    assert first.payload["historical"] is True


def test_outbox_bound_drops_oldest_first_and_reports_it(broker: Broker, subscriber: Subscriber,
                                                        agent_factory) -> None:
    broker.stop()
    agent = agent_factory(telemetry={"interval_s": 0.1},
                          outbox={"max_records": 10}).start()
    wait_until(lambda: agent.status()["outbox"]["dropped_total"] >= 20, 30, "drops at the bound")
    before = agent.status()["outbox"]
    assert before["depth"] <= 10
    broker.start()
    witnessed(agent, subscriber)
    metrics = subscriber.wait_for(
        lambda ms: [m for m in ms if m.topic.endswith("/metrics")
                    and m.payload["data"]["agent"]["outbox"]["dropped_total"] > 0],
        20, "metrics reporting the drop count")
    reported = max(m.payload["data"]["agent"]["outbox"]["dropped_total"] for m in metrics)
    assert reported >= before["dropped_total"] >= 20
    seqs = set(subscriber.seqs())
    dropped = agent.status()["outbox"]["dropped_total"]
    missing = set(range(1, max(seqs) + 1)) - seqs
    # The oldest records went first: what is missing is exactly seq 1..n.
    assert missing == set(range(1, len(missing) + 1))
    assert_no_loss(subscriber.seqs(), first=len(missing) + 1)  # and everything after arrived
    # The count never under-reports. It may over-report by the few records that were already
    # handed to the broker when the bound removed them (at most the 10 that were queued).
    assert len(missing) <= dropped <= len(missing) + 10


def test_corrupt_outbox_is_quarantined_and_reported(subscriber: Subscriber,
                                                    agent_factory) -> None:
    agent = agent_factory()
    state = agent.workdir / "state"
    state.mkdir(parents=True)
    garbage = b"this is not a database" * 500
    (state / "outbox.db").write_bytes(garbage)
    agent.start()
    ev = subscriber.wait_for(
        lambda ms: [m for m in ms if m.topic.endswith("/event")
                    and m.payload["data"]["type"] == "outbox_corrupted"], 30, "corruption event")
    assert ev[0].payload["data"]["severity"] == "error"
    aside = list(state.glob("outbox.corrupt-*.db"))
    assert aside and aside[0].read_bytes() == garbage, "the corrupt file must be kept as it was"
    s = agent.status()
    assert s["outbox"]["quarantined_total"] == 1
    assert any("quarantined" in w for w in s["warnings"])
    wait_until(lambda: drained(agent), 30, "delivery with the new outbox")
    witnessed(agent, subscriber)
    assert_no_loss(subscriber.seqs())  # the agent carries on: records after it all arrive


def test_outbox_max_age_is_enforced_with_the_broker_down(broker: Broker, subscriber: Subscriber,
                                                         agent_factory) -> None:
    """outbox.max_age_s was documented but never applied. 30 records observed two hours ago
    wait in the outbox (a terminal that was off, its broker gone); with a one-hour bound the
    agent drops them at its first append, counts them as dropped and says so, while the fresh
    records stay; when the broker returns only fresh records arrive."""
    broker.stop()
    agent = agent_factory(telemetry={"interval_s": 0.5}, outbox={"max_age_s": 3600})
    state = Path(agent.config["state_dir"])
    old = Outbox(state, OutboxConfig(), Envelope("room-101", "school-a"))
    stale = time.time() - 7200
    old.append([Record("metrics", {"n": i}, stale + i) for i in range(30)])
    old.close()
    agent.start()
    s = wait_until(lambda: (s := agent.status())["outbox"]["dropped_total"] >= 30 and s, 30,
                   "the old records dropped")
    assert s["outbox"]["dropped_total"] == 30 and s["outbox"]["depth"] >= 1
    assert s["outbox"]["oldest_age_s"] < 60
    assert any(w["code"] == "outbox_dropped" for w in s["warning_details"])
    assert "observed more than 3600 s ago" in agent.log_text()
    broker.start()
    witnessed(agent, subscriber)
    assert min(subscriber.seqs()) > 30, "the expired records were never sent"
    assert all(m.payload["ts"] > rfc3339(stale + 3600) for m in subscriber.snapshot("metrics"))
