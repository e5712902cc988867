"""The contract on the other brokers a region may run: NATS's MQTT support (2.9) and RabbitMQ's
MQTT plugin (3.10), each started by the test on free ports (tests/brokers.py), both MQTT 3.1.1
only. On each, with the real agent: telemetry arrives with every seq; a command reaches the agent
and is answered; a consumer that subscribes late on a wildcard still learns the terminal's state
and inventory (retained on NATS, republished on RabbitMQ, which keeps retained messages from
wildcard subscriptions); shared subscriptions deliver nothing; the last will arrives on SIGKILL;
a command sent while the terminal is away runs when it is back; the restart goes straight to
MQTT 3.1.1 (the fallback is remembered). docs/contract.md, "Brokers", says what works where.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.brokers import NatsBroker, RabbitBroker
from tests.support import (
    AgentProcess,
    Subscriber,
    assert_no_loss,
    schema_errors,
    wait_until,
)

pytestmark = pytest.mark.slow
BASE = "classroom/v1/school-a/room-101"
V311 = mqtt.MQTTv311


class Platform:
    """The platform's side on an MQTT 3.1.1 broker: publishes commands at QoS 1."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="platform-test",
                                  protocol=V311)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def command(self, name: str, request_id: str) -> None:
        info = self.client.publish(f"{BASE}/cmd/{name}", json.dumps({"id": request_id}), qos=1)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _reply(sub: Subscriber, request_id: str) -> dict[str, Any]:
    return sub.wait_for(lambda ms: [m.payload for m in ms if m.topic == f"{BASE}/reply"
                                    and m.payload.get("id") == request_id],
                        30, f"the reply to {request_id}")[0]


def _states(sub: Subscriber, status: str) -> list[dict[str, Any]]:
    return [m.payload["data"] for m in sub.snapshot("state")
            if m.raw and m.payload["data"]["status"] == status]


def _mqtt5_attempts(agent: AgentProcess) -> int:
    return len(re.findall(r"connecting to \S+ \(MQTT 5,", agent.log_text()))


def _exercise(port: int, workdir: Path, retained_to_wildcards: bool,
              broker_log: Any = None) -> None:
    sub = Subscriber(port, protocol=V311)
    # A shared subscription, as an MQTT 5 collector would make: neither broker shares (3.1.1
    # has no such thing; both take "$share/..." as a plain topic that nothing is published to).
    shared = Subscriber(port, topic="$share/collectors/classroom/v1/#", protocol=V311)
    platform = Platform(port)
    agent = AgentProcess(workdir / "agent", port,
                         mqtt={"state_refresh_s": 2, "flush_on_exit_s": 3},
                         telemetry={"interval_s": 0.5, "usage_interval_s": 2,
                                    "inventory_check_s": 0.5, "inventory_refresh_s": 2})
    late = None
    try:
        agent.start()
        link = wait_until(lambda: (s := agent.status())["broker"]["connected"] and s["broker"],
                          30, "the agent to connect")
        # MQTT 3.1.1 after MQTT 5 failed, and no stale error once connected.
        assert link["protocol"] == "3.1.1" and link["last_error"] is None, link
        assert _mqtt5_attempts(agent) == 1

        # Telemetry, and a command answered.
        sub.wait_for(lambda ms: {m.topic.rsplit("/", 1)[1] for m in ms}
                     >= {"state", "inventory", "schedule", "metrics", "event"}, 30,
                     "every kind of record")
        platform.command("report_now", "b-1")
        reply = _reply(sub, "b-1")
        assert reply["ok"] is True and reply["command"] == "report_now", reply

        # A consumer that subscribes now, on a wildcard, learns state and inventory: retained
        # (NATS) or republished within state_refresh_s / inventory_refresh_s (RabbitMQ).
        late = Subscriber(port, protocol=V311, client_id="late-collector")
        late.wait_for(lambda ms: {m.topic.rsplit("/", 1)[1] for m in ms if m.raw}
                      >= {"state", "inventory"}, 15, "state and inventory at a late consumer")
        kept = {m.topic.rsplit("/", 1)[1] for m in late.snapshot() if m.retain}
        assert kept == ({"state", "inventory", "schedule"} if retained_to_wildcards else set())

        # The last will on SIGKILL.
        online = _states(sub, "online")[-1]
        agent.kill()
        will = sub.wait_for(lambda _m: _states(sub, "offline"), 20, "the last will")[-1]
        assert will["reason"] == "connection_lost" and will["session"] == online["session"]

        # A command sent while the terminal is away waits in its persistent session.
        platform.command("report_now", "b-2")
        frame_errors = broker_log().count("cannot parse a frame") if broker_log else 0
        agent.start()
        assert _reply(sub, "b-2")["ok"] is True
        assert _mqtt5_attempts(agent) == 1, "the restart went straight to 3.1.1"
        if broker_log:
            assert broker_log().count("cannot parse a frame") == frame_errors
        assert agent.stop() == 0
        wait_until(lambda: _states(sub, "offline")[-1]["reason"] == "shutdown", 10,
                   "the offline state of a clean stop")

        # Every record, in order, valid against the schemas.
        assert_no_loss(sub.seqs())
        problems = [e for m in sub.snapshot() if m.raw and "/cmd/" not in m.topic
                    for e in schema_errors(m)]
        assert not problems, problems[:5]
        assert shared.snapshot() == []
    finally:
        agent.kill()
        platform.close()
        sub.close()
        shared.close()
        if late is not None:
            late.close()


def test_the_contract_on_nats(nats_broker: NatsBroker, rabbitmq_launch: object,
                              tmp_path: Path) -> None:
    # rabbitmq_launch: RabbitMQ boots meanwhile (several seconds), for the next test.
    _exercise(nats_broker.port, tmp_path, retained_to_wildcards=True)


def test_the_contract_on_rabbitmq(rabbitmq_broker: RabbitBroker, tmp_path: Path) -> None:
    _exercise(rabbitmq_broker.port, tmp_path, retained_to_wildcards=False,
              broker_log=rabbitmq_broker.broker_log)
    assert rabbitmq_broker.broker_log().count("cannot parse a frame") > 0, \
        "the first start tried MQTT 5 once (the broker logged its frame errors)"
