"""Issue 9's attacks replayed against the real agent (docs/security.md, "Attacks and defences").

Each test is what a pupil at the keyboard or a stranger on the broker did to the agent before,
and what must hold now: legitimate work goes on, costs stay bounded, nothing is forged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.signing import sign_request
from tests.support import Broker, Subscriber, schema_errors, wait_until
from tests.test_commands import PREFIX, Commander, commands_reach, replies

FORGED_ID = "x\nINFO agent.daemon: signature OK\u202e"


def _keypair(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "platform.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pub


def _metrics_seqs(sub: Subscriber) -> list[int]:
    return [m.payload["seq"] for m in sub.snapshot("metrics")]


@pytest.mark.slow
def test_a_command_flood_costs_counters_not_the_legitimate_commands(
        tmp_path: Path, broker: Broker, subscriber: Subscriber, agent_factory) -> None:
    """2,000 badly signed commands in 10 s (200 of them with 60 KB names, some with ids that
    would forge a log line) while the platform sends 10 signed ones: all 10 succeed, the flood
    is two events with counts, a few dozen replies, a few log lines. Then 2,000 unsigned
    report_now (the terminal accepts unsigned ones too here) make a handful of records."""
    key, pub = _keypair(tmp_path)
    agent = agent_factory(commands={"public_keys": [str(pub)], "require_signature": False},
                          telemetry={"interval_s": 30}).start()
    cmd = Commander(broker.port)
    other = Ed25519PrivateKey.generate()

    def signed(name: str, rid: str, k: Ed25519PrivateKey = key) -> dict[str, Any]:
        return sign_request(k, "school-a", "room-101", name, rid, {})

    class Warmup:  # commands_reach pings with report_now: signed, so nothing is rejected yet
        def send(self, name: str, payload: dict[str, Any], **kw: Any) -> None:
            cmd.send(name, signed(name, payload["id"]), **kw)

    try:
        commands_reach(agent, subscriber, Warmup())
        log_before = len(agent.log_text().splitlines())
        events_before = len(subscriber.snapshot("event"))
        began = time.monotonic()
        for i in range(2000):
            name = "x" * 60_000 if i % 10 == 0 else "lesson_start"
            rid = FORGED_ID if i % 7 == 0 else f"bad-{i}"
            cmd.client.publish(f"{PREFIX}/cmd/{name}", json.dumps(signed(name[:64], rid, other)),
                               qos=1)
            if i % 200 == 100:  # ten legitimate commands spread over the flood
                cmd.client.publish(f"{PREFIX}/cmd/report_now",
                                   json.dumps(signed("report_now", f"legit-{i // 200}")), qos=1)
            time.sleep(max(0.0, began + i * 0.005 - time.monotonic()))  # 2,000 in 10 s
        legit = subscriber.wait_for(
            lambda _m: len(got := [r for r in replies(subscriber)
                                   if str(r.get("id")).startswith("legit-")]) >= 10 and got,
            60, "the replies to the 10 legitimate commands")
        assert [r["ok"] for r in legit] == [True] * 10, legit
        assert time.monotonic() - began < 30
        wait_until(lambda: agent.status()["security"]["commands_rejected_total"] >= 2000, 30,
                   "every bad command to be refused")
        bad_replies = [r for r in replies(subscriber) if str(r.get("id")).startswith("bad-")
                       or r.get("id") == FORGED_ID]
        assert 10 <= len(bad_replies) <= 80, len(bad_replies)  # 20 at once, then 2 a second
        assert all(len(r["command"]) <= 64 for r in bad_replies)

        # Phase 2: unsigned report_now as fast as the broker takes them.
        seqs_before = len(_metrics_seqs(subscriber))
        for i in range(2000):
            cmd.client.publish(f"{PREFIX}/cmd/report_now", json.dumps({"id": f"u-{i}"}), qos=1)
        time.sleep(3)
        wait_until(lambda: agent.status()["outbox"]["depth"] == 0, 30, "the outbox to drain")
        extra_metrics = len(_metrics_seqs(subscriber)) - seqs_before
        assert 1 <= extra_metrics <= 30, extra_metrics  # bucket of 10, then 1 a second
    finally:
        cmd.close()
    assert agent.stop() == 0  # flushes the window's summary
    rejected = subscriber.wait_for(
        lambda ms: len(got := [m for m in ms[events_before:] if m.topic.endswith("/event")
                               and m.payload["data"]["type"] == "command_rejected"]) >= 2
        and got, 20, "the first rejection and the summary")
    details = [m.payload["data"]["details"] for m in rejected]
    assert [d["count"] for d in details] == [1, 1999], details
    assert details[1]["reasons"] == {"bad_signature": 1999}
    assert sum(len(m.raw) for m in rejected) < 4000, "events carry bounded names and ids"
    problems = [e for m in rejected for e in schema_errors(m)]
    assert not problems, problems

    log = agent.log_text()
    added = log.splitlines()[log_before:]
    assert len(added) < 200, f"{len(added)} log lines for a flood"
    assert not any(ln.startswith("INFO agent.daemon: signature OK") for ln in log.splitlines())
    assert "\u202e" not in log and "x" * 1000 not in log
    assert "x\\nINFO agent.daemon: signature OK\\u202e" in log  # inert, on one line
