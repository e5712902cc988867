"""`classroom-agent status` and the status endpoint, against the real agent and broker.

Exit codes of ``status``: 0 healthy, 1 running with warnings, 3 not running (2 is a bad config).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from tests.support import AgentProcess, Broker, Subscriber, drained, free_port, wait_until


def _get(agent: AgentProcess, path: str) -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.status_port}{path}", timeout=5) as r:
        return r.headers.get("Content-Type", ""), r.read().decode()


def _healthy(agent: AgentProcess) -> bool:
    s = agent.status()
    return bool(s and s["broker"]["connected"] and s["ok"] and s["telemetry"]["last_sample"])


#: A terminal as installed for production: MQTT commands only when signed (here: no key, so
#: none at all). Without it the agent warns that it takes unsigned commands.
LOCKED = {"commands": {"require_signature": True}}


def test_status_when_connected(broker: Broker, subscriber: Subscriber, agent_factory) -> None:
    # One tick at the start, then quiet: once delivered (to the platform's subscriber), the
    # outbox stays empty.
    subscriber.wait_connected()
    agent = agent_factory(**LOCKED, telemetry={"interval_s": 60}).start()
    wait_until(lambda: _healthy(agent), 30, "a connected, healthy agent")
    wait_until(lambda: drained(agent), 30, "the first records delivered")
    cfg = str(agent.config_path)

    res = agent.cli("status", "--config", cfg)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"connected to 127.0.0.1:{broker.port}" in res.stdout
    assert "NOT connected" not in res.stdout
    assert "No warnings" in res.stdout
    # Signatures required and no key: say plainly that no MQTT command gets in.
    assert "MQTT: none accepted (signatures required, no public key set)" in res.stdout
    assert "off (upload.enabled, endpoint and bucket not set)" in res.stdout
    assert "device room-101 (Room 101), school school-a" in res.stdout
    assert f"pid {agent.proc.pid}" in res.stdout  # type: ignore[union-attr]

    res = agent.cli("status", "--config", cfg, "--json")
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    assert snap["running"] is True and snap["ok"] is True
    assert snap["broker"]["connected"] is True
    assert snap["broker"]["address"] == f"127.0.0.1:{broker.port}"
    assert snap["outbox"]["depth"] == 0 and snap["outbox"]["last_seq"] >= 1
    assert snap["warnings"] == []
    assert snap["agent"]["config_hash"] and snap["device"]["id"] == "room-101"


def test_status_when_nobody_subscribes(broker: Broker, agent_factory) -> None:
    """A broker that takes our records but has no subscriber (no collector) for them answers
    "No matching subscribers": the records stay on this PC and the technician is told why."""
    agent = agent_factory(**LOCKED, telemetry={"interval_s": 10}).start()  # grace: 30 s
    wait_until(lambda: (agent.status() or {}).get("broker", {}).get("no_subscriber_since"), 30,
               "the broker's 'no matching subscribers'")
    assert agent.status()["ok"] is True  # within the grace: a collector may be restarting
    wait_until(lambda: not agent.status()["ok"], 45, "the warning after the 30 s grace")
    res = agent.cli("status", "--config", str(agent.config_path))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "has had no subscriber for this terminal's records" in res.stdout
    snap = agent.status()
    assert snap["outbox"]["depth"] >= 1
    assert "broker_no_subscriber" in [w["code"] for w in snap["warning_details"]]

    # The platform's subscriber arrives: the kept records are delivered, the warning goes.
    sub = Subscriber(broker.port)
    try:
        sub.wait_connected()
        wait_until(lambda: drained(agent), 90, "the kept records delivered")
        wait_until(lambda: sub.seqs(), 10, "the records at the subscriber")
        assert min(sub.seqs()) == 1
        assert agent.status()["broker"]["no_subscriber_since"] is None
        assert "broker_no_subscriber" not in [w["code"] for w in agent.status()["warning_details"]]
    finally:
        sub.close()


def test_status_with_the_broker_stopped(broker: Broker, agent_factory) -> None:
    agent = agent_factory(**LOCKED).start()
    wait_until(lambda: _healthy(agent), 30, "a connected agent")
    broker.stop()
    wait_until(lambda: (s := agent.status()) and s["warnings"], 30, "a warning about the broker")

    res = agent.cli("status", "--config", str(agent.config_path))
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"NOT connected to 127.0.0.1:{broker.port}" in res.stdout
    assert "Warnings:" in res.stdout and "Not connected to the broker" in res.stdout
    assert "Next step" in res.stdout
    assert "No warnings" not in res.stdout

    wait_until(lambda: agent.status()["outbox"]["depth"] >= 2, 30, "records waiting")
    res = agent.cli("status", "--config", str(agent.config_path), "--json")
    assert res.returncode == 1
    snap = json.loads(res.stdout)
    assert snap["running"] is True and snap["ok"] is False
    assert snap["outbox"]["depth"] >= 2  # kept for the broker, and the status says so
    assert snap["broker"]["connected"] is False and snap["broker"]["last_error"]
    assert any("Not connected to the broker" in w for w in snap["warnings"])

    # Back up: the warnings clear and the exit code returns to 0.
    broker.start()
    wait_until(lambda: _healthy(agent), 30, "the agent to reconnect")
    assert agent.cli("status", "--config", str(agent.config_path)).returncode == 0


def test_status_with_no_agent_running(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "agent", broker_port=free_port())  # configured, never started
    res = agent.cli("status", "--config", str(agent.config_path))
    assert res.returncode == 3, res.stdout + res.stderr
    assert "NOT running" in res.stdout
    assert f"127.0.0.1:{agent.status_port}" in res.stdout
    assert "Next step" in res.stdout

    res = agent.cli("status", "--config", str(agent.config_path), "--json")
    assert res.returncode == 3
    out = json.loads(res.stdout)
    assert out["running"] is False
    assert out["url"] == f"http://127.0.0.1:{agent.status_port}/status.json"
    assert out["error"]


def test_status_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "agent", broker_port=free_port())
    agent.write_config("device: {id: a/b, school: s}\n")
    res = agent.cli("status", "--config", str(agent.config_path))
    assert res.returncode == 2
    assert f"{agent.config_path}:1: device.id" in res.stderr


def test_status_page_and_metrics(broker: Broker, agent_factory) -> None:
    agent = agent_factory(**LOCKED).start()
    wait_until(lambda: _healthy(agent), 30, "a connected agent")

    ctype, page = _get(agent, "/")  # the page in a browser: tests/test_status_page.py
    assert ctype.startswith("text/html")
    assert page.startswith("<!doctype html>") and '<script src="/page.js"' in page
    ctype, view = _get(agent, "/page.json?lang=en")
    doc = json.loads(view)
    broker = next(x for x in doc["subsystems"] if x["id"] == "broker")
    assert broker["state"] == "good" and "connected to" in broker["lines"][0]
    assert doc["device"]["id"] == "room-101"

    ctype, text = _get(agent, "/metrics")  # the whole format: tests/test_metrics.py
    assert ctype.startswith("text/plain")
    assert 'device="room-101",school="school-a",version=' in text
    assert "\nclassroom_agent_broker_connected 1.0\n" in text
    assert "\nclassroom_agent_outbox_dropped_records_total 0.0\n" in text

    ctype, body = _get(agent, "/status.json")
    assert ctype == "application/json" and json.loads(body)["broker"]["connected"] is True
    try:
        _get(agent, "/nope")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
    else:
        raise AssertionError("an unknown path must be a 404")
