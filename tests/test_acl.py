"""The example broker configuration (config/mosquitto/) enforced by a real Mosquitto.

The broker runs THAT mosquitto.conf and classroom.acl; only host paths and ports are
substituted. Real clients log in as devices ("{school}/{device}") and as the platform, and the
real agent runs under the ACL with a password and with a client certificate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.records import KINDS
from tests.support import (
    REPO,
    AgentProcess,
    Broker,
    MqttClient,
    free_port,
    make_ca,
    make_cert,
    make_password_file,
    wait_until,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")

CONF = REPO / "config" / "mosquitto"
BASE = "classroom/v1/school-a"
PASSWORDS = {"platform": "platform-pw", "school-a/room-101": "pw-101",
             "school-a/room-102": "pw-102", "school-a": "pw-school"}


class Deployment:
    def __init__(self, d: Path) -> None:
        self.dir = d
        make_ca(d, "ca")
        make_cert(d, "server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1")
        make_cert(d, "room-101", "ca", "school-a/room-101", "DNS:room-101")
        self.passwd = make_password_file(d / "passwd", PASSWORDS)
        self.password_port, self.cert_port = free_port(), free_port()
        text = (CONF / "mosquitto.conf").read_text()
        for old, new in {
            "/etc/mosquitto/passwd": str(self.passwd),
            "/etc/mosquitto/classroom.acl": str(CONF / "classroom.acl"),
            "listener 8883": f"listener {self.password_port} 127.0.0.1",
            "listener 8884": f"listener {self.cert_port} 127.0.0.1",
            "/var/lib/mosquitto/": f"{d}/",
            "log_dest syslog": "log_dest stderr",
            "/etc/mosquitto/certs/": f"{d}/",
        }.items():
            assert old in text, f"{old!r} is no longer in config/mosquitto/mosquitto.conf"
            text = text.replace(old, new)
        self.broker = Broker(d / "broker", config=text, port=self.password_port)

    def client(self, user: str) -> MqttClient:
        return MqttClient(self.password_port, user, PASSWORDS[user], ca_file=f"{self.dir}/ca.crt")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    dep = Deployment(tmp_path_factory.mktemp("deployment"))
    dep.broker.start()
    yield dep
    dep.broker.stop()


def _denied(reason: object) -> bool:
    return getattr(reason, "is_failure", False) and "authori" in str(reason).lower()


def test_the_example_refuses_anonymous_and_wrong_passwords(deployment: Deployment) -> None:
    for user, password in ((None, None), ("school-a/room-101", "wrong")):
        with pytest.raises(AssertionError, match="refused"):
            MqttClient(deployment.password_port, user, password,
                       ca_file=f"{deployment.dir}/ca.crt")


def test_a_device_publishes_only_into_its_own_topics(deployment: Deployment) -> None:
    platform = deployment.client("platform")
    other = deployment.client("school-a/room-102")
    device = deployment.client("school-a/room-101")
    school = deployment.client("school-a")  # an account named with one level only
    try:
        assert not platform.subscribe("classroom/v1/#")[0].is_failure
        assert not other.subscribe(f"{BASE}/room-102/cmd/+")[0].is_failure
        for kind in (*KINDS, "batch", "reply", "reply/x"):
            rc = device.publish(f"{BASE}/room-101/{kind}", b'{"ok": 1}')
            assert not rc.is_failure, (kind, rc)
        refused = [f"{BASE}/room-102/metrics", f"{BASE}/room-102/event", f"{BASE}/room-102/reply",
                   f"{BASE}/room-102/cmd/lesson_start", f"{BASE}/room-101/cmd/lesson_start",
                   "classroom/v1/school-b/room-101/metrics", f"{BASE}/room-101/other"]
        for topic in refused:
            assert _denied(device.publish(topic, b'{"evil": 1}')), topic
        # A one-level account reaches no device's topics (only {prefix}/school-a/metrics etc.,
        # which no device uses): the ACL lists exact kinds, never %u/#.
        for topic in (f"{BASE}/room-101/metrics", f"{BASE}/room-101/reply"):
            assert _denied(school.publish(topic, b"{}")), topic
        device.publish(f"{BASE}/room-101/event", b'{"last": 1}')  # everything before it is in
        wait_until(lambda: f"{BASE}/room-101/event" in platform.topics()
                   and platform.messages[-1].payload == {"last": 1}, 10, "the sentinel")
        seen = set(platform.topics())
        assert not seen & set(refused), seen & set(refused)
        assert all(t.startswith(f"{BASE}/room-101/") for t in seen), seen
        assert other.messages == [], "a device received a command another device published"
    finally:
        for c in (platform, other, device, school):
            c.close()


def test_a_device_cannot_read_other_devices_commands(deployment: Deployment) -> None:
    platform = deployment.client("platform")
    spy = deployment.client("school-a/room-101")
    target = deployment.client("school-a/room-102")
    try:
        assert not target.subscribe(f"{BASE}/room-102/cmd/+")[0].is_failure
        for pattern in (f"{BASE}/room-102/cmd/+", f"{BASE}/+/cmd/#", "classroom/v1/#"):
            spy.subscribe(pattern)  # refused, or granted and filtered on delivery
        assert not platform.publish(f"{BASE}/room-102/cmd/report_now", b'{"id": "x"}').is_failure
        wait_until(lambda: target.topics(), 10, "the command to reach its device")
        assert spy.messages == [], [m.topic for m in spy.messages]
    finally:
        for c in (platform, spy, target):
            c.close()


@pytest.mark.parametrize("login", ["password", "certificate"])
def test_the_agent_works_under_the_acl(tmp_path: Path, deployment: Deployment,
                                       login: str) -> None:
    d = deployment.dir
    keygen = subprocess.run([sys.executable, str(REPO / "scripts" / "send-command"), "--keygen",
                             str(tmp_path / "platform.key")], capture_output=True, timeout=60)
    assert keygen.returncode == 0, keygen.stderr
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORDS["school-a/room-101"] + "\n")
    secret.chmod(0o600)
    (d / "room-101.key").chmod(0o600)
    mqtt = ({"port": deployment.password_port, "username": "school-a/room-101",
             "password_file": str(secret), "tls": {"ca_file": f"{d}/ca.crt"}}
            if login == "password" else
            {"port": deployment.cert_port, "tls": {"ca_file": f"{d}/ca.crt",
                                                    "cert_file": f"{d}/room-101.crt",
                                                    "key_file": f"{d}/room-101.key"}})
    platform = deployment.client("platform")
    platform.subscribe("classroom/v1/#")
    agent = AgentProcess(tmp_path / "agent", deployment.password_port, mqtt=mqtt,
                         commands={"public_keys": [str(tmp_path / "platform.pub.pem")]})
    try:
        agent.start()
        wait_until(lambda: {f"{BASE}/room-101/{k}" for k in ("state", "metrics", "event")}
                   <= set(platform.topics()), 30, "the agent's telemetry at the platform")
        pw = tmp_path / "platform-pw"
        pw.write_text(PASSWORDS["platform"])
        sent = wait_until(lambda: (r := _send(deployment, tmp_path, pw)).returncode != 3 and r,
                          60, "a signed command answered under the ACL", step=0.5)
        assert sent.returncode == 0, sent.stderr
        reply = json.loads(sent.stdout)
        assert reply["ok"] and reply["result"]["seq"] >= 1
        s = agent.status()
        assert s["broker"]["publish_failures_total"] == 0 and s["broker"]["connected"]
    finally:
        agent.stop()
        platform.close()


def _send(dep: Deployment, tmp_path: Path, pw: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "send-command"), "--host", "127.0.0.1",
         "--port", str(dep.password_port), "--ca-file", f"{dep.dir}/ca.crt",
         "--username", "platform", "--password-file", str(pw),
         "--key", str(tmp_path / "platform.key"), "--school", "school-a", "--device", "room-101",
         "--timeout", "10", "report_now"], capture_output=True, text=True, timeout=60)

