"""Issue 9's attacks replayed against the real agent (docs/security.md, "Attacks and defences").

Each test is what a pupil at the keyboard or a stranger on the broker did to the agent before,
and what must hold now: legitimate work goes on, costs stay bounded, nothing is forged.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.signing import sign_request
from tests.support import AgentProcess, Broker, Subscriber, schema_errors, wait_until
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


class Flooder:
    """A local user holding ``n`` half-sent requests open on the status port, and opening new
    ones as the agent closes old ones (up to ``rate`` a second)."""

    def __init__(self, port: int, n: int, rate: float = 400) -> None:
        self.port, self.n, self.rate = port, n, rate
        self.opened = 0
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flooder", daemon=True)

    def _open(self) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            s.sendall(b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no more
        except OSError:
            return  # refused or too slow: the next round tries again
        s.setblocking(False)
        self.socks.append(s)
        self.opened += 1

    @staticmethod
    def _alive(s: socket.socket) -> bool:
        try:
            return s.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _run(self) -> None:
        while len(self.socks) < self.n and not self._stop.is_set():
            self._open()
        while not self._stop.is_set():
            budget = int(self.rate / 10)
            for s in list(self.socks):
                if budget <= 0:
                    break
                if not self._alive(s):  # the agent gave up on it: open another
                    s.close()
                    self.socks.remove(s)
                    self._open()
                    budget -= 1
            self._stop.wait(0.1)

    def __enter__(self) -> Flooder:
        self._thread.start()
        wait_until(lambda: self.opened >= self.n, 60, f"{self.n} connections")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in self.socks:
            s.close()


def _agent_fds(agent: AgentProcess) -> int:
    assert agent.proc is not None
    return len(os.listdir(f"/proc/{agent.proc.pid}/fd"))


def _hostile_env() -> None:
    """The agent as a technician might start it by hand: umask 022, the usual 1,024 files."""
    os.umask(0o022)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(
        resource.RLIMIT_NOFILE)[1]))


@pytest.mark.slow
def test_a_local_user_cannot_stop_lessons_telemetry_or_fool_the_technician(
        tmp_path: Path, broker: Broker, subscriber: Subscriber, agent_factory) -> None:
    """Issue 9, attacks 2, 6, 7 and 9 on the real agent, started by hand with umask 022 and a
    1,024-file limit: 1,100 half-sent requests held on the status port (reopened as the agent
    closes them) while a lesson starts, records and stops, status answers, telemetry flows;
    the fd count and the log stay small. Course and teacher with terminal escapes print inertly;
    a DNS-rebinding Host is refused; every file the agent wrote is private."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    state = tmp_path / "agent0" / "state"
    state.mkdir(parents=True, mode=0o755)
    (state / "mqtt.session").write_text("3\n")
    (state / "mqtt.session").chmod(0o644)  # from an older version, world-readable
    agent = agent_factory(commands={"require_signature": True},
                          media={"video": {"width": 320, "height": 180, "fps": 10},
                                 "encoder": {"preset": "ultrafast", "video_bitrate_kbps": 300},
                                 "recording": {"segment_s": 2, "min_free_mb": 16}})
    agent.start(preexec=_hostile_env)
    cfg = str(agent.config_path)
    wait_until(lambda: agent.status()["broker"]["connected"], 30, "a connection")
    fds_before = _agent_fds(agent)
    log_before = len(agent.log_text().splitlines())
    evil = "\x1b]0;pwned\x07\x1b[2J数学\nWarnings:\n  ! none\u202e"
    with Flooder(agent.status_port, 1100) as flood:
        seqs_before = max(subscriber.seqs())
        started = agent.cli("lesson", "start", "--course", evil, "--teacher", "李明\x1b[31m",
                            "--duration", "60", "--config", cfg)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "\x1b" not in started.stdout and started.stdout.count("\n") == 1
        lesson = wait_until(lambda: (s := agent.status()) and s["lessons"]["current"], 20,
                            "the lesson in the status")
        rec_dir = state / "recordings" / lesson["lesson_id"]
        wait_until(lambda: list(rec_dir.glob("seg-*.ts")), 30, "a recorded segment")
        shown = agent.cli("status", "--config", cfg)  # over the socket: no flood there
        assert shown.returncode == 0, shown.stdout + shown.stderr  # healthy, under the flood
        assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout
        assert "\\x1b]0;pwned\\x07\\x1b[2J数学\\nWarnings:\\n  ! none\\u202e" in shown.stdout
        lines = shown.stdout.splitlines()  # the course's newlines made no lines of their own
        assert not [ln for ln in lines if ln.startswith(("Warnings:", "  ! "))], lines
        assert lines[-1] == "No warnings: this terminal looks healthy."
        subscriber.wait_for(lambda _m: len([s for s in subscriber.seqs() if s > seqs_before])
                            >= 10, 30, "telemetry flowing during the flood")
        fds_during = _agent_fds(agent)
        opened = flood.opened
        stopped = agent.cli("lesson", "stop", "--config", cfg)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "\x1b" not in stopped.stdout and stopped.stdout.count("\n") == 1
    assert opened >= 1100
    rebound = urllib.request.Request(f"http://127.0.0.1:{agent.status_port}/status.json",
                                     headers={"Host": f"evil.example:{agent.status_port}"})
    with pytest.raises(urllib.error.HTTPError) as refused:  # attack 7: DNS rebinding
        urllib.request.urlopen(rebound, timeout=10)
    assert refused.value.code == 421
    # At most 128 connections and one accept batch (16), plus the lesson's pipes and files.
    assert fds_during < fds_before + 128 + 16 + 100, (fds_before, fds_during)
    status = agent.status()
    assert not status["warnings"], status["warnings"]
    added = agent.log_text().splitlines()[log_before:]
    assert len(added) < 80, "\n".join(added[:40])
    assert not [ln for ln in added if ln.startswith("Traceback")]
    assert sum(1 for ln in added if "shed since the last report" in ln) <= 2
    ended = subscriber.wait_for(
        lambda ms: [m.payload["data"] for m in ms if m.topic.endswith("/event")
                    and m.payload["data"]["type"] == "lesson_ended"], 30, "lesson_ended")
    assert ended[0]["details"]["course"] == evil  # the data itself is kept as sent

    # Attack 9: every file and folder the agent made is its own.
    exposed = [f"{p} {stat.S_IMODE(p.stat().st_mode):04o}" for p in [state, *state.rglob("*")]
               if p.stat().st_mode & 0o077 and not p.is_socket()]
    assert exposed == [], exposed
    assert (rec_dir / "seg-00000.ts").exists() or list(rec_dir.glob("seg-*.ts"))
    assert agent.stop() == 0


def test_events_raised_while_the_agent_is_built_are_delivered_not_called_lost(
        tmp_path: Path, broker: Broker, subscriber: Subscriber, agent_factory) -> None:
    """An invalid timetable is reported while the daemon is still being built (before the
    publisher exists): the event is stored and delivered, and the log says nothing was lost."""
    bad = tmp_path / "timetable.yaml"
    bad.write_text("periods: [oops\n")
    agent = agent_factory(lessons={"timetable": str(bad)}).start()
    events = subscriber.wait_for(
        lambda ms: [m for m in ms if m.topic.endswith("/event")
                    and m.payload["data"]["type"] == "timetable_invalid"], 30,
        "timetable_invalid at the broker")
    assert len(events) == 1 and not schema_errors(events[0])
    log = agent.log_text()
    assert "timetable" in log and "lost" not in log and "could not commit" not in log
