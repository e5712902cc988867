"""The daemon's life cycle as systemd drives it: SIGHUP reloads, sd_notify, SIGTERM, secrets.

Every test runs the real agent process (``python -m agent run``) against the private Mosquitto
of the ``broker`` fixture and watches it from the outside: its status endpoint, the MQTT messages
the test subscriber receives, the datagrams it sends to a NOTIFY_SOCKET, its log and exit code.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config
from tests.support import AgentProcess, Broker, Message, Subscriber, assert_no_loss, wait_until


def _events(sub: Subscriber, type_: str) -> list[Message]:
    return [m for m in sub.snapshot("event") if m.payload["data"]["type"] == type_]


def _connected(agent: AgentProcess) -> bool:
    s = agent.status()
    return bool(s and s["broker"]["connected"])


# -- SIGHUP ------------------------------------------------------------------------------------


def test_sighup_with_a_bad_file_keeps_running_config(broker: Broker, subscriber: Subscriber,
                                                     agent_factory) -> None:
    agent = agent_factory().start()
    wait_until(lambda: _connected(agent), 20, "connection")
    before = agent.status()
    good_hash = before["agent"]["config_hash"]
    assert good_hash == config.load(agent.config_path).hash

    agent.write_config("device: {id: room-101, school: school-a\nmqtt: [\n")  # unclosed flow
    agent.signal(signal.SIGHUP)
    failed = subscriber.wait_for(lambda ms: _events(subscriber, "config_reload_failed"), 20,
                                 "config_reload_failed event")
    data = failed[0].payload["data"]
    assert data["severity"] == "warning"
    problems = data["details"]["problems"]
    assert any(f"{agent.config_path}:2:" in p and "YAML syntax error" in p for p in problems), \
        problems

    # A second bad file, this time valid YAML with a bad value: the problem names the key.
    agent.config["mqtt"]["port"] = 70000
    agent.write_config()
    agent.signal(signal.SIGHUP)
    subscriber.wait_for(lambda ms: len(_events(subscriber, "config_reload_failed")) >= 2, 20,
                        "second config_reload_failed event")
    second = _events(subscriber, "config_reload_failed")[1].payload["data"]["details"]["problems"]
    assert any("mqtt.port: must be at most 65535" in p for p in second), second

    after = agent.status()  # raises if the process died
    assert agent.proc is not None and agent.proc.poll() is None
    assert after["agent"]["config_hash"] == good_hash
    assert after["agent"]["pid"] == before["agent"]["pid"]
    assert after["broker"]["connected"]
    assert not _events(subscriber, "config_reloaded")
    assert "reload: keeping the running configuration" in agent.log_text()
    # and it still delivers: new records keep arriving after the failed reloads
    last = max(subscriber.seqs())
    subscriber.wait_for(lambda ms: max(subscriber.seqs()) > last + 2, 20, "records after reload")


def test_sighup_with_a_good_file_applies_it(broker: Broker, subscriber: Subscriber,
                                            agent_factory) -> None:
    agent = agent_factory().start()
    wait_until(lambda: _connected(agent), 20, "connection")
    old_hash = agent.status()["agent"]["config_hash"]
    assert agent.status()["telemetry"]["interval_s"] == 0.5

    agent.config["telemetry"]["interval_s"] = 0.7
    agent.write_config()
    new_hash = config.load(agent.config_path).hash
    assert new_hash != old_hash
    agent.signal(signal.SIGHUP)
    reloaded = subscriber.wait_for(lambda ms: _events(subscriber, "config_reloaded"), 20,
                                   "config_reloaded event")
    assert reloaded[0].payload["data"]["details"]["config_hash"] == new_hash
    status = wait_until(lambda: (s := agent.status()) and s["agent"]["config_hash"] == new_hash
                        and s, 10, "status to show the new hash")
    assert status["telemetry"]["interval_s"] == 0.7
    assert not _events(subscriber, "config_reload_failed")
    # Records keep flowing, without gaps, across the reload (the scheduler was rebuilt).
    last = max(subscriber.seqs())
    subscriber.wait_for(lambda ms: max(subscriber.seqs()) > last + 2, 20, "records after reload")
    assert agent.stop() == 0
    assert_no_loss(subscriber.seqs())


# -- sd_notify ---------------------------------------------------------------------------------


class NotifySocket:
    """What systemd would receive on NOTIFY_SOCKET: each datagram with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        # Drain continuously: a full datagram queue would block the agent's sendall().
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def lines(self) -> list[tuple[float, str]]:
        return [(t, line) for t, msg in list(self.received) for line in msg.splitlines()]

    def first(self, line: str) -> float | None:
        return next((t for t, x in self.lines() if x == line), None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def test_sd_notify_ready_watchdog_reload_and_stopping(broker: Broker, agent_factory,
                                                      notify_socket: NotifySocket) -> None:
    agent = agent_factory()
    agent.env["NOTIFY_SOCKET"] = str(notify_socket.path)
    agent.env["WATCHDOG_USEC"] = "2000000"  # WatchdogSec=2: a ping at least every second
    agent.env.pop("WATCHDOG_PID", None)
    agent.start()
    ready = wait_until(lambda: notify_socket.first("READY=1"), 10, "READY=1")
    assert agent.status() is not None, "READY=1 must mean the status endpoint answers"

    def pings_after_ready() -> list[float]:
        return [t for t, x in notify_socket.lines() if x == "WATCHDOG=1" and t >= ready]

    wait_until(lambda: len(pings_after_ready()) >= 3, 8, "three WATCHDOG=1 pings")
    pings = pings_after_ready()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 2.0, f"watchdog pings must come within WatchdogSec, gaps {gaps}"
    statuses = [x for _t, x in notify_socket.lines() if x.startswith("STATUS=")]
    assert any("connected to 127.0.0.1:" in s and "waiting" in s for s in statuses), statuses
    assert not [x for _t, x in notify_socket.lines() if x == "WATCHDOG=1" and _t < ready], \
        "no watchdog ping before READY=1"

    # SIGHUP: RELOADING=1 with MONOTONIC_USEC (systemd >= 253 wants it), then READY=1 again.
    t_hup = time.monotonic()
    agent.signal(signal.SIGHUP)
    wait_until(lambda: [t for t, x in notify_socket.lines() if x == "READY=1" and t > t_hup],
               10, "READY=1 after the reload")
    reloading = [(t, msg) for t, msg in notify_socket.received if "RELOADING=1" in msg]
    assert reloading, notify_socket.received
    fields = dict(line.split("=", 1) for line in reloading[0][1].splitlines())
    usec = int(fields["MONOTONIC_USEC"])
    assert abs(usec / 1e6 - time.monotonic()) < 30, "MONOTONIC_USEC must be CLOCK_MONOTONIC"

    agent.signal(signal.SIGTERM)
    assert agent.proc is not None
    assert agent.proc.wait(20) == 0
    wait_until(lambda: notify_socket.first("STOPPING=1"), 5, "STOPPING=1")
    assert notify_socket.received[-1][1] == "STOPPING=1", "nothing may follow STOPPING=1"


def test_without_notify_socket_nothing_breaks(tmp_path: Path, broker: Broker,
                                              agent_factory) -> None:
    """No NOTIFY_SOCKET (run by hand): a reload still applies, media.recording.dir included
    (the next lesson records in the new folder), and the agent stops cleanly."""
    agent = agent_factory(media={"video": {"width": 320, "height": 180, "fps": 10},
                                 "encoder": {"preset": "ultrafast"}})
    agent.env.pop("NOTIFY_SOCKET", None)
    agent.env["WATCHDOG_USEC"] = "2000000"
    agent.start()
    wait_until(lambda: _connected(agent), 20, "connection")
    old_hash = agent.status()["agent"]["config_hash"]
    new_dir = tmp_path / "new-recordings"
    agent.config["media"]["recording"] = {"dir": str(new_dir)}
    agent.write_config()
    agent.signal(signal.SIGHUP)
    wait_until(lambda: agent.status()["agent"]["config_hash"] != old_hash, 10, "the reload")
    cfg = str(agent.config_path)
    started = agent.cli("lesson", "start", "--course", "after-reload", "--config", cfg)
    assert started.returncode == 0, started.stdout + started.stderr
    lesson = agent.status()["lessons"]["current"]["lesson_id"]
    assert (new_dir / lesson).is_dir(), "the lesson after the reload records in the new folder"
    assert not (Path(agent.config["state_dir"]) / "recordings" / lesson).exists()
    assert stat.S_IMODE(new_dir.stat().st_mode) == 0o700
    assert agent.cli("lesson", "stop", "--config", cfg).returncode == 0
    assert agent.stop() == 0


# -- secrets -----------------------------------------------------------------------------------

PASSWORD = "s3cr3t-PASS-word-42"
WRONG = "wr0ng-PASS-word-17"
USER = "room-101-user"


def test_password_never_leaves_its_file(tmp_path: Path, broker: Broker, subscriber: Subscriber,
                                        agent_factory) -> None:
    # Anonymous clients (the test subscriber) stay allowed; a client that gives a user name must
    # give its password, so connecting proves the agent really sent the secret from the file.
    passwd = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), USER, PASSWORD], check=True,
                   capture_output=True)
    passwd.chmod(0o600)
    broker.stop()
    broker.extra = f"password_file {passwd}"
    broker.start()
    subscriber.wait_connected()

    secret = tmp_path / "mqtt-password"
    secret.write_text(WRONG + "\n")
    secret.chmod(0o600)
    agent = agent_factory(log_level="debug",
                          mqtt={"username": USER, "password_file": str(secret)})
    agent.start()
    refused = wait_until(lambda: (s := agent.status()) and s["broker"]["connect_failures_total"]
                         and s, 20, "the broker to refuse the wrong password")
    assert not refused["broker"]["connected"]
    assert "refused" in (refused["broker"]["last_error"] or ""), refused["broker"]

    secret.write_text(PASSWORD + "\n")  # read again at the next connection attempt
    wait_until(lambda: _connected(agent), 30, "connection with the right password")
    subscriber.wait_for(lambda ms: _events(subscriber, "agent_started"), 20, "agent_started")

    # A reload that changes mqtt rebuilds the publisher, which reads the secret again.
    agent.config["mqtt"]["keepalive_s"] = 6
    agent.write_config()
    agent.signal(signal.SIGHUP)
    subscriber.wait_for(lambda ms: _events(subscriber, "config_reloaded"), 20, "config_reloaded")
    wait_until(lambda: _connected(agent), 20, "reconnection after the reload")

    status_json = agent.cli("status", "--config", str(agent.config_path), "--json")
    status_text = agent.cli("status", "--config", str(agent.config_path))
    check = agent.cli("config", "check", str(agent.config_path))
    assert status_json.returncode in (0, 1), status_json.stderr
    assert json.loads(status_json.stdout)["broker"]["connected"] is True
    html = _get(agent, "/").decode()
    metrics = _get(agent, "/metrics").decode()

    agent.signal(signal.SIGTERM)
    assert agent.proc is not None and agent.proc.wait(20) == 0

    log = agent.log_text()
    assert "DEBUG" in log, "the test must run the agent at debug level to mean anything"
    places = {
        "agent log": log,
        "status --json": status_json.stdout + status_json.stderr,
        "status": status_text.stdout + status_text.stderr,
        "config check": check.stdout + check.stderr,
        "status page": html,
        "/metrics": metrics,
        "MQTT payloads": "\n".join(m.raw.decode(errors="replace")
                                   for m in subscriber.snapshot()),
        "state dir": "\n".join(p.read_bytes().decode(errors="replace")
                               for p in (agent.workdir / "state").rglob("*") if p.is_file()),
    }
    assert subscriber.snapshot(), "no MQTT message seen: the payload check would be empty"
    leaks = [(where, pw) for where, text in places.items() for pw in (PASSWORD, WRONG)
             if pw in text]
    assert not leaks, f"an MQTT password appears in: {leaks}"


