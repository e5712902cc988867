"""The MQTT contract, end to end against a real Mosquitto: topics, schemas, retained state."""

from __future__ import annotations

import itertools
import json
import re
import signal

from agent.records import KINDS
from tests.support import (
    REPO,
    Broker,
    Subscriber,
    assert_no_loss,
    retained,
    schema_errors,
    wait_until,
)

PREFIX = "classroom/v1/school-a/room-101"


def test_every_kind_arrives_and_validates(broker: Broker, subscriber: Subscriber,
                                          agent_factory) -> None:
    agent = agent_factory().start()
    subscriber.wait_for(
        lambda ms: {m.topic.rsplit("/", 1)[1] for m in ms} >= set(KINDS),
        30, f"messages of every kind ({', '.join(KINDS)})")
    msgs = subscriber.snapshot()
    problems = [e for m in msgs for e in schema_errors(m)]
    assert not problems, "\n".join(problems[:20])
    for m in subscriber.snapshot("metrics"):  # the daemon always adds its own health section
        assert {"cpu", "memory", "disks", "network", "host", "agent"} <= m.payload["data"].keys()
    topics = {m.topic for m in msgs}
    assert topics <= {f"{PREFIX}/{k}" for k in KINDS}
    started = [m for m in subscriber.snapshot("event")
               if m.payload["data"]["type"] == "agent_started"]
    assert started and started[0].payload["data"]["details"]["previous_stop"] == "clean"
    assert agent.stop() == 0
    # Everything the agent sent while it ran has a unique, gap-free sequence.
    assert_no_loss(subscriber.seqs())
    problems = [e for m in subscriber.snapshot() for e in schema_errors(m)]
    assert not problems, "\n".join(problems[:20])


def test_state_inventory_and_schedule_are_retained(broker: Broker, agent_factory) -> None:
    agent = agent_factory().start()
    wait_until(lambda: agent.status()["outbox"]["last_seq"] >= 3, 20, "first records")
    state = wait_until(lambda: retained(broker.port, f"{PREFIX}/state"), 20, "retained state")
    assert state["data"]["status"] == "online" and "seq" not in state
    inv = wait_until(lambda: retained(broker.port, f"{PREFIX}/inventory"), 20, "inventory")
    assert inv["data"]["agent"]["config_hash"] == agent.status()["agent"]["config_hash"]
    # No timetable: the schedule says so (no lessons planned), retained like the inventory.
    plan = wait_until(lambda: retained(broker.port, f"{PREFIX}/schedule"), 20, "schedule")
    assert plan["data"]["lessons"] == [] and plan["data"]["timetable"] is None
    metrics = retained(broker.port, f"{PREFIX}/metrics", timeout=1.0)
    assert metrics is None, "metrics must not be retained"


def test_last_will_marks_offline_and_birth_marks_online(broker: Broker, subscriber: Subscriber,
                                                        agent_factory) -> None:
    agent = agent_factory().start()
    online = wait_until(
        lambda: (s := retained(broker.port, f"{PREFIX}/state")) and s["data"]["status"] == "online"
        and s, 20, "online state")
    agent.kill()  # SIGKILL: no goodbye, the broker publishes the will
    offline = wait_until(
        lambda: (s := retained(broker.port, f"{PREFIX}/state")) and s["data"]["status"] == "offline"
        and s, 20, "offline state written by the last will")
    assert offline["data"]["reason"] == "connection_lost"
    assert offline["data"]["session"] == online["data"]["session"]
    agent.start()
    back = wait_until(
        lambda: (s := retained(broker.port, f"{PREFIX}/state")) and s["data"]["status"] == "online"
        and s, 20, "online again")
    assert back["data"]["session"] > online["data"]["session"]
    unclean = subscriber.wait_for(
        lambda ms: [m for m in ms if m.topic.endswith("/event")
                    and m.payload["data"]["type"] == "agent_started"
                    and m.payload["data"]["details"]["previous_stop"] == "unclean"],
        20, "agent_started reporting the unclean stop")
    assert unclean[0].payload["data"]["severity"] == "warning"


def test_sigterm_flushes_and_says_goodbye(broker: Broker, subscriber: Subscriber,
                                          agent_factory) -> None:
    agent = agent_factory().start()
    wait_until(lambda: agent.status()["broker"]["connected"], 20, "connection")
    agent.signal(signal.SIGTERM)
    assert agent.proc.wait(20) == 0
    state = retained(broker.port, f"{PREFIX}/state")
    assert state["data"]["status"] == "offline" and state["data"]["reason"] == "shutdown"
    last_seq = max(subscriber.seqs())
    # After a clean stop nothing remains queued: the next start sends only new records.
    agent.start()
    wait_until(lambda: agent.status()["outbox"]["last_seq"] > last_seq, 20, "new records")
    ev = subscriber.wait_for(
        lambda ms: [m for m in ms if m.topic.endswith("/event")
                    and m.payload["data"]["type"] == "agent_started"
                    and m.payload["seq"] > last_seq], 20, "second agent_started")
    assert ev[0].payload["data"]["details"]["previous_stop"] == "clean"


def test_documented_event_types_are_the_schemas() -> None:
    """docs/contract.md's event table and agent/schemas/event.json name the same types."""
    table = (REPO / "docs" / "contract.md").read_text()
    rows = re.findall(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)*) \| (?:info|warning|error)", table, re.M)
    documented = {name for row in rows for name in re.findall(r"`([a-z_]+)`", row)}
    schema = json.loads((REPO / "agent" / "schemas" / "event.json").read_text())
    enums: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            enum = node.get("properties", {}).get("type", {}).get("enum")
            if enum:
                enums.update(enum)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert enums, "no event type enum found in the schema"
    assert documented - enums == set(), "documented but not in the schema"
    assert enums - documented == set(), "in the schema but not documented"


def test_the_online_state_is_republished_every_state_refresh_s(subscriber: Subscriber,
                                                              agent_factory) -> None:
    """For brokers that keep retained messages from wildcard subscriptions (RabbitMQ): the
    state comes again on its own deadline, also with nothing else to send (metrics hourly)."""
    agent_factory(mqtt={"state_refresh_s": 1, "keepalive_s": 60},
                  telemetry={"interval_s": 3600}).start()
    online = subscriber.wait_for(
        lambda ms: len(s := [m for m in ms if m.topic == f"{PREFIX}/state"]) >= 3 and s, 20,
        "the state published at connect and twice again")
    gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(online)]
    assert all(0.7 < g < 3.0 for g in gaps), gaps
    assert {m.payload["data"]["session"] for m in online} == {online[0].payload["data"]["session"]}
