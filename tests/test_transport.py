"""Transport options against a real Mosquitto: TLS (CA, client certificates), passwords, 3.1.1.

Certificates are generated at run time with the openssl command line; the broker gets one plain
listener for the test's own subscriber and one secured listener for the agent.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    AgentProcess,
    Broker,
    Subscriber,
    make_ca,
    make_cert,
    make_password_file,
    secure_broker,
    wait_until,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    make_cert(d, "client", "ca", "room-101", "DNS:room-101")
    make_cert(d, "rogue", "other-ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    return d


def _secure_broker(tmp_path: Path, listener: str) -> tuple[Broker, int]:
    return secure_broker(tmp_path / "broker", listener)


@pytest.fixture
def cleanup() -> Iterator[list]:
    things: list = []
    yield things
    for t in reversed(things):
        (t.kill if isinstance(t, AgentProcess) else t.stop)()


def _agent(tmp_path: Path, port: int, mqtt: dict) -> AgentProcess:
    return AgentProcess(tmp_path / "agent", port, mqtt={"port": port, **mqtt})


def _delivers(agent: AgentProcess, sub: Subscriber) -> None:
    wait_until(lambda: agent.status()["broker"]["connected"], 30, "a secured connection")
    sub.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/metrics")], 20, "metrics")


def test_tls_with_the_right_ca(tmp_path: Path, pki: Path, cleanup: list) -> None:
    broker, port = _secure_broker(tmp_path, f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\n"
                                            f"keyfile {pki}/server.key\nallow_anonymous true")
    cleanup.append(broker)
    sub = Subscriber(broker.port)
    agent = _agent(tmp_path, port, {"host": "localhost", "tls": {"ca_file": f"{pki}/ca.crt"}})
    cleanup.append(agent)
    agent.start()
    _delivers(agent, sub)
    assert agent.status()["broker"]["tls"] is True
    sub.close()


@pytest.mark.parametrize("case", ["other_ca", "wrong_name"])
def test_tls_refuses_an_untrusted_server(tmp_path: Path, pki: Path, cleanup: list,
                                         case: str) -> None:
    cert = "rogue" if case == "other_ca" else "client"  # client.crt names room-101, not localhost
    broker, port = _secure_broker(tmp_path, f"cafile {pki}/ca.crt\ncertfile {pki}/{cert}.crt\n"
                                            f"keyfile {pki}/{cert}.key\nallow_anonymous true")
    cleanup.append(broker)
    agent = _agent(tmp_path, port, {"host": "localhost", "tls": {"ca_file": f"{pki}/ca.crt"}})
    cleanup.append(agent)
    agent.start()
    s = wait_until(lambda: (s := agent.status())["broker"]["connect_failures_total"] >= 2 and s,
                   30, "failed TLS attempts")
    assert not s["broker"]["connected"]
    assert "certificate" in s["broker"]["last_error"].lower()
    assert s["outbox"]["depth"] > 0, "records wait in the outbox, they are not lost"


def test_client_certificate(tmp_path: Path, pki: Path, cleanup: list) -> None:
    broker, port = _secure_broker(
        tmp_path, f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
                  "require_certificate true\nuse_identity_as_username true\n"
                  "allow_anonymous false")
    cleanup.append(broker)
    sub = Subscriber(broker.port)
    agent = _agent(tmp_path, port, {"host": "localhost", "tls": {
        "ca_file": f"{pki}/ca.crt", "cert_file": f"{pki}/client.crt",
        "key_file": f"{pki}/client.key"}})
    cleanup.append(agent)
    agent.start()
    _delivers(agent, sub)
    sub.close()


def test_username_and_password_file(tmp_path: Path, cleanup: list) -> None:
    passwd = make_password_file(tmp_path / "passwd", {"room-101": "Corr3ct-horse"})
    broker, port = _secure_broker(tmp_path, f"password_file {passwd}\nallow_anonymous false")
    cleanup.append(broker)
    sub = Subscriber(broker.port)
    secret = tmp_path / "mqtt-password"
    secret.write_text("wrong-password\n")
    agent = _agent(tmp_path, port, {"username": "room-101", "password_file": str(secret)})
    cleanup.append(agent)
    agent.start()
    s = wait_until(lambda: (s := agent.status())["broker"]["connect_failures_total"] >= 1 and s,
                   30, "a refused login")
    assert "not authorized" in s["broker"]["last_error"].lower() or "bad user" in \
        s["broker"]["last_error"].lower()
    # The technician fixes the file; the next attempt reads it again, no restart needed.
    secret.write_text("Corr3ct-horse\n")
    _delivers(agent, sub)
    assert "Corr3ct-horse" not in agent.log_text()
    sub.close()


def test_mqtt_311(broker: Broker, subscriber: Subscriber, agent_factory) -> None:
    agent = agent_factory(mqtt={"protocol": "3.1.1"}).start()
    _delivers(agent, subscriber)
    assert agent.status()["broker"]["protocol"] == "3.1.1"
