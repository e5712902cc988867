"""The MQTT version choice: a fallback to 3.1.1 is remembered for a day and for one broker.

Unit tests with a fake clock; tests/test_brokers.py proves it against NATS and RabbitMQ (a
restart makes no MQTT 5 attempt, so RabbitMQ logs no new frame errors).
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.config import MqttConfig, TlsConfig
from agent.mqttversion import RETRY_V5_S, STATE_FILE, ProtocolChoice

RABBIT = MqttConfig(host="mq.county.example", port=1883)


class Wall:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _fall_back(choice: ProtocolChoice) -> None:
    assert choice.next_attempt() is True
    choice.closed_before_connack()  # RabbitMQ 3.10 drops an MQTT 5 CONNECT without an answer
    assert choice.next_attempt() is False
    choice.connected()


def test_a_fallback_is_remembered_across_restarts_for_a_day(tmp_path: Path) -> None:
    wall = Wall()
    _fall_back(ProtocolChoice(RABBIT, tmp_path, wall))
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert saved["protocol"] == "3.1.1" and saved["broker"] == "mq.county.example:1883 plain"
    wall.now += 3600
    again = ProtocolChoice(RABBIT, tmp_path, wall)
    assert again.next_attempt() is False and again.remembered
    again.closed_before_connack()  # a flaky link during a remembered 3.1.1 attempt...
    assert again.next_attempt() is False  # ...does not send MQTT 5 to the broker again
    wall.now += RETRY_V5_S
    assert again.next_attempt() is True, "after a day MQTT 5 gets another chance"
    again.unsupported()
    assert again.next_attempt() is False
    again.connected()
    assert json.loads((tmp_path / STATE_FILE).read_text())["since"] == wall.now


def test_another_broker_or_tls_tries_mqtt5_again(tmp_path: Path) -> None:
    wall = Wall()
    _fall_back(ProtocolChoice(RABBIT, tmp_path, wall))
    assert ProtocolChoice(MqttConfig(host="emqx.county.example", port=1883), tmp_path,
                          wall).next_attempt() is True
    with_tls = MqttConfig(host=RABBIT.host, port=RABBIT.port, tls=TlsConfig(enabled=True))
    assert ProtocolChoice(with_tls, tmp_path, wall).next_attempt() is True


def test_mqtt5_success_forgets_and_forced_versions_ignore_the_memory(tmp_path: Path) -> None:
    wall = Wall()
    _fall_back(ProtocolChoice(RABBIT, tmp_path, wall))
    wall.now += RETRY_V5_S  # the broker was upgraded meanwhile
    upgraded = ProtocolChoice(RABBIT, tmp_path, wall)
    assert upgraded.next_attempt() is True
    upgraded.connected()
    assert not (tmp_path / STATE_FILE).exists()
    _fall_back(ProtocolChoice(RABBIT, tmp_path, wall))
    forced = MqttConfig(host=RABBIT.host, port=RABBIT.port, protocol="5")
    assert ProtocolChoice(forced, tmp_path, wall).next_attempt() is True


def test_a_corrupt_memory_means_trying_mqtt5(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    assert ProtocolChoice(RABBIT, tmp_path, Wall()).next_attempt() is True
