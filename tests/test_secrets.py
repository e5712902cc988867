"""Secrets stay secret: a full run with a password file and a TLS client key leaves neither in any
log line, status output or MQTT message; a secret file others can read is warned about."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from agent.config import loads
from agent.secretfiles import exposed
from agent.status.warnings import Warning, render
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
from tests.test_commands import Commander, commands_reach, wait_reply

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")

PASSWORD = "S3cret-Pa55word-never-logged"


def test_no_secret_in_logs_status_or_messages(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    make_cert(pki, "server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    make_cert(pki, "client", "ca", "room-101", "DNS:room-101")
    (pki / "client.key").chmod(0o600)
    passwd = make_password_file(tmp_path / "passwd", {"room-101": PASSWORD})
    broker, port = secure_broker(tmp_path / "broker", (
        f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
        f"require_certificate true\npassword_file {passwd}\nallow_anonymous false"))
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    sub = Subscriber(broker.port)  # the plain listener: sees everything the agent publishes
    agent = AgentProcess(tmp_path / "agent", port, mqtt={
        "port": port, "host": "localhost", "username": "room-101", "password_file": str(secret),
        "tls": {"ca_file": f"{pki}/ca.crt", "cert_file": f"{pki}/client.crt",
                "key_file": f"{pki}/client.key"}}, log_level="debug")
    cmd = Commander(broker.port)
    try:
        agent.start()
        commands_reach(agent, sub, cmd)
        cmd.send("report_now", {"id": "full-1"})
        cmd.send("lesson_stop", {"id": "full-2"})
        cmd.send("report_now", b"{broken")
        assert wait_reply(sub, "full-1")["ok"]
        assert wait_reply(sub, "full-2")["error"]["code"] == "conflict"
        agent.config["telemetry"]["interval_s"] = 0.7
        agent.write_config()
        agent.signal(signal.SIGHUP)
        sub.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/event")
                                 and m.payload["data"]["type"] == "config_reloaded"], 30,
                     "the reload")
        wait_until(lambda: agent.status()["broker"]["connected"], 30, "a reconnect after reload")
        status_json = json.dumps(agent.status())
        status_text = agent.cli("status", "--config", str(agent.config_path)).stdout
        assert "room-101" in status_text  # the CLI did reach the agent
        assert agent.stop() == 0
        sub.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/state")
                                 and m.payload["data"]["status"] == "offline"], 20,
                     "the clean offline state")
    finally:
        agent.kill()
        cmd.close()
        sub.close()
        broker.stop()
    key_lines = [line for line in (pki / "client.key").read_text().splitlines()
                 if line and not line.startswith("-----")]
    assert len(key_lines) > 10
    secrets = [PASSWORD, *key_lines]
    log = agent.log_text()
    assert "publisher: connected" in log and "reload" in log, "the log of the whole run"
    wire = [m.raw.decode(errors="replace") for m in sub.snapshot()]
    assert len(wire) > 10 and any('"kind":"reply"' in w for w in wire)
    for where, text in [("agent log", log), ("status JSON", status_json),
                        ("status text", status_text), ("MQTT messages", "\n".join(wire))]:
        leaked = [s[:12] + "..." for s in secrets if s in text]
        assert not leaked, f"secret material in the {where}: {leaked}"
    assert "secret_file_exposed" not in "\n".join(wire), "0600 files are not reported"


def test_secret_files_readable_by_others_are_reported(tmp_path: Path, broker: Broker,
                                                     subscriber: Subscriber) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    # The plain test broker takes any login, so the password file is really read and used.
    agent = AgentProcess(tmp_path / "agent", broker.port, mqtt={
        "username": "room-101", "password_file": str(secret)})
    agent.start()
    try:
        s = wait_until(lambda: (s := agent.status())["broker"]["connected"] and s, 30,
                       "a connection")
        [warning] = [w for w in s["warnings"] if "mqtt-password" in w]
        assert "readable by group or others (mode 0644)" in warning
        assert f"Next step: chmod 600 {secret}" in warning
        events = subscriber.wait_for(lambda ms: [m.payload["data"] for m in ms
                                                 if m.topic.endswith("/event") and m.payload[
                                                     "data"]["type"] == "secret_file_exposed"],
                                     20, "the secret_file_exposed event")
        assert events[0]["details"] == {"path": str(secret), "mode": "0644"}
        assert PASSWORD not in json.dumps(events) and PASSWORD not in agent.log_text()
        assert "is readable by group or others" in agent.log_text()
        res = agent.cli("status", "--config", str(agent.config_path))
        assert res.returncode == 1 and "chmod 600" in res.stdout
        # Fixed on disk and reloaded: the warning goes away.
        secret.chmod(0o600)
        agent.signal(signal.SIGHUP)
        wait_until(lambda: not [w for w in agent.status()["warnings"] if "mqtt-password" in w],
                   20, "the warning to clear after chmod and reload")
    finally:
        agent.kill()


def test_a_client_key_readable_by_the_group_is_found(tmp_path: Path) -> None:
    key, cert = tmp_path / "client.key", tmp_path / "client.crt"
    key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    cert.write_text("not read here\n")
    cfg = loads(f"device: {{id: r, school: s}}\nmqtt: {{tls: {{cert_file: {cert}, "
                f"key_file: {key}}}}}\n")
    key.chmod(0o640)
    [found] = exposed(cfg)
    assert found.what == "TLS client key" and found.mode == 0o640
    text = render(Warning("secret_file_exposed", found.params))
    assert "AAAA" not in text and f"chmod 600 {key}" in text and "(mode 0640)" in text
    key.chmod(0o600)
    assert exposed(cfg) == []