def _get(agent: AgentProcess, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.status_port}{path}", timeout=5) as r:
        body: bytes = r.read()
        return body


# -- SIGTERM with the broker down --------------------------------------------------------------


def test_sigterm_with_broker_down_exits_promptly_and_keeps_the_backlog(
        broker: Broker, subscriber: Subscriber, agent_factory) -> None:
    flush_s = 2.0
    agent = agent_factory(mqtt={"flush_on_exit_s": flush_s})
    agent.start()
    wait_until(lambda: _connected(agent), 20, "connection")
    subscriber.wait_for(lambda ms: len(subscriber.seqs()) >= 3, 20, "first records")

    broker.stop()  # a clean stop keeps the subscriber's persistent session
    wait_until(lambda: agent.status()["outbox"]["depth"] >= 5, 30, "records queued offline")
    before: dict[str, Any] = agent.status()
    assert not before["broker"]["connected"]

    t0 = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.proc is not None
    code = agent.proc.wait(flush_s + 10)
    elapsed = time.monotonic() - t0
    assert code == 0, agent.log_text()[-2000:]
    assert elapsed < flush_s + 5, f"stop took {elapsed:.1f}s with flush_on_exit_s={flush_s}"
    assert "still queued" in agent.log_text()

    # Still offline: the next start finds the backlog on disk.
    agent.start()
    restarted = agent.status()
    assert restarted["outbox"]["depth"] >= before["outbox"]["depth"]
    assert restarted["outbox"]["last_seq"] >= before["outbox"]["last_seq"]

    broker.start()
    subscriber.wait_connected()
    wait_until(lambda: (s := agent.status()) and s["broker"]["connected"]
               and s["outbox"]["depth"] == 0, 60, "the backlog to drain")
    last = agent.status()["outbox"]["last_seq"]
    subscriber.wait_for(lambda ms: max(subscriber.seqs()) >= last, 30, f"seq {last}")
    assert_no_loss(subscriber.seqs())
    assert agent.stop() == 0
